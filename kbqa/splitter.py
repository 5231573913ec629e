"""Chinese-aware recursive splitting with stable chunk ids (``<file sha256>:<index>``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from langchain_text_splitters import RecursiveCharacterTextSplitter

from kbqa.language import HAN, is_chinese
from kbqa.schema import Chunk, Section, titled

#: Paragraphs, then lines, then sentence ends (Chinese and Western), then clause marks, then spaces.
#: Line breaks come before spaces so a chunk boundary prefers a line over a word.
SEPARATORS: tuple[str, ...] = (
    "\n\n", "\n", "。", "！", "？", "!", "?", ". ", "；", ";", "，", ",", "、", " ", "",
)
#: A full stop ends a sentence, except after an initial or an abbreviation: "28 C.F.R. § 58.4(b)", "U.S. Code",
#: "J. Smith", "Mr. Biden", "e.g. this" are not cut there (a citation cut from its sentence is a passage of its
#: own that answers nothing). Python's lookbehinds are fixed-width, hence one per length.
FULL_STOP = (r"(?<!\b[A-Z])(?<!\b(?:Mr|Ms|Dr|St|Jr|Sr|No|vs|pp|Co|Mt))(?<!\b(?:Mrs|Inc|Ltd|Fig|Vol|Art|Sec))"
             r"(?<!\b(?:e\.g|i\.e))\. ")
_PATTERNS = [FULL_STOP if s == ". " else re.escape(s) for s in SEPARATORS]


class Splitter:
    """Cuts sections into chunks of at most ``chunk_size`` characters.

    Args:
        chunk_size: Largest chunk, in characters.
        chunk_overlap: Characters shared by neighbouring chunks.
        too_long: Optional check that a chunk fits the embedding model (e.g. its token limit); chunks
            it flags are cut again into halves until they fit, so the dense index never truncates text.
    """

    def __init__(self, chunk_size: int = 500, chunk_overlap: int = 50,
                 too_long: Callable[[list[str]], list[bool]] | None = None) -> None:
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.too_long = too_long
        self._splitter = RecursiveCharacterTextSplitter(
            separators=_PATTERNS, is_separator_regex=True, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            keep_separator="end", strip_whitespace=True, length_function=len)

    def split_text(self, text: str) -> list[str]:
        """Pieces of ``text``, none longer than ``chunk_size``, blank pieces dropped.

        A short line without a closing mark (a heading, a page's header) that would be left alone because the
        line after it does not fit beside it is kept with that line's first sentences instead: alone, a
        heading is a passage that answers nothing yet resembles many questions.
        """
        pieces = [p.replace(_BOUND, "\n") for p in self._splitter.split_text(self._bind_headings(text)) if p.strip()]
        # The recursive splitter honours the limit; this guard keeps the promise if it ever does not.
        out: list[str] = []
        for piece in pieces:
            out.extend(piece[i:i + self.chunk_size] for i in range(0, len(piece), self.chunk_size))
        return self._fit(out)

    def _bind_headings(self, text: str) -> str:
        if "\n" not in text:
            return text
        lines = text.split("\n")
        for i in range(len(lines) - 1):
            # The next line with text: a Markdown heading has a blank line under it.
            gap = 2 if not lines[i + 1].strip() and i + 2 < len(lines) and lines[i].lstrip().startswith("#") else 1
            line, following = lines[i].strip(), lines[i + gap].strip()
            # A heading (short, then a paragraph that starts anew), or a short line the next would leave alone;
            # not a table's row (its cells apart by wide gaps, or ending in a figure), nor a list of short lines.
            if not (line and following) or line[-1] in _CLOSING or "  " in line or _ENDS_IN_FIGURE.search(line):
                continue
            heading = (len(line) <= _HEADING_CHARS and len(following) >= 80
                       and (following[0].isupper() or following[0].isdigit() or bool(HAN.match(following))))
            if heading or (gap == 1 and len(line) <= self.chunk_size // 4
                           and len(lines[i]) + 1 + len(lines[i + 1]) > self.chunk_size):
                for bound in range(i, i + gap):  # joined below without their line breaks: no cut there
                    lines[bound] += _BOUND
        return "\n".join(lines).replace(_BOUND + "\n", _BOUND)

    def _fit(self, pieces: list[str]) -> list[str]:
        if self.too_long is None or not pieces:
            return pieces
        flags = self.too_long(pieces)
        if not any(flags):
            return pieces
        out: list[str] = []
        for piece, long in zip(pieces, flags, strict=True):
            if not long or len(piece) < 16:
                out.append(piece)
                continue
            half = Splitter(max(len(piece) // 2, 8), min(self.chunk_overlap, len(piece) // 8), self.too_long)
            out.extend(half.split_text(piece))
        return out

    def split(self, sections: Sequence[Section], source: str, sha256: str) -> list[Chunk]:
        """Chunks of a document's sections, numbered across the whole document.

        The id ``<sha256>:<index>`` depends only on the file's bytes and the split settings, so
        re-ingesting the same file yields the same ids. Debris (``_is_debris``) is left out, unless it is all
        the document holds.
        """
        title = document_title(source)
        too_long = self.too_long
        # The title is read with each chunk: a chunk must fit the embedding model with it.
        splitter = self if not (title and too_long) else Splitter(
            self.chunk_size, self.chunk_overlap, lambda texts: too_long([titled(title, t) for t in texts]))
        pieces = [(section, text) for section in sections for text in splitter._split_section(section)]
        kept = [(section, text) for section, text in pieces if not _is_debris(text)] or pieces
        return [Chunk(id=f"{sha256}:{index}", text=text, source=source, sha256=sha256, index=index,
                      page=section.page, extra=dict(section.extra), title=chunk_title(title, text))
                for index, (section, text) in enumerate(kept)]

    def _split_section(self, section: Section) -> list[str]:
        """``split_text``, except that a section with a ``lead`` cut into several chunks repeats it in each."""
        lead = section.lead
        if not lead or len(section.text) <= self.chunk_size or len(lead) > self.chunk_size // 2:
            return self.split_text(section.text)
        room = self.chunk_size - len(lead) - 1
        too_long = self.too_long
        body = Splitter(room, min(self.chunk_overlap, room // 4),
                        None if too_long is None else lambda texts: too_long([f"{lead}\n{t}" for t in texts]))
        return [f"{lead}\n{piece}" for piece in body.split_text(section.text[len(lead):])]


def document_title(name: str) -> str:
    """A document's title from its file's name, read with each of its chunks by both retrievers: a passage of
    ``galaxy_gaming_10k.html`` is about Galaxy Gaming though it never names it, and a question naming it finds
    it. The name without its suffix, ``_``/``-``/``.`` read as spaces; none for a name that says nothing
    (``scan_0001.pdf``, ``IMG_2043.png``, ``新建文本文档.txt``, ``context-00001.txt``: ``kbqa eval``'s contexts)."""
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    words = [w for w in re.split(r"[\s_.\-]+", stem) if w]
    if not any(_meaningful(w) for w in words):
        return ""
    return " ".join(words)[:_TITLE_CHARS].strip()


def chunk_title(title: str, text: str) -> str:
    """``title`` for a chunk in its language; none for a chunk in the other language (Chinese or not). An English
    name on a Chinese document (``zh_procuratorate_rules.md``) would lift every one of its chunks over the
    refusal threshold for an English question sharing the name's words, and so past the translation of the
    question that finds the right one."""
    return title if title and is_chinese(title) == is_chinese(text) else ""


def _meaningful(word: str) -> bool:
    low = word.lower()
    return (sum(c.isalpha() for c in word) >= 2 and low.rstrip("0123456789") not in _NAMELESS
            and not re.fullmatch(r"[0-9a-f]{8,}|[a-z]{0,5}\d+[a-z]?|v\d+(\.\d+)*", low))


#: Words of file names that name no document: a scanner's, camera's or program's default names, copies.
_NAMELESS = frozenset({
    "attachment", "context", "copy", "data", "doc", "docs", "document", "documents", "download", "downloads",
    "draft", "export", "file", "files", "final", "image", "images", "img", "new", "noname", "output", "page",
    "pages", "part", "photo", "pic", "picture", "readme", "sample", "scan", "scanned", "tmp", "temp", "test",
    "text", "untitled", "unnamed", "upload", "version",
    "新建文本文档", "新建文档", "新建", "文档", "未命名", "副本", "扫描件", "图片"})
_TITLE_CHARS = 80


#: Stands for a line break the splitter must not cut at (a heading bound to its paragraph); no text holds it.
_BOUND = "\x1f"
_CLOSING = ".!?。！？；;:：…\"”'’"
_HEADING_CHARS = 60
_ENDS_IN_FIGURE = re.compile(r"[\d,.%]$")

#: Pieces this short without a single letter are debris: a printed page number, a closing code fence.
_DEBRIS_CHARS = 20
#: So are pieces almost all digits and marks that hold a long run of them without a space: a chart's axis
#: labels as a PDF's text layer glues them (``-60%-40%-20%0%20%…``). A table of figures, even one whose row
#: labels are years, has its cells apart.
_DEBRIS_LETTER_SHARE = 0.1
_GLUED_FIGURES = re.compile(r"[\d.,%+\-–~/:]{30,}")


def _is_debris(text: str) -> bool:
    """A piece with no letter (in any script) and under ``_DEBRIS_CHARS`` characters, or one whose letters
    are under a tenth of its characters around a long glued run of figures: it would answer nothing, yet its
    vector sits close to many questions' and gets it cited."""
    visible = "".join(text.split())
    letters = sum(c.isalpha() for c in visible)
    if len(visible) < _DEBRIS_CHARS and not letters:
        return True
    return letters < _DEBRIS_LETTER_SHARE * len(visible) and any(
        sum(c.isdigit() for c in run.group()) >= 10 for run in _GLUED_FIGURES.finditer(text))
