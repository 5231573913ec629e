"""``kbqa eval``: retrieval and answer quality of the configured pipeline on a QA dataset.

Formats:
- SQuAD-style JSON (``data[].paragraphs[].context`` + ``qas[]``, e.g. CMRC2018): each context becomes a
  document; a question's gold document is its context. ``is_impossible`` questions are unanswerable.
- JSONL, one ``{"question", "answer", "doc"}`` per line, over a folder of documents (``--docs``, default
  the JSONL's folder): ``doc`` names the gold file; an empty or null ``answer`` marks an unanswerable question.
  An optional ``history`` (``[{"question", "answer"}, ...]``) makes the question a follow-up in a chat.

A retrieval hit is a retrieved chunk that comes from the gold document or contains a gold answer (both
compared without whitespace). Answer scores follow CMRC2018's scorer for Chinese (character-level F1 over
the longest common substring, mixed segmentation) and SQuAD's for English (word-level F1).
"""

from __future__ import annotations

import json
import random
import re
import string
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbqa.errors import KBQAError
from kbqa.language import is_chinese
from kbqa.loaders import SUPPORTED_SUFFIXES
from kbqa.schema import ChatMessage, SourceChunk
from kbqa.service import KBQAService

KS = (1, 3, 5)


@dataclass(frozen=True)
class EvalItem:
    """One question with its gold answers and, for SQuAD-style data, its gold context (a document)."""

    question: str
    answers: tuple[str, ...]
    #: The document holding the gold context when contexts are passages (SQuAD); a hit may come from
    #: it. JSONL documents are whole files, too coarse for that: there only the answer text counts.
    doc: str | None
    id: str = ""
    #: Earlier ``(question, answer)`` turns of a chat that the question follows up on.
    history: tuple[tuple[str, str], ...] = ()
    #: A label for grouping results (JSONL ``kind``, e.g. ``follow-up`` or ``topic-switch``).
    kind: str = ""

    def chat(self) -> list[ChatMessage]:
        """The history as chat messages."""
        return [m for q, a in self.history for m in (ChatMessage("user", q), ChatMessage("assistant", a))]

    @property
    def answerable(self) -> bool:
        """True when the dataset gives an answer."""
        return bool(self.answers)


@dataclass
class EvalDataset:
    """Questions plus the documents to build the knowledge base from."""

    name: str
    items: list[EvalItem]
    #: (file name, text) documents written out for ingestion (SQuAD contexts) ...
    texts: list[tuple[str, str]] = field(default_factory=list)
    #: ... or existing files (JSONL datasets).
    files: list[Path] = field(default_factory=list)


def load_dataset(path: Path, docs: Path | None = None) -> EvalDataset:
    """Read a SQuAD-style JSON or a JSONL dataset.

    Raises:
        KBQAError: unknown format, unreadable file, or a JSONL line without a question.
    """
    path = Path(path)
    if not path.is_file():
        raise KBQAError(f"Dataset {path} not found.")
    dataset = _load_jsonl(path, docs or path.parent) if path.suffix == ".jsonl" else _load_squad(path)
    if not dataset.items:
        raise KBQAError(f"{path.name} holds no questions.")
    return dataset


def _load_squad(path: Path) -> EvalDataset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KBQAError(f"{path.name} is not JSON ({exc}); give a SQuAD-style .json or a .jsonl file.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise KBQAError(f"{path.name} is not SQuAD-style JSON (no top-level 'data' list).")
    items: list[EvalItem] = []
    texts: list[tuple[str, str]] = []
    try:
        for article in data["data"]:
            for paragraph in article.get("paragraphs", []):
                doc = f"context-{len(texts):05d}.txt"
                texts.append((doc, _text(paragraph["context"], "context")))
                for qa in paragraph.get("qas", []):
                    answers = tuple(dict.fromkeys(_text(a["text"], "answer") for a in qa.get("answers", [])
                                                  if a.get("text")))
                    impossible = qa.get("is_impossible", False) or not answers
                    items.append(EvalItem(_text(qa["question"], "question"), () if impossible else answers,
                                          None if impossible else doc, str(qa.get("id", len(items)))))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        what = f"no '{exc.args[0]}' field" if isinstance(exc, KeyError) else str(exc)
        raise KBQAError(
            f"{path.name} is not SQuAD-style JSON ({what} in article {len(texts)}); it needs data[].paragraphs[] "
            'of {"context": str, "qas": [{"question": str, "answers": [{"text": str}]}]}.') from None
    return EvalDataset(path.stem, items, texts=texts)


def _text(value: Any, field_name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{field_name}' is {type(value).__name__}, not text")
    return value


def _load_jsonl(path: Path, docs: Path) -> EvalDataset:
    items = []
    wanted: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise KBQAError(f"{path.name} is not UTF-8 text; save it as UTF-8.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise KBQAError(f"{path.name} line {n} is not JSON ({exc}); each line must be one object such as "
                            '{"question": ..., "answer": ..., "doc": ...}.') from None
        if not isinstance(row, dict) or not row.get("question"):
            raise KBQAError(f"{path.name} line {n}: no 'question'.")
        answer = row.get("answer")
        answers = tuple(a for a in (answer if isinstance(answer, list) else [answer]) if a)
        for key, values in (("question", [row["question"]]), ("answer", answers), ("doc", [row.get("doc") or ""])):
            if not all(isinstance(v, str) for v in values):
                raise KBQAError(f"{path.name} line {n}: '{key}' must be text"
                                + (" or a list of texts." if key == "answer" else "."))
        try:
            history = tuple((str(t["question"]), str(t.get("answer") or "")) for t in row.get("history") or [])
        except (TypeError, KeyError) as exc:
            raise KBQAError(f"{path.name} line {n}: 'history' must be a list of {{\"question\", \"answer\"}} "
                            "objects.") from exc
        items.append(EvalItem(row["question"], answers, None, str(n), history, str(row.get("kind") or "")))
        if answers and row.get("doc"):
            wanted.add(row["doc"])
    if not Path(docs).is_dir():
        raise KBQAError(f"{docs} is not a folder: pass --docs FOLDER holding the dataset's documents.")
    # Only documents kbqa can read go into the knowledge base (a dataset folder also holds its .jsonl, README...).
    files = sorted(p for p in Path(docs).iterdir()
                   if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith("."))
    missing = wanted - {p.name for p in files}
    if missing:
        raise KBQAError(f"Gold documents missing from {docs}: {sorted(missing)[:5]}; pass --docs FOLDER.")
    if not files:
        raise KBQAError(f"{docs} holds no documents kbqa can read: pass --docs FOLDER with the dataset's documents.")
    return EvalDataset(path.stem, items, files=files)


def sample(items: Sequence[EvalItem], limit: int | None, seed: int = 0) -> list[EvalItem]:
    """A fixed random sample (same seed, same questions), in dataset order.

    Raises:
        KBQAError: ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise KBQAError(f"--limit must be at least 1 (got {limit}).")
    if limit is None or limit >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [item for i, item in enumerate(items) if i in keep]


# ---------------------------------------------------------------------------------------------- scoring
def squash(text: str) -> str:
    """How answers are compared with text: NFKC, no whitespace, lower case."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def is_hit(chunk: SourceChunk, item: EvalItem) -> bool:
    """The chunk comes from the gold document or contains a gold answer."""
    if item.doc and chunk.source == item.doc:
        return True
    text = squash(chunk.text)
    return any(squash(a) and squash(a) in text for a in item.answers)


_PUNCT = set(string.punctuation) | set("，。！？、；：“”‘’（）《》【】—…·「」『』〈〉～－")


def _segments(text: str) -> list[str]:
    """Mixed segmentation: each CJK character alone, Latin/digit runs as words; punctuation dropped."""
    tokens: list[str] = []
    for run in re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|\S", unicodedata.normalize("NFKC", text.lower())):
        if run not in _PUNCT:
            tokens.append(run)
    return tokens


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _en_tokens(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return [w for w in text.split() if w not in {"a", "an", "the"}]


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Best F1 over the gold answers: CMRC2018-style for Chinese, SQuAD-style for English."""
    best = 0.0
    for gold in answers:
        if is_chinese(gold) or is_chinese(prediction):
            p, g = _segments(prediction), _segments(gold)
            common = _longest_common_substring(p, g)
        else:
            p, g = _en_tokens(prediction), _en_tokens(gold)
            common = sum(min(p.count(w), g.count(w)) for w in set(g))
        if common:
            precision, recall = common / len(p), common / len(g)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Prediction equals a gold answer after dropping case, punctuation and whitespace."""
    def norm(s: str) -> str:
        return "".join(_segments(s)) if is_chinese(s) else " ".join(_en_tokens(s))
    return any(norm(prediction) == norm(a) for a in answers)


# ---------------------------------------------------------------------------------------------- running
def build_knowledge_base(service: KBQAService, dataset: EvalDataset, kb: str,
                         progress: Callable[[float, str], None] | None = None) -> float:
    """Ingest the dataset's documents into ``kb``; returns the seconds it took."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kbqa-eval-") as tmp:
        files = list(dataset.files)
        for name, text in dataset.texts:
            (Path(tmp) / name).write_text(text, encoding="utf-8")
            files.append(Path(tmp) / name)
        report = service.add_files(kb, files, progress)
    failed = [f for f in report.files if f.status == "failed"]
    if failed:
        raise KBQAError(f"{len(failed)} dataset documents failed to ingest, e.g. {failed[0].line()}")
    return time.perf_counter() - start


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95))}


def evaluate_retrieval(service: KBQAService, kb: str, items: Sequence[EvalItem], depth: int = 10,
                       progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """hit@1/3/5 and MRR@depth over the answerable questions, plus retrieval latency."""
    answerable = [i for i in items if i.answerable]
    hits = {k: 0 for k in KS}
    context_hits = {k: 0 for k in KS}
    rr = 0.0
    latency = []
    for n, item in enumerate(answerable):
        start = time.perf_counter()
        found = service.search(kb, item.question, depth, item.chat())
        latency.append(time.perf_counter() - start)
        first = next((r for r, c in enumerate(found, 1) if is_hit(c, item)), None)
        first_ctx = next((r for r, c in enumerate(found, 1) if item.doc and c.source == item.doc), None)
        for k in KS:
            hits[k] += first is not None and first <= k
            context_hits[k] += first_ctx is not None and first_ctx <= k
        rr += 1.0 / first if first else 0.0
        if progress and n % 20 == 0:
            progress(n / len(answerable), "retrieving")
    total = max(len(answerable), 1)
    result: dict[str, Any] = {"answerable": len(answerable), **{f"hit@{k}": hits[k] / total for k in KS},
                              f"mrr@{depth}": rr / total}
    if any(i.doc for i in answerable):
        result.update({f"context_hit@{k}": context_hits[k] / total for k in KS})
    result["retrieval_latency"] = _percentiles(latency)
    return result


def evaluate_answers(service: KBQAService, kb: str, items: Sequence[EvalItem],
                     progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Exact match and F1 on answerable questions, refusal rates, and answer latency."""
    em = f1 = 0.0
    refused_answerable = refused_unanswerable = 0
    latency, first_token = [], []
    rows = []
    for n, item in enumerate(items):
        answer = service.ask(kb, item.question, item.chat())
        latency.append(answer.timings.get("total", 0.0))
        if "first_token" in answer.timings:
            first_token.append(answer.timings["first_token"])
        if item.answerable:
            em += exact_match(answer.answer, item.answers)
            f1 += f1_score(answer.answer, item.answers)
            refused_answerable += answer.refused
        else:
            refused_unanswerable += answer.refused
        rows.append({"id": item.id, "question": item.question, "gold": list(item.answers),
                     "answer": answer.answer, "refused": answer.refused, "query": answer.query or item.question})
        if progress:
            progress((n + 1) / len(items), "answering")
    n_ans = sum(i.answerable for i in items)
    n_un = len(items) - n_ans
    return {"answered_questions": n_ans, "unanswerable_questions": n_un,
            "exact_match": em / n_ans if n_ans else None, "f1": f1 / n_ans if n_ans else None,
            "refusal_rate_unanswerable": refused_unanswerable / n_un if n_un else None,
            "refusal_rate_answerable": refused_answerable / n_ans if n_ans else None,
            "answer_latency": _percentiles(latency), "first_token_latency": _percentiles(first_token),
            "answers": rows}


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a two-column text table."""
    lines = []
    for key, value in result.items():
        if key == "answers":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.0f}" for k, v in value.items()) or "-"
        elif isinstance(value, float):
            value = f"{value:.3f}"
        lines.append(f"{key:<28} {value if value is not None else '-'}")
    return "\n".join(lines)
