"""Pure rendering helpers for the web app: schema records -> table rows and HTML."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from kbqa.schema import DocumentInfo, IngestReport, SourceChunk, counted

RESULT_HEADERS = ["file", "status", "chunks", "reason"]
DOC_HEADERS = ["file", "pages", "chunks", "size", "added"]

# Marks common fonts have (colour emoji show as boxes where no emoji font is installed).
_STATUS_MARK = {"added": "✓ added", "updated": "↻ updated", "unchanged": "= unchanged", "failed": "✗ failed"}


def result_rows(report: IngestReport) -> list[list[object]]:
    """One row per file of an ingest batch."""
    return [[f.name, _STATUS_MARK.get(f.status, f.status), f.chunks, f.reason] for f in report.files]


def doc_rows(docs: Sequence[DocumentInfo]) -> list[list[object]]:
    """One row per file of a knowledge base."""
    return [[d.name, d.pages if d.pages is not None else "", d.chunks, size_text(d.size), time_text(d.added_at)]
            for d in docs]


def time_text(stamp: str) -> str:
    """``2026-11-26T15:27:48+00:00`` -> ``2026-11-26 15:27 UTC`` (anything unparsable as it is)."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if when.tzinfo else when.strftime("%Y-%m-%d %H:%M")


def size_text(size: int) -> str:
    """``512 B``, ``1.5 KB``, ``12.3 MB``."""
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KB" if size < 1024**2 else f"{size / 1024**2:.1f} MB"


def literal(text: str) -> str:
    """``text`` shown as it is inside Markdown (a name such as ``<img ...>`` or ``**x**`` is not markup)."""
    return re.sub(r"([\\`*_\[\]#|~])", r"\\\1", html.escape(text))


def ingest_summary(report: IngestReport, new_kb: bool = False) -> str:
    """A one-line Markdown summary of an ingest batch (``new_kb``: the name was not a knowledge base before)."""
    failed = sum(f.status == "failed" for f in report.files)
    if failed == len(report.files):
        return (f"**No file was indexed** into **{literal(report.kb)}**: see the reason column"
                + (" (a new knowledge base is created only when a file gets in)." if new_kb and report.files
                   else "."))
    unchanged = sum(f.status == "unchanged" for f in report.files)
    if unchanged == len(report.files) - failed:  # nothing new: "indexed" would claim work that was not done
        if all(f.status != "unchanged" or not f.reason for f in report.files):
            text = (f"**Nothing new**: {'the file is' if unchanged == 1 else f'all {unchanged} files are'} already "
                    f"in **{literal(report.kb)}**, unchanged.")
        else:  # some are new names for content it holds under another name (or listed twice): the reason says
            text = (f"**Nothing new**: the content of {'the file' if unchanged == 1 else f'all {unchanged} files'} "
                    f"is already in **{literal(report.kb)}**: see the reason column.")
        return text + (f" {failed} failed: see the reason column." if failed else "")
    text = (f"**{len(report.files) - failed} of {len(report.files)} files** indexed into **{literal(report.kb)}**"
            + (f" ({unchanged} of them unchanged)" if unchanged else "")
            + f", {counted(report.chunks_added, 'chunk')} added in {report.seconds:.1f}s.")
    if failed:
        text += f" {failed} failed: see the reason column; the other files were indexed."
    return text


#: What the chat and the Sources panel say about an answer, in its question's language (a Chinese question's
#: answer, refusal sentence and notice are Chinese: the words around them are too).
UI_TEXT: dict[str, dict[str, str]] = {
    "en": {"searching": "_Searching the documents…_", "reading": "_Reading {n} passage{s}…_",
           "rereading": "Reading the question with the earlier turns and searching…", "search": "Searching…",
           "none": "No sources for this answer.",
           "order": "In retrieval order (keywords and meaning combined); the score is the cosine similarity of the "
                    "passage to the question.",
           "sources": "Sources: {files}", "more": " and {n} more", "list": ", ",
           "no_sources": "No sources (click to see why)", "chunk": "chunk", "score": "score", "page": "page {n}",
           "row": "row {n}"},
    "zh": {"searching": "_正在检索文档…_", "reading": "_正在阅读找到的 {n} 个段落…_",
           "rereading": "正在结合之前的对话理解问题并检索…", "search": "正在检索…", "none": "此回答没有来源。",
           "order": "按检索顺序排列（关键词与语义结合）；得分是段落与问题的余弦相似度。",
           "sources": "来源：{files}", "more": " 等另外 {n} 个文件", "list": "、",
           "no_sources": "没有来源（点击查看原因）", "chunk": "块", "score": "得分", "page": "第 {n} 页",
           "row": "第 {n} 行"},
}


def ui_text(zh: bool) -> dict[str, str]:
    """The chat's and Sources panel's words for a question (``zh``: a Chinese one)."""
    return UI_TEXT["zh" if zh else "en"]


def _where(src: SourceChunk, words: dict[str, str]) -> str:
    if src.page is not None:
        return words["page"].format(n=src.page)
    return words["row"].format(n=src.row) if src.row is not None else ""


def sources_html(sources: Sequence[SourceChunk], notice: str = "", zh: bool = False) -> str:
    """The retrieved chunks as cards: number, file, page, chunk, score, and the text itself."""
    words = ui_text(zh)
    parts = []
    if notice:
        parts.append(f'<div class="kbqa-notice">{html.escape(notice)}</div>')
    parts.append(f'<div class="kbqa-empty">{words["order" if sources else "none"]}</div>')
    for n, src in enumerate(sources, 1):
        where = _where(src, words)
        page = f" · {where}" if where else ""
        parts.append(
            f'<div class="kbqa-source"><div class="kbqa-source-head"><b>[{n}] {html.escape(src.source)}</b>'
            f'{page} · {words["chunk"]} {src.chunk} · {words["score"]} <span class="kbqa-score">{src.score:.3f}</span>'
            f'</div><div class="kbqa-source-text">{html.escape(src.text)}</div></div>')
    return '<div class="kbqa-sources">' + "".join(parts) + "</div>"


def sources_message(sources: Sequence[SourceChunk], notice: str = "", zh: bool = False) -> dict[str, Any]:
    """The chat message that keeps an answer's sources and notice beside it: collapsed, titled with the files
    cited (or, with none, saying why).

    The Sources panel shows the latest answer's passages and notice; this keeps every earlier answer's too.
    """
    words = ui_text(zh)
    files = list(dict.fromkeys(src.source for src in sources))
    title = (words["sources"].format(files=words["list"].join(files[:3]))
             + (words["more"].format(n=len(files) - 3) if len(files) > 3 else "") if files else words["no_sources"])
    lines = [f"_{literal(notice)}_"] if notice else []
    for n, src in enumerate(sources, 1):
        where = _where(src, words)
        where = f" · {where}" if where else ""
        excerpt = " ".join(src.text.split())
        excerpt = excerpt if len(excerpt) <= 300 else excerpt[:300] + "…"
        lines.append(f"**[{n}] {literal(src.source)}**{literal(where)} · {words['chunk']} {src.chunk} · "
                     f"{words['score']} {src.score:.3f}  \n{literal(excerpt)}")
    return {"role": "assistant", "content": "\n\n".join(lines), "metadata": {"title": title, "status": "done"}}


def is_sources_message(message: dict[str, Any]) -> bool:
    """True for a message made by ``sources_message`` (not part of the conversation the model reads)."""
    return bool((message.get("metadata") or {}).get("title"))


CSS = """
.kbqa-source {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; margin-bottom: 8px;}
.kbqa-source-head {font-size: 0.9em; margin-bottom: 4px;}
.kbqa-source-text {white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85em; max-height: 16em;
                    overflow-y: auto;}
.kbqa-notice {background: var(--color-accent-soft); padding: 6px; border-radius: 6px; margin-bottom: 8px;}
.kbqa-empty {color: var(--body-text-color-subdued);}
#question-waiting {color: var(--body-text-color-subdued); font-size: 0.9em; font-style: italic;}
/* The Soft theme draws "stop" buttons like any other: a deletion should look like one. */
#delete-doc, #delete-kb {color: var(--color-red-600, #dc2626); border-color: var(--color-red-300, #fca5a5);}
#confirm-delete-yes {background: var(--color-red-600, #dc2626); color: white;
                     border-color: var(--color-red-600, #dc2626);}
"""

#: The mark at the end of an answer stopped with the Stop button, by its question's language.
STOPPED = {"en": "_(stopped)_", "zh": "_（已停止）_"}

#: The line under the question box as a question is sent (the answer's first step clears it).
WAITING = "Sent: it is asked as soon as the model is free…"
#: ... and when one sent before is still waiting: only the last one sent runs.
REPLACES = "Sent: it replaces the question sent before it, and is asked as soon as the model is free…"
WAITING_JS = f"(q, w) => !(q && q.trim()) ? '' : (w && w.trim()) ? {REPLACES!r} : {WAITING!r}"

#: Run once when the page loads. Gradio's dropdown takes Enter as "pick the first name that matches what was
#: typed": typing "Corpus" (a new name) with "Corpus Mixed" present chose "Corpus Mixed", and files meant for a
#: new knowledge base went into the existing one. Here Enter keeps what was typed, unless it is a name exactly
#: or an option was chosen with the arrow keys; leaving the box keeps a typed value (as Tab does).
KB_ENTER_JS = r"""
() => {
  let navigated = false, held = false;
  const box = (e) => e.target instanceof HTMLInputElement && e.target.closest('#kb-select');
  const shown = () => [...document.querySelectorAll('#kb-select li')]
    .map((li) => li.textContent.replace(/^\s*✓\s*/, '').trim());
  document.addEventListener('keydown', (e) => {
    if (!box(e)) return;
    if (['ArrowUp', 'ArrowDown', 'Home', 'End'].includes(e.key)) { navigated = true; return; }
    if (e.key !== 'Enter') { navigated = false; return; }
    const typed = e.target.value.trim();
    held = !navigated && typed !== '' && !shown().includes(typed);
    navigated = false;
    if (!held) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    e.target.blur();
  }, true);
  document.addEventListener('keyup', (e) => {
    if (box(e) && e.key === 'Enter' && held) { e.preventDefault(); e.stopImmediatePropagation(); held = false; }
  }, true);
}
"""
