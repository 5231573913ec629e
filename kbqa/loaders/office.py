"""Word .docx loader: paragraphs and tables in body order, plus OCR of embedded pictures."""

from __future__ import annotations

from pathlib import Path

from kbqa.errors import CorruptDocument
from kbqa.loaders.images import ocr_quietly
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section


def load_docx(path: Path, name: str, ocr: bool) -> list[Section]:
    """A .docx file as one section: paragraphs, table rows and (with OCR) the text of its pictures."""
    import docx
    from docx.oxml.ns import qn
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except Exception as exc:
        raise CorruptDocument(f"{name} is not a readable Word .docx file ({exc}); open it in Word, save it "
                              "as .docx and upload it again.") from exc
    blip, embed = qn("a:blip"), qn("r:embed")
    vml_image, vml_id = "{urn:schemas-microsoft-com:vml}imagedata", qn("r:id")
    lines: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells, seen = [], set()
                for cell in row.cells:  # a merged cell is repeated once per grid column
                    if id(cell._tc) not in seen:
                        seen.add(id(cell._tc))
                        cells.append(" ".join(cell.text.split()))
                if any(cells):  # an empty cell stays, so the others keep their columns
                    lines.append(" | ".join(cells))
            continue
        if block.text.strip():
            lines.append(block.text.strip())
        if ocr:
            for element in block._p.iter(blip, vml_image):
                rel_id = element.get(embed if element.tag == blip else vml_id)
                part = document.part.related_parts.get(rel_id) if rel_id else None
                if part is not None:
                    text = tidy_text(ocr_quietly(part.blob, f"an image in {name}"))
                    lines.extend([text] if text else [])
    return [Section("\n".join(lines))]
