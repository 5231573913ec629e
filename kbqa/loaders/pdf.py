"""PDF loader: one section per page from the text layer, with OCR of scanned pages."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from kbqa.errors import CorruptDocument, EmptyDocument, EncryptedDocument, KBQAError, ModelUnavailable
from kbqa.loaders.images import ocr_quietly
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

logger = logging.getLogger(__name__)

#: Pages with fewer non-space characters than this are treated as scans when OCR is on.
_MIN_PAGE_CHARS = 20


def load_pdf(path: Path, name: str, ocr: bool) -> list[Section]:
    """A PDF as one section per page with text (1-based ``page``); scanned pages are OCRed if ``ocr``."""
    data = path.read_bytes()
    if b"%PDF-" not in data[:1024]:
        raise CorruptDocument(f"{name} is not a PDF file (no PDF header); check it and upload it again.")
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:  # many PDFs are encrypted with an empty user password just to set permissions
                opened = reader.decrypt("")
            except DependencyError as exc:
                raise EncryptedDocument(
                    f"{name} is encrypted and reading it needs the 'cryptography' package: install it, "
                    "or remove the encryption and upload again.") from exc
            if not opened:
                raise EncryptedDocument(f"{name} is password-protected: remove the password and upload "
                                        "again.")
        pages = list(reader.pages)
    except KBQAError:
        raise
    except Exception as exc:
        raise CorruptDocument(f"{name} is damaged or truncated ({type(exc).__name__}: {exc}); "
                              "re-save or re-download it and upload again.") from exc
    if not pages:
        raise EmptyDocument(f"{name} has no pages; check that it is the right file.")
    sections, failed, ocr_error, unread = [], 0, None, []
    for number, page in enumerate(pages, 1):
        try:
            text = tidy_text(page.extract_text() or "")
        except Exception:
            logger.warning("%s: no text from page %d", name, number, exc_info=True)
            text, failed = "", failed + 1
        if ocr and len("".join(text.split())) < _MIN_PAGE_CHARS:
            try:
                scanned = _ocr_pdf_page(page, f"page {number} of {name}")
            except ModelUnavailable as exc:  # raised below only if the whole PDF is unreadable
                scanned, ocr_error = "", exc
                unread.append(number)
            text = scanned if len(scanned) > len(text) else text
        if text:
            sections.append(Section(text, page=number))
    if sections and ocr_error is not None:
        logger.warning("%s: page(s) %s have too little text and could not be OCR'd: %s", name,
                       ", ".join(map(str, unread)), ocr_error)
    if not sections:
        if ocr_error is not None:
            raise ocr_error
        if failed:
            raise CorruptDocument(f"{name}: no page could be read, the PDF is damaged; re-save it and upload "
                                  "again.")
        raise EmptyDocument(f"{name} has no text layer (it is probably scanned) and " + (
            "OCR found no text in it." if ocr else "OCR is off; turn OCR on (ingest.ocr = true, "
                                                 "KBQA_INGEST__OCR=true) and upload it again."))
    return sections


def _ocr_pdf_page(page: object, where: str) -> str:
    """OCR the images embedded in a PDF page (a scanned page is one image per page)."""
    texts = []
    try:
        images = list(page.images)  # type: ignore[attr-defined]
    except Exception:
        logger.warning("%s: images could not be extracted", where, exc_info=True)
        return ""
    for image_file in images:
        try:
            image = image_file.image
        except Exception:
            logger.warning("%s: an image could not be decoded", where, exc_info=True)
            continue
        if image is not None and min(image.size) >= 32:
            texts.append(ocr_quietly(image, where))
    return tidy_text("\n".join(t for t in texts if t))
