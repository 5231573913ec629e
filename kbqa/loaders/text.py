"""Text-based loaders: encoding detection, plain text and Markdown, CSV rows and visible HTML text."""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import Any

from kbqa.errors import CorruptDocument, EmptyDocument
from kbqa.schema import Section

logger = logging.getLogger(__name__)
csv.field_size_limit(2**31 - 1)  # a spreadsheet cell may hold a whole document (the default limit is 128 KB)

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")


def read_text(data: bytes, name: str) -> str:
    """Decode a text file: BOMs, UTF-8, GBK/GB18030, then charset-normalizer's guess.

    Args:
        data: The file's bytes.
        name: The display name used in error messages.

    Returns:
        The text with a BOM removed and CRLF / CR line ends turned into LF.

    Raises:
        CorruptDocument: The bytes are binary or in no recognisable encoding.
    """
    text = _decode(data, name)
    if len(_CONTROL.findall(text)) > max(2, len(text) // 1000):
        raise CorruptDocument(f"{name} looks like a binary file, not text; upload the document itself.")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _utf16_text(data: bytes) -> str | None:
    """``data`` read as UTF-16 without a byte-order mark, or None when it is not such text.

    Mostly ASCII text is told by its NULs: every other byte. Mostly Chinese text has too few of them (only its
    line breaks and spaces), so it is taken when it decodes as valid UTF-16 (little-endian first, as Windows
    writes it) with no NUL and all but a few characters printable or line breaks (binary data read so is full
    of control and unassigned characters)."""
    if len(data) % 2:
        return None
    for encoding, offset in (("utf-16-le", 1), ("utf-16-be", 0)):
        if data[offset::2].count(0) > 0.3 * len(data) // 2 and b"\x00" not in data[1 - offset::2]:
            return data.decode(encoding, errors="replace")
    for encoding in ("utf-16-le", "utf-16-be"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        odd = sum(not (c.isprintable() or c in "\n\r\t\f") for c in text)  # a zero-width space is "odd" too
        if "\x00" not in text and odd <= len(text) / 200:
            return text
    return None


def _decode(data: bytes, name: str) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, errors="replace")
    if b"\x00" in data:
        text = _utf16_text(data)
        if text is not None:
            return text
        if data.count(0) <= max(2, len(data) // 1000):  # a stray NUL or two in UTF-8 text (a bad export)
            try:
                text = data.replace(b"\x00", b"").decode("utf-8")
                logger.warning("%s holds %d NUL byte(s), left out", name, data.count(0))
                return text
            except UnicodeDecodeError:
                pass
        raise CorruptDocument(f"{name} looks like a binary file, not text (it contains NUL bytes); "
                              "upload the document itself or save it as UTF-8 text.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # UTF-8 with a few damaged bytes (a file cut mid-character, one stray byte): keep it, marking those
    # spots, rather than refuse it or read the whole file in another encoding. It must hold valid UTF-8
    # beyond ASCII too (a cp1252 file with three curly quotes does not); text in another encoding has a
    # bad sequence in almost every non-ASCII character, far above the bar.
    # Short GBK text can pass that bar too (``退款`` reads as UTF-8 ``�˿�``): where the bytes are also
    # GBK, the damage must be rare among the characters that decoded (GBK is tried only when it is not).
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = sum(ord(c) > 0x7F for c in text) - bad
    damaged_utf8 = bad <= max(3, len(text) // 1000) and good > 0
    gbk = None if damaged_utf8 and good > 4 * bad else _gbk(data)
    if damaged_utf8 and gbk is None:
        logger.warning("%s is UTF-8 with %d damaged byte sequence(s), shown as \ufffd", name, bad)
        return text
    western = _western(data)
    if gbk is not None and not (western is not None and _mostly_rare_han(gbk)):
        return gbk
    if western is not None:
        return western
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise CorruptDocument(f"{name}: the text encoding could not be recognised; save it as UTF-8 and "
                              "upload it again.")
    logger.info("%s decoded as %s", name, best.encoding)
    return str(best)


#: Letters and punctuation of French, German, Spanish, Portuguese and Italian text in Windows-1252, and its
#: signs that Windows-1250 (Central European) either shares (™ × ÷ © ® § ± µ • † ‰ „) or reads as a mark or a
#: letter hardly ever written (½ ¼: ˝ Ľ). Not ¹ ³ ¾ £ (Polish ą ł, Slovak ľ, Ł as cp1252 reads them).
_WESTERN = set("àâäáãçéèêëíìîïñóòôöõúùûüýÿæœßÀÂÄÁÃÇÉÈÊËÍÌÎÏÑÓÒÔÖÕÚÙÛÜÝŸÆŒ’‘“”–—…«»°€¿¡ºª·\u00a0"
               "™×÷©®§¶±µ•†‡‰„‚‹›½¼")


def _western(data: bytes) -> str | None:
    """The text as Windows-1252 when every character beyond ASCII is a Western European letter or mark.

    Statistical detectors read short French or Spanish text as Central European (``très`` as ``trčs``);
    Polish or Czech text in cp1250 decodes in cp1252 to characters outside this set (``ł`` -> ``³``).
    """
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    wide = [c for c in text if ord(c) > 0x7F]
    return text if wide and all(c in _WESTERN for c in wide) else None


def _gbk(data: bytes) -> str | None:
    """The bytes as GBK/GB18030 text, when they decode and read like it.

    GBK text is almost all GB2312 characters; Latin-1 bytes that happen to decode are not.
    """
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return None
    wide = [c for c in text if ord(c) > 0x7F]
    return text if sum(_in_gb2312(c) for c in wide) >= 0.8 * len(wide) else None


def _mostly_rare_han(text: str) -> bool:
    """Whether most Han characters of ``text`` are GB2312's rare ones (level 2, lead bytes 0xD8 and up).

    Two accented lowercase letters of Windows-1252 text (``öß``, ``éé``: bytes 0xE0-0xFF) read as one such
    character (``Größe`` as ``Gr鲞e``); Chinese text is almost all level-1 characters (the 3,755 common ones).
    """
    leads = [c.encode("gb2312")[0] for c in text if ord(c) > 0x7F and _in_gb2312(c)]
    han = [lead for lead in leads if lead >= 0xB0]
    return bool(han) and sum(lead >= 0xD8 for lead in han) > len(han) / 2


def _in_gb2312(char: str) -> bool:
    try:
        char.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


#: A Markdown comment (``<!-- ... -->``, on lines of its own or inside a paragraph, up to its first ``-->``), or
#: an inline code span (kept: a comment marker quoted in code shows as written); and fenced code blocks.
_MD_COMMENT = re.compile(r"(`+)(?:(?!\n[ \t]*\n).)*?\1|<!--(?:(?!-->).)*?-->", re.S)
_MD_FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.S | re.M)


def _drop_comments(text: str) -> str:
    return _MD_COMMENT.sub(lambda m: m.group() if m.group(1) else "", text)


#: An image written into Markdown as data (Typora, Obsidian and Notion exports): kept as its alt text only, as
#: hundreds of passages of base64 answer nothing.
_MD_DATA_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?data:[^)]*\)")


def _without_md_markup(text: str) -> str:
    """Markdown text as a reader sees it: its tables' rows naming their columns, its comments left out and its
    HTML tags read as their text, outside code blocks (shown as written); its images written in as data read as
    their alt text."""
    parts, end = [], 0
    for fence in _MD_FENCE.finditer(text):
        parts += [_md_prose(text[end:fence.start()]), fence.group()]
        end = fence.end()
    text = "".join([*parts, _md_prose(text[end:])])
    return _MD_DATA_IMAGE.sub(lambda m: m.group(1), text)


def _md_prose(text: str) -> str:
    return _drop_html_tags(_drop_comments(_md_table_rows(text)))


#: HTML tags a Markdown file may hold (a README's centred links: ``<p align="center"> <a href=...>Discord</a>``),
#: by name, so that ``<placeholder>`` or ``a < b > c`` in the prose stays; block tags end a line.
_HTML_BLOCK = ("address|blockquote|br|center|dd|details|div|dl|dt|figcaption|figure|h[1-6]|hr|li|ol|p|pre|section|"
               "summary|table|tbody|td|tfoot|th|thead|tr|ul")
_HTML_INLINE = "a|abbr|b|big|cite|del|em|font|i|ins|kbd|mark|picture|q|s|samp|small|source|span|strike|strong|" \
    "sub|sup|tt|u|var|video"
_HTML_TAG = re.compile(rf"<(/?)(?:({_HTML_BLOCK})|{_HTML_INLINE}|(img))\b((?:[^<>\"']|\"[^\"]*\"|'[^']*')*)/?>", re.I)
_HTML_ALT = re.compile(r"\balt\s*=\s*(?:\"([^\"]*)\"|'([^']*)')", re.I)
#: Inline code (`` `<br>` ``) is shown as written.
_MD_CODE_SPAN = re.compile(r"(`+)[^`\n]+?\1")


def _drop_html_tags(text: str) -> str:
    def tag(m: re.Match[str]) -> str:
        if m.group(3):  # an image: its alt text
            alt = _HTML_ALT.search(m.group(4))
            return f" {alt.group(1) or alt.group(2)} " if alt and (alt.group(1) or alt.group(2)) else ""
        return "\n" if m.group(2) else ""

    if "<" not in text:
        return text
    parts, end = [], 0
    for code in _MD_CODE_SPAN.finditer(text):
        parts += [_HTML_TAG.sub(tag, text[end:code.start()]), code.group()]
        end = code.end()
    return "".join([*parts, _HTML_TAG.sub(tag, text[end:])])


#: A Markdown table's line under its header: ``| --- | :---: |``.
_MD_TABLE_RULE = re.compile(r"[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*")


def _md_cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def _md_table_rows(text: str) -> str:
    """Markdown tables with each row as ``column: value; column: value`` (as CSV rows are read): a row of a
    long table, cut into a chunk far from its header, still says what each figure is, and a model reading
    ``| ChatGLM2-6B | 50.1 | 46.4 | 60.4 |`` no longer takes a figure of the next column for the one asked."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = lines[i]
        if "|" in header and i + 1 < len(lines) and _MD_TABLE_RULE.fullmatch(lines[i + 1]):
            names = _md_cells(header)
            if any(names):
                i += 2
                while i < len(lines) and "|" in lines[i] and lines[i].strip():
                    cells = _md_cells(lines[i])
                    fields = [f"{names[k] if k < len(names) and names[k] else f'column {k + 1}'}: {cell}"
                              for k, cell in enumerate(cells) if cell]
                    out.append("; ".join(fields))
                    i += 1
                continue
        out.append(header)
        i += 1
    return "\n".join(out)


def load_text(path: Path, name: str, ocr: bool) -> list[Section]:
    """A .txt or .md file as one section holding its whole text (Markdown's comments, which a reader never
    sees, left out)."""
    text = read_text(path.read_bytes(), name)
    if Path(name).suffix.lower() in (".md", ".markdown"):
        text = _without_md_markup(text)
    if not text.strip():
        raise EmptyDocument(f"{name} is empty; add some text to it and upload it again.")
    return [Section(text)]


def load_csv(path: Path, name: str, ocr: bool) -> list[Section]:
    """A CSV file as one section per non-empty data row, in ``header: value`` lines.

    ``extra["line"]`` is the row's line in the file (the header's is 1), as a spreadsheet numbers it.
    """
    text = read_text(path.read_bytes(), name).lstrip("\n")
    first_line = text.split("\n", 1)[0]
    excel = re.fullmatch(r"\s*sep=(.)\s*", first_line)  # Excel's own line naming the delimiter (it hides it)
    if excel:
        delimiter, text = excel.group(1), text.split("\n", 1)[-1].lstrip("\n")
    else:
        # A delimiter inside a quoted header name does not count (a quote opens a field only at its start).
        # One written tight to the next name counts first: a comma inside a name has a space after it
        # ("Kunde;Adresse (Straße, Nr., Ort);Umsatz" is read by semicolons, as many commas as they are).
        unquoted = re.sub(r'(^|(?<=[,;\t|]))"[^"]*"', "", first_line)
        delimiter = max(",;\t|", key=lambda d: (len(re.findall(re.escape(d) + r"\S", unquoted)),
                                                 unquoted.count(d), first_line.count(d)))
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    end = 0
    for row in reader:
        if any(c.strip() for c in row):
            rows.append(row)
            lines.append(end + 1)  # where the record starts (a quoted cell may span lines)
        end = reader.line_num
    if len(rows) < 2:
        raise EmptyDocument(f"{name} has {'only a header row' if rows else 'no rows'}; "
                            "add data rows and upload it again.")
    header, data = [h.strip() for h in rows[0]], rows[1:]
    # An unnamed column of integers (pandas' to_csv index) carries no meaning; other unnamed columns
    # get a positional name.
    skip = {i for i, h in enumerate(header) if not h and all(
        not r[i].strip() or r[i].strip().isdigit() for r in data if i < len(r))}
    sections = []
    for line, row in zip(lines[1:], data, strict=True):
        fields = [f"{header[i] if i < len(header) and header[i] else f'column {i + 1}'}: {cell.strip()}"
                  for i, cell in enumerate(row) if cell.strip() and i not in skip]
        if fields:
            sections.append(_row_section(fields, line))
    return sections


#: A CSV field up to this long is short (a name, a price, a date); a row's short fields, up to
#: ``_LEAD_CHARS`` together, lead every chunk cut from a row too long for one.
_SHORT_FIELD, _LEAD_CHARS = 100, 200


def _row_section(fields: list[str], line: int) -> Section:
    """One CSV row; with a long cell, its short fields come first and lead each chunk of the row."""
    lead: list[str] = []
    rest: list[str] = []
    size = 0
    for f in fields:
        if len(f) <= _SHORT_FIELD and size + len(f) <= _LEAD_CHARS:
            lead.append(f)
            size += len(f) + 1
        else:
            rest.append(f)
    if not lead or not rest:
        return Section("\n".join(fields), extra={"line": line})
    return Section("\n".join(lead + rest), extra={"line": line}, lead="\n".join(lead))


# ---------------------------------------------------------------- html

#: Not shown, or not content: site navigation repeats on every page of a site and answers nothing.
_HIDDEN_TAGS = ["script", "style", "head", "template", "noscript", "ix:header", "svg", "iframe", "object", "nav"]
_BLOCK_TAGS = frozenset((
    "address", "article", "aside", "blockquote", "caption", "center", "dd", "details", "dialog", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "title", "tr", "ul"))
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def load_html(path: Path, name: str, ocr: bool) -> list[Section]:
    """An HTML page as one section: its title (as the browser's tab shows it) and its visible text.

    Table rows become ``a | b`` lines. A page whose declared charset does not match its bytes (a GBK
    page saying ``charset=utf-8``) is read in the encoding its bytes are in, as a text file is.
    """
    from bs4 import BeautifulSoup

    # Inline XBRL files start with an XML declaration, which only makes BeautifulSoup warn.
    raw = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", path.read_bytes())
    soup = BeautifulSoup(_html_text_of(raw, name), "lxml")
    # The page's own title, not an inline icon's (<svg><title>Close</title></svg>).
    title_tag = next((t for t in soup.find_all("title") if t.find_parent("svg") is None), None)
    title = re.sub(r"\s+", " ", title_tag.get_text()).strip() if title_tag else ""
    for tag in [*soup.find_all(_HIDDEN_TAGS), *soup.find_all(hidden=True),
                *soup.find_all(style=_HIDDEN_STYLE)]:
        if not tag.decomposed:
            tag.decompose()
    parts: list[str] = []
    _html_text(soup, parts)
    lines = [line for line in (re.sub(r"\s+", " ", line).strip() for line in "".join(parts).split("\n")) if line]
    if title and (not lines or lines[0].casefold() != title.casefold()):
        lines.insert(0, title)
    return [Section("\n".join(lines))]


_DECLARED_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)
#: Declared names read as browsers read them (WHATWG): GB2312 pages are GBK, Latin-1 pages Windows-1252.
_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "iso-8859-1": "cp1252",
                    "latin1": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252"}


def _html_text_of(raw: bytes, name: str) -> str:
    """An HTML file's characters: UTF-8 when its bytes are, else the charset it declares when they are in it,
    else the encoding they are found to be in (as a text file's), so a page saved in another encoding than
    it says (a UTF-8 page still saying ``gb2312``, a GBK page saying ``utf-8``) reads right."""
    if not raw.startswith(tuple(bom for bom, _ in _BOMS)):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        found = _DECLARED_CHARSET.search(raw[:65536])
        declared = found.group(1).decode("ascii", "replace").lower() if found else ""
        if declared and declared.replace("_", "-") not in ("utf-8", "utf8"):
            try:
                return raw.decode(_CHARSET_ALIASES.get(declared, declared))
            except (UnicodeDecodeError, LookupError):
                pass
        if declared:
            logger.warning("%s: its bytes are not in its declared charset (%s); read in the one detected",
                           name, declared)
    return read_text(raw, name)


def _fill_from_above(cells: list[str], down: dict[int, list[Any]], column: int) -> int:
    """Cells of rows above that span down into this row at ``column`` and after, put in their place (a row reads
    whole: "North | 12 | 13", not "12 | 13"); the next free column."""
    while column in down:
        spanned = down[column]
        cells.append(spanned[0])
        spanned[1] -= 1
        if not spanned[1]:
            del down[column]
        column += spanned[2]
    return column


def _span(cell: Any, attribute: str) -> int:
    """A table cell's rowspan or colspan (1 when absent or not a number; at most 1,000, as browsers cap it)."""
    value = str(cell.get(attribute) or "1").strip()
    return min(int(value), 1000) if value.isdigit() and int(value) > 0 else 1


def _html_text(node: object, out: list[str]) -> None:
    from bs4 import CData, NavigableString, Tag

    for child in getattr(node, "children", ()):
        if isinstance(child, NavigableString):
            if type(child) is NavigableString or isinstance(child, CData):  # not comments, doctype...
                in_pre = child.find_parent("pre") is not None
                out.append(str(child) if in_pre else str(child).replace("\n", " "))
        elif not isinstance(child, Tag):
            continue
        elif child.name == "br":
            out.append("\n")
        elif child.name == "table":
            caption = child.find("caption")
            out.append("\n" + (caption.get_text(" ", strip=True) + "\n" if caption else ""))
            down: dict[int, list[Any]] = {}  # column -> [text, rows more] of a cell spanning rows below its own
            for row in child.find_all("tr"):
                if row.find_parent("table") is child:
                    cells: list[str] = []  # a cell merged across columns once, as written
                    column = _fill_from_above(cells, down, 0)
                    for cell in row.find_all(["td", "th"], recursive=False):
                        cell_parts: list[str] = []
                        _html_text(cell, cell_parts)
                        text = re.sub(r"\s+", " ", "".join(cell_parts)).strip()
                        if _span(cell, "rowspan") > 1:
                            down[column] = [text, _span(cell, "rowspan") - 1, _span(cell, "colspan")]
                        cells.append(text)
                        column = _fill_from_above(cells, down, column + _span(cell, "colspan"))
                    if any(cells):  # an empty cell stays, so the others keep their columns
                        out.append(" | ".join(cells) + "\n")
        elif child.name in _BLOCK_TAGS:
            out.append("\n")
            _html_text(child, out)
            out.append("\n")
        else:
            _html_text(child, out)
            if child.name in ("td", "th"):
                out.append(" ")
