"""QA datasets for ``kbqa eval``: questions with gold answers, and the documents to build a knowledge base from.

Formats (UTF-8, with or without a byte-order mark):
- SQuAD-style JSON (``data[].paragraphs[].context`` + ``qas[]``, e.g. CMRC2018): each context becomes a
  document and a question's gold document is its context. Identical contexts make one document (the ingest
  keeps identical text once), blank ones none. Questions marked ``is_impossible`` (true or "true") or without
  answers are unanswerable.
- JSONL, one ``{"question", "answer", "doc"}`` per line, over a folder of documents (``--docs``, default the
  JSONL's folder; read one level deep): ``doc`` (optional) names the gold file, which must be there; a hit is
  a retrieved chunk holding the answer text; ``answer`` is a text
  or a list of texts, and null, "" or [] mark an unanswerable question (a line without ``answer`` is an error,
  so that a misspelt key cannot make a question unanswerable). An optional ``history``
  (``[{"question", "answer"}, ...]``) makes the question a follow-up in a chat.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbqa.errors import KBQAError
from kbqa.loaders import SUPPORTED_SUFFIXES
from kbqa.schema import ChatMessage


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
    #: How the user knows a written-out document (``the context of article 2, paragraph 1``), by file name:
    #: errors name it so, not by a temporary file's name.
    labels: dict[str, str] = field(default_factory=dict)


def load_dataset(path: Path, docs: Path | None = None) -> EvalDataset:
    """Read a SQuAD-style JSON or a JSONL dataset (``.jsonl``, in any case).

    Args:
        path: The dataset file.
        docs: The folder of a JSONL dataset's documents (default: the dataset's folder).

    Raises:
        KBQAError: a folder or missing file, unknown format, unreadable file, or a malformed entry (named).
    """
    path = Path(path)
    if path.is_dir():
        raise KBQAError(f"{path} is a folder: --dataset needs a dataset file (a SQuAD-style .json or a .jsonl).")
    if not path.is_file():
        raise KBQAError(f"Dataset {path} not found.")
    jsonl = path.suffix.lower() == ".jsonl"
    if docs is not None and not jsonl:
        raise KBQAError(f"--docs is for a JSONL dataset's documents; {path.name} is SQuAD-style JSON, whose "
                        "contexts are the documents: leave --docs out.")
    dataset = _load_jsonl(path, docs or path.parent, beside=docs is None) if jsonl else _load_squad(path)
    if not dataset.items:
        raise KBQAError(f"{path.name} holds no questions.")
    return dataset


def _read_text(path: Path) -> str:
    # utf-8-sig: editors on Windows put a byte-order mark in front, which json.loads refuses
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise KBQAError(f"{path.name} is not UTF-8 text; save it as UTF-8.") from None


class _Malformed(Exception):
    """What is wrong with a field of a SQuAD file; the loader adds where."""


_SQUAD_SHAPE = ('data[].paragraphs[] of {"context": str, "qas": [{"question": str, '
                '"answers": [{"text": str}]}]}')


def _load_squad(path: Path) -> EvalDataset:
    text = _read_text(path)
    if not text.strip():
        raise KBQAError(f"{path.name} is empty; give a SQuAD-style .json or a .jsonl file.")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KBQAError(f"{path.name} is not JSON ({exc}); give a SQuAD-style .json or a .jsonl file.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise KBQAError(f"{path.name} is not SQuAD-style JSON (no top-level 'data' list).")
    items: list[EvalItem] = []
    texts: list[tuple[str, str]] = []
    labels: dict[str, str] = {}
    # The ingest keeps identical text once, so a second copy of a context would never be retrieved: its
    # questions get the first copy as their gold document.
    doc_of: dict[str, str] = {}
    where = "the file"
    try:
        for a, article in enumerate(data["data"], 1):
            where = f"article {a}"
            for p, paragraph in enumerate(_list(_get(article, "paragraphs", "article", []), "paragraphs"), 1):
                where = f"article {a}, paragraph {p}"
                context = _text(_get(paragraph, "context", "paragraph"), "'context'")
                doc = doc_of.get(context)
                if doc is None and context.strip():  # a blank context makes no document: nothing to ingest
                    doc = doc_of[context] = f"context-{len(texts) + 1:05d}.txt"
                    texts.append((doc, context))
                    labels[doc] = f"the context of {where}"
                for q, qa in enumerate(_list(_get(paragraph, "qas", "paragraph", []), "qas"), 1):
                    where = f"article {a}, paragraph {p}, question {q}"
                    question = _text(_get(qa, "question", "question"), "'question'")
                    if not question.strip():
                        raise KBQAError(f"{path.name}: the question in {where} is blank; give its text or remove it.")
                    given = _list(_get(qa, "answers", "question", []), "answers")
                    texts_given = [_text(_get(ans, "text", "answer"), "the answer's 'text'") for ans in given]
                    answers = tuple(dict.fromkeys(t for t in texts_given if t))
                    # A JSON true or the text "true" only: "false" is not impossible, though non-empty
                    flag = qa.get("is_impossible", False)
                    if flag is True or flag in ("true", "True") or not answers:
                        items.append(EvalItem(question, (), None, str(qa.get("id", len(items)))))
                    else:
                        items.append(EvalItem(question, answers, doc, str(qa.get("id", len(items)))))
    except _Malformed as exc:
        raise KBQAError(f"{path.name} is not SQuAD-style JSON ({exc} in {where}); it needs {_SQUAD_SHAPE}.") \
            from None
    return EvalDataset(path.stem, items, texts=texts, labels=labels)


_REQUIRED = object()


def _get(obj: Any, key: str, what: str, default: Any = _REQUIRED) -> Any:
    if not isinstance(obj, dict):
        raise _Malformed(f"the {what} is {_json_kind(obj)}, not an object")
    if key in obj:
        return obj[key]
    if default is _REQUIRED:
        raise _Malformed(f"no '{key}' field")
    return default


def _list(value: Any, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"'{field_name}' is {_json_kind(value)}, not a list")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} is {_json_kind(value)}, not text")
    return value


def _json_kind(value: Any) -> str:
    """What a JSON value is, in the words of the file's author."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    kinds = {str: "text", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _load_jsonl(path: Path, docs: Path, beside: bool = False) -> EvalDataset:
    """A JSONL dataset over the documents in ``docs`` (``beside``: the dataset's own folder, whose README
    describes the dataset and is no document of it, unless a question names it)."""
    items = []
    wanted: set[str] = set()
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise KBQAError(f"{path.name} line {n} is not JSON ({exc}); each line must be one object such as "
                            '{"question": ..., "answer": ..., "doc": ...}.') from None
        if not isinstance(row, dict):
            raise KBQAError(f"{path.name} line {n} is {_json_kind(row)}, not an object: each line must be one object "
                            'such as {"question": ..., "answer": ..., "doc": ...}.')
        if row.get("question") is None:
            raise KBQAError(f"{path.name} line {n}: no 'question'.")
        answers = _jsonl_answers(row, f"{path.name} line {n}")
        for key, value in (("question", row["question"]), ("doc", row.get("doc") or "")):
            if not isinstance(value, str):
                raise KBQAError(f"{path.name} line {n}: '{key}' must be text.")
        if not row["question"].strip():
            raise KBQAError(f"{path.name} line {n}: the 'question' is blank.")
        try:
            history = tuple((str(t["question"]), str(t.get("answer") or "")) for t in row.get("history") or [])
        except (TypeError, KeyError, AttributeError) as exc:
            raise KBQAError(f"{path.name} line {n}: 'history' must be a list of {{\"question\", \"answer\"}} "
                            "objects.") from exc
        items.append(EvalItem(row["question"], answers, None, str(n), history, str(row.get("kind") or "")))
        if answers and row.get("doc"):
            wanted.add(row["doc"])
    if not Path(docs).is_dir():
        raise KBQAError(f"{docs} is not a folder: pass --docs FOLDER holding the dataset's documents.")
    # Only documents kbqa can read go into the knowledge base (a dataset folder also holds its .jsonl).
    files = sorted(p for p in Path(docs).iterdir()
                   if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
                   and not (beside and p.stem.upper() == "README" and p.name not in wanted))
    missing = wanted - {p.name for p in files}
    unreadable = sorted(m for m in missing if (Path(docs) / m).is_file())
    if unreadable:
        raise KBQAError(f"Gold documents kbqa cannot read (an unsupported format): {unreadable[:5]}; it reads "
                        f"{', '.join(sorted(SUPPORTED_SUFFIXES))}.")
    if missing:
        raise KBQAError(f"Gold documents missing from {docs} (read one level deep, without subfolders): "
                        f"{sorted(missing)[:5]}; pass --docs FOLDER.")
    if not files:
        raise KBQAError(f"{docs} holds no documents kbqa can read: pass --docs FOLDER with the dataset's documents.")
    return EvalDataset(path.stem, items, files=files)


def _jsonl_answers(row: dict[str, Any], where: str) -> tuple[str, ...]:
    """The gold answers of a JSONL row; none (unanswerable) for null, "" or [].

    Raises:
        KBQAError: no ``answer`` key (a misspelt key must not make a question silently unanswerable), or an
            answer that is neither a text nor a list of texts.
    """
    if "answer" not in row:
        raise KBQAError(f"{where}: no 'answer' (use null for an unanswerable question).")
    answer = row["answer"]
    given = answer if isinstance(answer, list) else [] if answer is None else [answer]
    if not all(isinstance(a, str) for a in given):
        raise KBQAError(f"{where}: 'answer' must be text or a list of texts (null for an unanswerable question).")
    return tuple(dict.fromkeys(a for a in given if a.strip()))


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
