"""Web-app event handlers as plain functions of the service (testable without a browser).

They return plain values; ``kbqa.ui.app`` turns a ``KBQAError`` into a warning toast.
"""

from __future__ import annotations

import contextvars
import filecmp
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kbqa.errors import ContextLengthExceeded, IndexDamaged, KBQAError
from kbqa.language import is_chinese
from kbqa.llm.base import ABANDONED
from kbqa.qa import empty_knowledge_base
from kbqa.schema import AnswerEvent, ChatMessage, FileResult, IngestReport, SourceChunk, counted
from kbqa.service import KBQAService
from kbqa.ui.render import (
    STOPPED,
    doc_rows,
    ingest_summary,
    is_sources_message,
    literal,
    result_rows,
    sources_html,
    sources_message,
    ui_text,
)

Message = dict[str, Any]


def _text(content: Any) -> str:
    """A chat message's text: Gradio hands back content as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def kb_names(service: KBQAService) -> list[str]:
    """Display names of all knowledge bases."""
    return [kb.name for kb in service.list_kbs()]


def documents(service: KBQAService, kb: str | None) -> list[list[object]]:
    """The files table of a knowledge base (empty when none is chosen or it does not exist yet)."""
    if not kb or service.root.folder_for(kb) is None:
        return []
    return doc_rows(service.list_documents(kb))


FILES_LABEL = "Files in this knowledge base"


def files_label(service: KBQAService, kb: str | None) -> str:
    """The files table's title; it says so while files are still being added (a reload mid-upload showed an
    empty table, and the files seemed lost)."""
    busy = service.adding(kb) if kb else None
    if busy is None:
        return FILES_LABEL
    done, total = busy
    left = (f"still adding {total - done} of {total} file{'s' * (total != 1)}" if done < total
            else "finishing an upload")
    return f"{FILES_LABEL} · {left}: press ↻ Refresh to see them once done"


def latest_upload_rows(service: KBQAService, kb: str | None) -> list[list[object]] | None:
    """The rows of the latest upload to a knowledge base, while it runs and for a while after; None otherwise."""
    outcomes = service.latest_upload(kb) if kb else None
    return result_rows(IngestReport(kb or "", outcomes)) if outcomes else None


def upload_names(files: Sequence[Any] | None) -> list[tuple[Path, str]]:
    """Gradio upload values -> ``(temp path, original file name)`` pairs; a file chosen twice (left in the box
    by a refused upload and dropped again) once, or the batch reported it twice ("all 2 files are already...")."""
    pairs: list[tuple[Path, str]] = []
    for f in files or []:
        path = Path(getattr(f, "name", None) or str(f))
        original = getattr(f, "orig_name", None) or path.name
        if not any(name == original and _same_bytes(held, path) for held, name in pairs):
            pairs.append((path, original))
    return pairs


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a == b or filecmp.cmp(a, b, shallow=False)
    except OSError:  # the batch reports a file it cannot read
        return False


def ingest(service: KBQAService, kb: str | None, files: Sequence[Any] | None,
           progress: Callable[[float, str], None] | None = None) -> tuple[list[list[object]], list[list[object]], str]:
    """Add uploaded files; returns (per-file results, the knowledge base's files, a summary).

    Raises:
        KBQAError: no knowledge base name, or no files.
    """
    *_, (results, _, summary) = ingest_steps(service, kb, files, progress)
    return results, documents(service, (kb or "").strip()), summary


def ingest_steps(service: KBQAService, kb: str | None, files: Sequence[Any] | None,
                 progress: Callable[[float, str], None] | None = None
                 ) -> Iterator[tuple[list[list[object]], bool, str]]:
    """Add uploaded files, showing each file's outcome as soon as it is settled.

    Yields ``(results so far, False, interim summary)`` per file, then ``(results, True, summary)``.
    The files are indexed in a worker thread (the caller's context variables copied, so a web framework's
    progress bar still finds its event); closing the generator early leaves the batch to finish there.

    Raises:
        KBQAError: no knowledge base name, or no files (before anything is indexed); any error of the batch.
    """
    if not kb or not kb.strip():
        raise KBQAError("Choose a knowledge base, or type a name for a new one, before adding files.")
    pairs = upload_names(files)
    if not pairs:
        raise KBQAError("Drop or choose at least one file to add.")
    name = kb.strip()
    new_kb = name not in kb_names(service)
    settled: queue.Queue[FileResult | IngestReport | BaseException] = queue.Queue()

    def work() -> None:
        try:
            settled.put(service.add_files(name, pairs, progress=progress, on_file=settled.put))
        except BaseException as exc:  # handed to the caller's thread, raised there
            settled.put(exc)

    threading.Thread(target=contextvars.copy_context().run, args=(work,), name="kbqa-upload", daemon=True).start()
    done: list[FileResult] = []
    while True:
        item = settled.get()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, IngestReport):
            yield result_rows(item), True, ingest_summary(item, new_kb)
            return
        done.append(item)
        yield (result_rows(IngestReport(name, done)), False,
               f"Indexing into **{literal(name)}**: {len(done)} of {len(pairs)} files done…")


def reading(passages: int, zh: bool = False) -> str:
    """The answer's bubble while the model reads the passages found."""
    return ui_text(zh)["reading"].format(n=passages, s="s" * (passages != 1))


def _next_event(events: Iterator[AnswerEvent], stop: threading.Event) -> AnswerEvent | None:
    """The stream's next event, read with ``stop`` as what tells the model its reader has left: set while the
    answer waits for the model (another user's answer), it is never started; set while it streams, the model
    stops at its next token."""
    token = ABANDONED.set(stop)
    try:
        return next(events, None)
    finally:
        ABANDONED.reset(token)


def stopped_answer(text: str, zh: bool = False) -> str:
    """An answer the user stopped: what had come, marked so."""
    mark = STOPPED["zh" if zh else "en"]
    return f"{text.rstrip()} {mark}" if text.strip() else mark


def _without_stop_mark(text: str) -> str | None:
    """A stopped answer's text without its mark (None: not a stopped answer)."""
    mark = next((m for m in STOPPED.values() if text.endswith(m)), None)
    return None if mark is None else text[: len(text) - len(mark)].rstrip()


def _conversation(history: list[Message] | None) -> list[ChatMessage]:
    """The turns of the chat the model reads with a follow-up: not the kept sources, nor a stopped answer's
    mark (a question stopped before the first word of its answer is left out: ``qa.chat_turns``)."""
    turns = []
    for m in history or []:
        if m.get("role") in ("user", "assistant") and not is_sources_message(m):
            text = _text(m.get("content"))
            kept = _without_stop_mark(text) if m["role"] == "assistant" else None
            turns.append(ChatMessage(m["role"], text if kept is None else kept))
    return turns


def ask(service: KBQAService, kb: str | None, question: str,
        history: list[Message] | None, stop: threading.Event | None = None) -> Iterator[tuple[list[Message], str]]:
    """Stream an answer into the chat; the sources panel fills as soon as retrieval is done.

    ``stop`` (the Stop button), once set, ends the answer where it is: what had come stays in the chat,
    marked as stopped, beside the passages it was read from.

    Raises:
        KBQAError: no knowledge base chosen, empty question, empty knowledge base, model errors.
    """
    if not kb:
        raise KBQAError("Choose a knowledge base first (add files to create one).")
    if not question or not question.strip():
        raise KBQAError("Type a question first.")
    earlier = _conversation(history)
    stop = stop or threading.Event()
    zh = is_chinese(question)
    words = ui_text(zh)
    history = [*(history or []), {"role": "user", "content": question},
               {"role": "assistant", "content": words["searching"]}]
    if not service.list_documents(kb):  # errors before the chat changes (an unknown name raises here)
        raise empty_knowledge_base(kb)
    text = ""
    # Show the question at once: finding passages (and first reading a follow-up with the chat) takes a moment.
    yield history, sources_html([], words["rereading" if earlier else "search"], zh)
    panel = sources_html([], zh=zh)
    found: list[SourceChunk] = []

    def stopped() -> tuple[list[Message], str]:
        history[-1] = {"role": "assistant", "content": stopped_answer(text, zh)}
        if found:  # the passages what had come was read from stay beside it, as an answer's do
            history.append(sources_message(found, "", zh))
        return history, panel

    events = service.ask_stream(kb, question, earlier)
    try:
        while True:
            event = _next_event(events, stop)
            if stop.is_set():  # what it brings is not shown: a stopped model's last word may be cut short
                yield stopped()
                return
            if event is None:
                break
            if event.kind == "sources":
                found = list(event.sources or [])
                panel = sources_html(found, zh=zh)
                if event.sources:  # the model reads them before its first word: seconds on a CPU
                    history[-1] = {"role": "assistant", "content": reading(len(event.sources), zh)}
            elif event.kind == "token":
                text += event.text
                history[-1] = {"role": "assistant", "content": text}
            elif event.kind == "done" and event.answer is not None:
                answer = event.answer
                history[-1] = {"role": "assistant", "content": answer.answer}
                if answer.sources or answer.notice:  # kept beside the answer, collapsed, once later answers
                    history.append(sources_message(answer.sources, answer.notice, zh))  # replace the panel
                panel = sources_html(answer.sources, answer.notice, zh)
            yield history, panel
    except KBQAError as exc:
        if stop.is_set():  # a model stopped before its first word may fail on that: it was stopped, not failed
            yield stopped()
            return
        # Unanswered, the question leaves the chat: a later follow-up must not be read with it.
        shown = question if len(question) <= 300 else question[:300] + "…"
        if isinstance(exc, ContextLengthExceeded):  # the settings it names are the server's: say what a user can do
            exc = ContextLengthExceeded(f"The question is too long for the model: shorten it and send it again. "
                                        f"(Details: {exc})")
        yield history[:-2], sources_html([], f"Not answered: {exc} The question was: {shown}")
        raise exc
    finally:
        events.close()  # type: ignore[attr-defined]  # a generator: closing it ends the model's work at once


def delete_document(service: KBQAService, kb: str | None, name: str | None) -> tuple[list[list[object]], str]:
    """Remove a file; returns the updated files table and a message."""
    if not kb or not name:
        raise KBQAError("Choose a knowledge base and a file to delete.")
    service.delete_document(kb, name)
    return documents(service, kb), f"Deleted **{literal(name)}** from **{literal(kb)}**."


def confirm_delete_document(service: KBQAService, kb: str | None, name: str | None) -> str:
    """The question asked before a file is deleted."""
    if not kb or not name:
        raise KBQAError("Choose a knowledge base and a file to delete.")
    held = {d.name: d for d in service.list_documents(kb)}
    if name not in held:
        raise KBQAError(f"{name} is no longer in {kb}: refresh the list.")
    return (f"Delete **{literal(name)}** ({counted(held[name].chunks, 'chunk')}) from "
            f"**{literal(kb)}**? Add the file again to get it back.")


def confirm_delete_kb(service: KBQAService, kb: str | None) -> str:
    """The question asked before a knowledge base is deleted (it names what will be lost)."""
    if not kb:
        raise KBQAError("Choose a knowledge base to delete.")
    try:
        files = service.list_documents(kb)
    except IndexDamaged:  # it cannot be used; deleting it is the way out its error gives
        folder = service.root.folder_for(kb)
        return (f"Delete knowledge base **{literal(kb)}**? It is damaged, so its files cannot be listed (copies of "
                f"them are in `{folder / 'content' if folder else '?'}`: copy them out first to add "
                "them again). This cannot be undone.")
    busy = service.adding(kb)
    coming = busy[1] - busy[0] if busy else 0
    also = (f" (and the {coming} file{'s' * (coming != 1)} still being added, which will not be added)"
            if coming else "")
    return (f"Delete knowledge base **{literal(kb)}** and its {len(files)} file{'s' if len(files) != 1 else ''}"
            f"{also}? This cannot be undone.")


def delete_kb(service: KBQAService, kb: str | None) -> str:
    """Delete a whole knowledge base."""
    if not kb:
        raise KBQAError("Choose a knowledge base to delete.")
    service.delete_kb(kb)
    return f"Deleted knowledge base **{literal(kb)}**. Choose another above, or type a new name."
