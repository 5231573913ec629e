"""Clean-up of text extracted from PDFs or by OCR: stray glyphs, blank runs and lines broken inside sentences."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from kbqa.language import HAN, HAN_CHARS

_CJK = HAN_CHARS
_CJK_CHAR = HAN
_CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20"
_CJK_ANY = f"{_CJK}{_CJK_PUNCT}"
_SPACED_CJK = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")
_SPACE_AT_PUNCT = re.compile(f"(?<=[{_CJK_PUNCT}]) (?=\\S)|(?<=\\S) (?=[{_CJK_PUNCT}])")
#: Spaces around a number amid Chinese ("年产 4,000 万千米", "约 30%。") or starting a clause ("，2022 年").
_SPACE_BEFORE_NUMBER = re.compile(f"(?<=[{_CJK_ANY}]) (?=\\d[\\d,.%~-]* ?[{_CJK_ANY}])")
_SPACE_AFTER_NUMBER = re.compile(f"(?:(?<=[{_CJK_ANY}])|^)(\\d[\\d,.%~-]*) (?=[{_CJK_ANY}])")
_LIST_START = re.compile(r"^(\d+[.、)）](?!\d)|[•·\-*])")
_LABEL_START = re.compile(r"^[^，。：:]{1,8}[：:]")
#: Word bookmarks that research-report templates leave in the text layer ("[Table_Main]", "[Table_Finance]").
_BOOKMARK = re.compile(r"\[Table_[A-Za-z]+\] ?")
_TABLE_ROW = re.compile(r"(\s[-+]?[\d,.]+%?){2,}$")


def tidy_text(text: str) -> str:
    """Clean text extracted from a PDF or by OCR.

    Strips each line, maps private-use glyphs (symbol-font bullets) to "•", collapses blank runs and
    joins Western lines broken inside a sentence. When the text is Chinese, also joins its lines broken
    inside a sentence and removes the spaces that extraction puts between Chinese characters and around
    numbers.

    Args:
        text: Raw extracted text.

    Returns:
        The cleaned text.
    """
    text = re.sub("[\ue000-\uf8ff]", "•", text)
    text = _BOOKMARK.sub("", text)
    lines = [line.strip() for line in text.split("\n")]
    if _CJK_CHAR.search(text):
        lines = _join_wrapped(lines)
        lines = [_SPACE_AT_PUNCT.sub("", _unspace(line)) for line in lines]
        lines = [_SPACE_AFTER_NUMBER.sub(r"\1", _SPACE_BEFORE_NUMBER.sub("", line)) for line in lines]
    lines = _join_latin_wrapped(lines)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def continues_on_next_page(line: str, following: str) -> bool:
    """Whether ``following``, the first line of a page (tidied), continues the sentence that ``line``, the last
    of the page before, ends in. Stricter for Chinese than a line break inside a page: neither a source or
    note line (``资料来源：…``) nor the page's heading (a short line without a closing mark) is a
    continuation."""
    if not (line and following):
        return False
    if _latin_wrapped(line, following, capitals=False):  # a page's first line in capitals may be its heading
        return True
    return (_wrapped(line, following) and not _LABEL_START.match(line)
            and (following[-1] in "。！？；，、：）”" or _width(following) >= 0.75 * _width(line)))


def _latin_wrapped(line: str, following: str, width: float = 0, capitals: bool = True) -> bool:
    """Whether ``following`` continues ``line``'s sentence in Western text.

    ``line`` is long (not a heading: at least 0.6 of ``width``, the text's median line length, and 25
    characters) and ends inside a sentence; ``following`` starts with a lower-case letter (``had 117`` /
    ``million parameters``), or anything after a hyphen (``GPT-`` / ``2``), or a quote mark or bracket and a
    lower-case letter, or, after a line as long as most (at least 0.9 of ``width``; not a caption or a line with
    a web address), with a capital or an inline citation (``development of bespoke`` / ``AI applications``,
    ``by OpenAI`` / ``[5], and``). Lines of code or commands, list items, table rows and lines holding a
    page's number ("Page 6 of 14") are never joined.
    """
    first = following[:1]
    if first in "'\"‘“(":
        first = following[1:2]
    if not (len(line) >= max(25, 0.6 * width) and "  " not in line
            and (line[-1].isalnum() or line[-1] in ",-–—(/'\"’”)")):
        return False
    starts = "a" <= first <= "z" or (line[-1] == "-" and first.isalnum()) or (
        capitals and len(line) >= 0.9 * width and line[-1] != "-" and not _CAPTION.match(line)
        and "://" not in line and not _LATIN_LABEL.match(following)
        and (first.isupper() or bool(_CITATION.match(following))))
    return (starts and not _LIST_START.match(following) and not _TABLE_ROW.search(following)
            and not any(_CODE.search(x) or _PAGE_OF.search(x) or _LEADERS.search(x) for x in (line, following)))


#: A line of code or a command (``pip install -r requirements.txt``, ``result = chain.run(question)``).
_CODE = re.compile(r"^\s*(?:\$|>>>|#!|import\s|from\s\S+\simport\s|def\s|class\s|pip\d?\s|python\d?\s|conda\s"
                   r"|cd\s|git\s|npm\s|curl\s|sudo\s)|[={}]|[A-Za-z_]\w*\((?!s\))|\(\)|\s--?[A-Za-z]"
                   r"|\.(?:py|txt|sh|json|toml|md|ya?ml|csv|js)\b")
#: A figure's or table's caption, a line of its own ("Fig. 1 Example of a Simple Sequential Chain").
_CAPTION = re.compile(r"(?i)^(?:fig\.?|figure|table|图|表)\s*\d")
_PAGE_OF = re.compile(r"(?i)\bpage\s*\d+\s*of\s*\d+")
#: A line that starts with a label, one word ("A: Thirty days", "Answer: ...", "Step 2: ...", "Note: ..."; not a
#: title's "Computational Linguistics: Human Language", which a citation wraps), or that runs
#: to a page number on dot leaders (a table of contents' "Introduction ........ 3"): a line of its own.
_LATIN_LABEL = re.compile(r"[A-Z][A-Za-z0-9]{0,14}(?: \d+)?:\s")
_LEADERS = re.compile(r"(?:\.\s?){4,}\s*\d+$|…{2,}")
_CITATION = re.compile(r"\[\d+(?:[,–-]\d+)*\][,.;:)]")
#: Words that stay hyphenated at a line's end (self-play, well-known); other words broken there are mended.
_COMPOUND_HEADS = frozenset(("self", "well", "non", "cross", "multi", "state", "real", "end", "user", "open",
                             "high", "low", "long", "short", "large", "small", "full", "half", "semi", "co",
                             "pre", "post", "anti", "sub", "inter", "intra", "over", "under", "one", "two"))


def _join_lines(lines: list[str], wrapped: Callable[[str, str], bool],
                glue: Callable[[str, str], tuple[int, str]]) -> list[str]:
    """``lines`` with each line that ``wrapped`` says continues the one before joined onto it, ``glue`` giving
    how many characters to cut from the end of the line before and what goes between; built in one pass, so a
    page of many thousand lines costs no more than a few."""
    groups: list[list[str]] = []
    previous = ""
    for line in lines:
        if groups and wrapped(previous, line):
            cut, between = glue(previous, line)
            if cut:
                groups[-1][-1] = groups[-1][-1][:-cut]
            groups[-1] += [between, line]
        else:
            groups.append([line])
        previous = line
    return ["".join(group) for group in groups]


def _join_latin_wrapped(lines: list[str]) -> list[str]:
    lengths = sorted(len(line) for line in lines if line)
    width = lengths[len(lengths) // 2] if lengths else 0
    words = set(re.findall(r"[A-Za-z]+(?:-[A-Za-z]+)*", " ".join(lines).lower()))

    def glue(line: str, following: str) -> tuple[int, str]:
        if not line.endswith("-"):
            return 0, " "
        head = re.search(r"(?:^|\s)\S*?([A-Za-z]+)-$", line)
        if head and re.search(r"[/@]|\.\w", head.group()):
            return 0, ""  # a web address or a file name: its hyphens are its own
        tail = re.match(r"[A-Za-z]+", following)
        if not (head and tail and head.group(1)[-1].islower() and tail.group()[0].islower()):
            return 0, ""  # GPT- / 2: the hyphen is the word's own
        left, right = head.group(1).lower(), tail.group().lower()
        # A word broken where the line ran out (pri- / mary) is mended, unless it is written with the hyphen
        # elsewhere in the text or starts with a word that makes compounds (self- / play).
        if f"{left}-{right}" in words or (left in _COMPOUND_HEADS and f"{left}{right}" not in words):
            return 0, ""
        return 1, ""

    return _join_lines(lines, lambda line, following: _latin_wrapped(line, following, width), glue)


def _unspace(line: str) -> str:
    """Undo letter-spacing ("金 刚 线"); a lone space between Chinese words is a cell or legend gap."""
    spaced = len(_SPACED_CJK.findall(line))
    if spaced >= 2 and spaced >= 0.5 * len(_CJK_CHAR.findall(line)):
        return _SPACED_CJK.sub("", line)
    return line


def _width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def _wrapped(line: str, following: str) -> bool:
    """Whether ``following`` continues ``line``'s sentence (a soft line break of a Chinese paragraph)."""
    if not line or not following or "  " in line or _LIST_START.match(following) \
            or _LABEL_START.match(following) or _TABLE_ROW.search(following):
        return False
    last, first = line[-1], following[0]
    if last in "。！？；：!?;:" or not (_CJK_CHAR.match(first) or first in "（《“‘【「+"
                                         or (first.isascii() and first.isalnum())):
        return False
    if not (_CJK_CHAR.match(last) or last in "，、（《“‘【「—…·"):
        # A line may end in a number or Latin word ("公司 22Q1"), but not a table row ("7.18 32.88").
        head = re.sub(r"[0-9A-Za-z.,%]+$", "", line).rstrip()
        if head == line or not head or not _CJK_CHAR.match(head[-1]) or not _CJK_CHAR.match(first):
            return False
    # A short line (heading, label) ends where it is, even before a long one.
    width = _width(line)
    return width >= 20 and width >= 0.75 * _width(following)


def _join_wrapped(lines: list[str]) -> list[str]:
    return _join_lines(lines, _wrapped, lambda line, following: (0, ""))
