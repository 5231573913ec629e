"""Framework-free records passed between kbqa's modules and its skins (UI, CLI, API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Section:
    """A piece of a loaded document before splitting: a PDF page, a CSV row, a whole text file."""

    text: str
    page: int | None = None
    #: Extra metadata kept with every chunk cut from this section (e.g. ``{"line": 3}`` for a CSV row).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The start of ``text`` that every chunk repeats when the section is cut into several (a CSV row's short
    #: fields), so each piece still says what it belongs to.
    lead: str = ""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document as indexed: stable id ``<sha256>:<index>`` plus its provenance."""

    id: str
    text: str
    source: str
    sha256: str
    index: int
    page: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Its document's title (from the file's name), read with it by both retrievers; not part of ``text``.
    title: str = ""

    @property
    def indexed(self) -> str:
        """What the retrievers read: the title on a line of its own, then the text."""
        return titled(self.title, self.text)


def titled(title: str, text: str) -> str:
    """``text`` with ``title`` on a line before it (``text`` alone when there is no title)."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class SourceChunk:
    """A retrieved chunk shown beside an answer. ``score`` is the cosine similarity to the question."""

    source: str
    page: int | None
    chunk: int
    score: float
    text: str
    id: str = ""
    #: Position in the fused ranking (1 = best); the order sources are listed in.
    rank: int = 0
    #: For a CSV row: its line in the file (the header's is 1), where a spreadsheet shows it.
    row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the CLI's ``--json`` output and the API (``row`` only for CSV rows)."""
        out = {"source": self.source, "page": self.page, "chunk": self.chunk,
               "score": round(float(self.score), 4), "text": self.text}
        return out | {"row": self.row} if self.row is not None else out

    @property
    def location(self) -> str:
        """Where to find it in its file, for people: ``page 3`` or ``row 12`` (or nothing)."""
        if self.page is not None:
            return f"page {self.page}"
        return f"row {self.row}" if self.row is not None else ""


@dataclass(frozen=True)
class Answer:
    """A finished answer with the sources it was written from, in retrieval order."""

    question: str
    answer: str
    sources: list[SourceChunk]
    #: True when kbqa answered with the refusal sentence because nothing relevant was retrieved.
    refused: bool = False
    language: str = "en"
    #: Why the answer is what it is, when that needs saying (e.g. no chunk reached the threshold).
    notice: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    #: What retrieval searched for: the question, or a follow-up's standalone form ("" = the question).
    query: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"answer": str, "sources": [...]}`` plus ``refused``, ``notice`` and the search ``query``."""
        return {"answer": self.answer, "sources": [s.to_dict() for s in self.sources],
                "refused": self.refused, "notice": self.notice, "query": self.query or self.question}


EventKind = Literal["sources", "token", "done"]


@dataclass(frozen=True)
class AnswerEvent:
    """One event of a streamed answer: the sources first, then tokens, then the whole ``Answer``."""

    kind: EventKind
    text: str = ""
    sources: list[SourceChunk] | None = None
    answer: Answer | None = None


FileStatus = Literal["added", "updated", "unchanged", "failed"]


@dataclass(frozen=True)
class FileResult:
    """What happened to one file of an ingest batch."""

    name: str
    status: FileStatus
    chunks: int = 0
    reason: str = ""

    def line(self) -> str:
        """One human-readable line, as the CLI prints it."""
        if self.status in ("added", "updated"):
            reason = f"; {self.reason}" if self.reason else ""
            return f"{self.name}: {self.status} ({counted(self.chunks, 'chunk')}{reason})"
        if self.status == "failed":
            return f"{self.name}: failed ({self.reason})"
        return f"{self.name}: unchanged" + (f" ({self.reason})" if self.reason else "")


@dataclass
class IngestReport:
    """The outcome of an ingest batch, one ``FileResult`` per file, in input order."""

    kb: str
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return all(f.status != "failed" for f in self.files)

    @property
    def chunks_added(self) -> int:
        """Chunks written by this batch."""
        return sum(f.chunks for f in self.files if f.status in ("added", "updated"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kb": self.kb, "ok": self.ok, "seconds": round(self.seconds, 3),
                "files": [asdict(f) for f in self.files]}


@dataclass(frozen=True)
class DocumentInfo:
    """A file held by a knowledge base."""

    name: str
    sha256: str
    chunks: int
    pages: int | None
    size: int
    added_at: str


@dataclass(frozen=True)
class KnowledgeBaseInfo:
    """A knowledge base as listed to users."""

    name: str
    slug: str
    documents: int
    chunks: int
    embedding: str


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation given to an LLM backend."""

    role: Role
    content: str


def counted(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless one: "1 chunk", "3 chunks", "0 files"."""
    return f"{n} {word}{'s' * (n != 1)}"
