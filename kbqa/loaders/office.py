"""Word .docx loader: paragraphs and tables in body order, plus OCR of embedded pictures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kbqa.errors import CorruptDocument, ModelUnavailable
from kbqa.loaders.images import ocr_quietly
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

logger = logging.getLogger(__name__)


def load_docx(path: Path, name: str, ocr: bool) -> list[Section]:
    """A .docx file as one section: paragraphs, table rows and (with OCR) the text of its pictures.

    The body is read in order, including what python-docx's own reading skips: content controls (a cover
    page's fields), tables inside table cells, text boxes and tracked insertions. Page headers and footers
    (repeated on every page) are not read.
    """
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as exc:
        raise CorruptDocument(f"{name} is not a readable Word .docx file ({exc}); open it in Word, save it "
                              "as .docx and upload it again.") from exc

    missed: list[ModelUnavailable] = []

    def picture_text(blob: bytes) -> str:
        try:
            return tidy_text(ocr_quietly(blob, f"an image in {name}"))
        except ModelUnavailable as exc:  # no OCR engine: the text is still read, the pictures are not
            missed.append(exc)
            return ""

    lines = _DocxReader(document.part, picture_text if ocr else None).blocks(document.element.body)
    if missed:
        if not "".join(lines).strip():
            raise missed[0]
        logger.warning("%s: the text of its %d picture(s) is not read: %s", name, len(missed), missed[0])
    return [Section("\n".join(lines))]


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

    def paragraph(self, p: Any) -> list[str]:
        parts = [self.text_tags[e.tag] or (e.text or "") for e in p.iter(*self.text_tags) if self._own(e, p)]
        text = "".join(parts).strip()
        lines = [text] if text else []
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
        for row in self._unwrapped(tbl, self.tr):
            # One entry per cell as written (a merged cell once); an empty cell stays, so the others keep
            # their columns. A table inside a cell is read into the cell's text.
            cells = [" ".join(" ".join(self.blocks(tc)).split()) for tc in self._unwrapped(row, self.tc)]
            if any(cells):
                lines.append(" | ".join(cells))
        return lines
