"""Word .docx loader: paragraphs and tables in body order, plus OCR of embedded pictures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kbqa.errors import CorruptDocument, EncryptedDocument, ModelUnavailable
from kbqa.loaders.images import ocr_quietly
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

logger = logging.getLogger(__name__)


#: A package that unpacks to more than this many times its size, and to over ``_UNPACKED_BYTES``, is refused: Word's
#: XML compresses some tenfold (pictures not at all), so such a ratio is a zip bomb (a 387 KB file unpacked to 78
#: million characters, a 3 MB one to 3 GB of XML, read into memory whole), not a document.
_UNPACKED_RATIO = 100
_UNPACKED_BYTES = 100 * 2**20


def _check_unpacked_size(path: Path, name: str) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as package:
            unpacked = sum(member.file_size for member in package.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # the parser says what is wrong with it
        return
    packed = max(path.stat().st_size, 1)
    if unpacked > _UNPACKED_BYTES and unpacked > _UNPACKED_RATIO * packed:
        raise CorruptDocument(f"{name} unpacks to {unpacked / 2**20:,.0f} MB from {packed / 2**20:.2g} MB, over "
                              f"{_UNPACKED_RATIO} times its size, as no Word document does: it is refused as a "
                              "zip bomb. If it is a real document, save it again from Word, or as .txt or .pdf.")


def load_docx(path: Path, name: str, ocr: bool) -> list[Section]:
    """A .docx file as one section: paragraphs, table rows and (with OCR) the text of its pictures.

    The body is read in order, including what python-docx's own reading skips: content controls (a cover
    page's fields), tables inside table cells, text boxes, tracked insertions, equations' text and the labels
    of numbered paragraphs ("第三条", "2.1"); then footnotes and endnotes, each after its number ("[1] ...",
    as its mark in the text reads). Not read: page headers and footers (repeated on every page), hidden text,
    tracked deletions and the old place of moved text.
    """
    import docx

    with path.open("rb") as file:
        head = file.read(8)
    if head == _OLE_HEADER:  # Word 97-2003, or a .docx with a password (Office encrypts it into such a file)
        encrypted = b"E\x00n\x00c\x00r\x00y\x00p\x00t\x00e\x00d\x00P\x00a\x00c\x00k\x00a\x00g\x00e" in path.read_bytes()
        raise (EncryptedDocument(f"{name} is password-protected: open it in Word, remove the password (File > Info "
                                 "> Protect Document), save it and upload it again.") if encrypted else
               CorruptDocument(f"{name} is an old Word 97-2003 (.doc) file named .docx: open it in Word or "
                               "LibreOffice, save it as .docx and upload it again."))
    _check_unpacked_size(path, name)
    try:
        document = docx.Document(str(path))
    except Exception as exc:
        import zipfile

        # The parser's own message names the file's temporary path (an upload's), not what is wrong.
        why = ("it is not a Word document package" if head[:2] != b"PK" else
               "it is damaged or truncated" if not zipfile.is_zipfile(path) else
               "the package holds no Word document: another format renamed .docx?")
        raise CorruptDocument(f"{name} is not a readable Word .docx file ({why}); open it in Word, save it "
                              "as .docx and upload it again.") from exc

    missed: list[ModelUnavailable] = []

    def picture_text(blob: bytes) -> str:
        try:
            return tidy_text(ocr_quietly(blob, f"an image in {name}"))
        except ModelUnavailable as exc:  # no OCR engine: the text is still read, the pictures are not
            missed.append(exc)
            return ""

    reader = _DocxReader(document.part, picture_text if ocr else None)
    lines = reader.blocks(document.element.body) + reader.notes()
    if missed:
        if not "".join(lines).strip():
            raise missed[0]
        logger.warning("%s: the text of its %d picture(s) is not read: %s", name, len(missed), missed[0])
    return [Section("\n".join(lines))]


#: The first bytes of an OLE compound file: a Word 97-2003 document, or an encrypted Office 2007+ one.
_OLE_HEADER = bytes.fromhex("d0cf11e0a1b11ae1")
_NOTES = {"footnotes": ("w:footnote", "w:footnoteReference"), "endnotes": ("w:endnote", "w:endnoteReference")}


class _DocxReader:
    """Lines of WordprocessingML blocks: a paragraph per line, a table row as ``a | b | c``."""

    def __init__(self, part: Any, picture_text: Callable[[bytes], str] | None) -> None:
        from docx.oxml.ns import qn

        self.part, self.picture_text = part, picture_text
        self.p, self.tbl, self.tr, self.tc = qn("w:p"), qn("w:tbl"), qn("w:tr"), qn("w:tc")
        self.sdt, self.sdt_content, self.textbox = qn("w:sdt"), qn("w:sdtContent"), qn("w:txbxContent")
        self.custom_xml = qn("w:customXml")
        # A non-breaking hyphen is a character of the text (case 000-30653); a soft one shows only at a line end.
        self.text_tags = {qn("w:t"): None, qn("w:tab"): "\t", qn("w:br"): "\n", qn("w:cr"): "\n",
                          qn("w:noBreakHyphen"): "-", qn("w:softHyphen"): ""}
        self.fallback = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
        self.blip, self.embed = qn("a:blip"), qn("r:embed")
        self.vml_image, self.vml_id = "{urn:schemas-microsoft-com:vml}imagedata", qn("r:id")
        self.text_tags[qn("m:t")] = None  # an equation's text, in reading order
        self.run, self.run_pr, self.vanish = qn("w:r"), qn("w:rPr"), qn("w:vanish")
        self.unshown = {qn("w:moveFrom"), qn("w:del")}  # the old place of moved text, deleted text
        self.note_refs = {qn(ref): kind for kind, (_, ref) in _NOTES.items()}
        self.note_numbers: dict[str, dict[str, int]] = {kind: {} for kind in _NOTES}  # note id -> its number
        self.val, self.id = qn("w:val"), qn("w:id")
        self.tc_pr, self.v_merge, self.grid_span = qn("w:tcPr"), qn("w:vMerge"), qn("w:gridSpan")
        self.note_tags = {kind: qn(tag) for kind, (tag, _) in _NOTES.items()}
        from kbqa.loaders.numbering import Numbering  # python-docx is imported when a .docx is read

        self.numbering = Numbering(_element(part, "numbering_part"), _styles(part))

    def blocks(self, parent: Any) -> list[str]:
        lines: list[str] = []
        for child in self._unwrapped(parent, self.p, self.tbl):
            lines.extend(self.paragraph(child) if child.tag == self.p else self.table(child))
        return lines

    def _unwrapped(self, parent: Any, *tags: str) -> Iterator[Any]:
        """``parent``'s children of ``tags``, in order, also those wrapped in content controls (inside
        w:sdtContent: a cover page's fields; Word's repeating sections wrap table rows, and a cell can be wrapped
        too) or custom XML."""
        for child in parent:
            if child.tag in tags:
                yield child
            elif child.tag == self.sdt:
                for content in child.iterchildren(self.sdt_content):
                    yield from self._unwrapped(content, *tags)
            elif child.tag == self.custom_xml:
                yield from self._unwrapped(child, *tags)

    def _own(self, element: Any, p: Any) -> bool:
        """Whether ``element`` belongs to paragraph ``p`` itself: not to a text box in it, nor to a fallback
        copy of a drawing (which repeats the drawing's text)."""
        for ancestor in element.iterancestors():
            if ancestor is p:
                return True
            if ancestor.tag in (self.textbox, self.fallback):
                return False
        return True

    def _shown(self, element: Any, p: Any) -> bool:
        """Whether ``element`` of paragraph ``p`` shows: not in a hidden run, a deletion or moved text's old place."""
        for ancestor in element.iterancestors():
            if ancestor is p:
                return True
            if ancestor.tag in self.unshown:
                return False
            if ancestor.tag == self.run:
                props = ancestor.find(self.run_pr)
                hidden = props.find(self.vanish) if props is not None else None
                if hidden is not None and hidden.get(self.val, "true").lower() not in ("0", "false", "off"):
                    return False
        return True

    def _text(self, e: Any) -> str:
        kind = self.note_refs.get(e.tag)
        if kind is not None:  # a footnote's mark: numbered in the order the text refers to them, as Word does
            numbers = self.note_numbers[kind]
            return f"[{numbers.setdefault(e.get(self.id, ''), len(numbers) + 1)}]"
        return self.text_tags[e.tag] or (e.text or "")

    def notes(self) -> list[str]:
        """The footnotes, then the endnotes, the text refers to, in its order: ``[n] text``."""
        lines = []
        for kind, tag in self.note_tags.items():
            numbers = self.note_numbers[kind]
            root = _related_xml(self.part, kind) if numbers else None
            notes = {note.get(self.id, ""): note for note in root.iter(tag)} if root is not None else {}
            for note_id, number in sorted(numbers.items(), key=lambda item: item[1]):
                text = " ".join(" ".join(self.blocks(notes[note_id])).split()) if note_id in notes else ""
                if text:
                    lines.append(f"[{number}] {text}")
        return lines

    def paragraph(self, p: Any) -> list[str]:
        parts = [self._text(e) for e in p.iter(*self.text_tags, *self.note_refs)
                 if self._own(e, p) and self._shown(e, p)]
        label = self.numbering.label(p)  # counted even when empty: Word numbers an empty item too
        text = "".join(parts).strip()
        lines = [label + text] if text else []
        for box in p.iter(self.textbox):
            if self._own(box, p):
                lines.extend(self.blocks(box))
        if self.picture_text is not None:
            for element in p.iter(self.blip, self.vml_image):
                rel_id = element.get(self.embed if element.tag == self.blip else self.vml_id)
                related = self.part.related_parts.get(rel_id) if rel_id else None
                if related is not None and self._own(element, p):
                    text = self.picture_text(related.blob)
                    lines.extend([text] if text else [])
        return lines

    def table(self, tbl: Any) -> list[str]:
        lines = []
        above: dict[int, str] = {}  # the text of the row above, by grid column
        for row in self._unwrapped(tbl, self.tr):
            # One entry per cell as written (merged across columns, once); an empty cell stays, so the others
            # keep their columns. A cell merged down from the row above repeats its text (a row reads whole:
            # "North | 12 | 13", not " | 12 | 13"). A table inside a cell is read into the cell's text.
            cells, column, here = [], 0, {}
            for tc in self._unwrapped(row, self.tc):
                props = tc.find(self.tc_pr)
                merge = props.find(self.v_merge) if props is not None else None
                span = props.find(self.grid_span) if props is not None else None
                if merge is not None and merge.get(self.val, "continue") != "restart":
                    text = above.get(column, "")
                else:
                    text = " ".join(" ".join(self.blocks(tc)).split())
                cells.append(text)
                here[column] = text
                column += int(span.get(self.val, "1")) if span is not None and span.get(self.val, "").isdigit() else 1
            above = here
            if any(cells):
                lines.append(" | ".join(cells))
        return lines


def _element(part: Any, attribute: str) -> Any | None:
    """The XML of one of the document's parts (numbering), or None when it has none."""
    try:
        return getattr(part, attribute).element
    except (KeyError, NotImplementedError, AttributeError):
        return None


def _styles(part: Any) -> Any | None:
    try:
        return part.styles.element
    except (KeyError, NotImplementedError, AttributeError):
        return None


def _related_xml(part: Any, kind: str) -> Any | None:
    """The XML of the document's footnotes or endnotes part, or None."""
    from docx.oxml.parser import parse_xml

    for rel in part.rels.values():
        if not rel.is_external and rel.reltype.endswith("/" + kind):
            target = rel.target_part
            return getattr(target, "element", None) or parse_xml(target.blob)
    return None
