"""PDF loader: one section per page from the text layer, with OCR of scanned pages."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from kbqa.errors import CorruptDocument, EmptyDocument, EncryptedDocument, KBQAError, ModelUnavailable
from kbqa.language import HAN
from kbqa.loaders import tidy
from kbqa.loaders.images import ocr_quietly
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

logger = logging.getLogger(__name__)

#: Pages with fewer non-space characters than this are treated as scans when OCR is on.
_MIN_PAGE_CHARS = 20
#: Pages with fewer than this and an image the size of the page are scans with a line of text put on them
#: (a scanning app's "Scanned with CamScanner", a fax header): OCR'd too, the text kept beside what OCR reads.
_STAMPED_SCAN_CHARS = 200


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
    extracted, failed = [], 0
    for number, page in enumerate(pages, 1):
        try:
            extracted.append(page.extract_text() or "")
        except Exception:
            logger.warning("%s: no text from page %d", name, number, exc_info=True)
            extracted.append("")
            failed += 1
    sections, ocr_error, unread = [], None, []
    running = running_lines(extracted)
    for number, (page, raw) in enumerate(zip(pages, drop_running_lines(extracted, running), strict=True), 1):
        text = "\n".join(filter(None, [tidy_text(raw), *_form_values(page)]))
        chars = len("".join(text.split()))
        if ocr and (chars < _MIN_PAGE_CHARS or chars < _STAMPED_SCAN_CHARS and _has_page_sized_image(page)):
            try:
                scanned = _ocr_pdf_page(page, f"page {number} of {name}")
            except ModelUnavailable as exc:  # raised below only if the whole PDF is unreadable
                scanned, ocr_error = "", exc
                unread.append(number)
            if chars < _MIN_PAGE_CHARS:
                text = scanned if len(scanned) > len(text) else text
            elif len("".join(scanned.split())) > 2 * chars:  # not a text layer that a scanner's OCR wrote
                text = f"{text}\n\n{scanned}"
        if text:
            sections.append(Section(text, page=number))
    sections = carry_broken_sentences(sections, running)
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


#: The most of a sentence cut by a page break that moves to the next page.
_CARRY_CHARS = 300
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


def carry_broken_sentences(sections: list[Section], running: Collection[str] = ()) -> list[Section]:
    """Pages whose first sentence began on the page before get that beginning (from the last sentence end
    of that page's last line) moved to their head.

    A page is split on its own (a chunk's page is where its text is), so a sentence across a page break
    was cut in two halves that answer nothing alone ("GPT-3 had 117" / "million, ... 175 billion
    parameters"), and the first half misled: "117" was given as GPT-3's size. Up to ``_CARRY_CHARS``
    characters move; a page left with no text is dropped.
    """
    out = list(sections)
    for i in range(len(out) - 1):
        this, following = out[i], out[i + 1]
        if following.page != (this.page or 0) + 1:
            continue
        # The page's last line of text, not a running footer kept on its first page.
        own = this.text.split("\n")
        at = next((j for j in range(len(own) - 1, -1, -1)
                   if own[j].strip() and line_key(own[j]) not in running), None)
        if at is None:
            continue
        last = own[at].strip()
        lines = following.text.split("\n")
        # A printed page number may come first.
        k = next((j for j, line in enumerate(lines) if line.strip() and not line.strip().isdigit()), None)
        if k is None or not tidy.continues_on_next_page(last, lines[k]):
            continue
        start = _SENTENCE_END.split(last)[-1][-_CARRY_CHARS:]
        latin = not HAN.match(lines[k][0])
        if latin and len(start) == _CARRY_CHARS and " " in start:
            start = start.split(" ", 1)[1]  # from a whole word
        lines[k] = start + (" " if latin and not start.endswith("-") else "") + lines[k]
        out[i + 1] = replace(following, text="\n".join(lines))
        own[at] = last[: len(last) - len(start)].rstrip()
        out[i] = replace(this, text="\n".join(own).strip())
    return [section for section in out if section.text.strip()]


#: Lines at each end of a page where running headers and footers are looked for.
_EDGE_LINES = 2
#: A page number as running headers and footers print it: "Page 3 of 9", "2 / 4", "第3页", a line "- 3 -".
_PAGE_NUMBER = re.compile(r"(?i)\bpage\s*\d+(?:\s*of\s*\d+)?|\b\d+\s*/\s*\d+\b"
                          r"|第\s*\d+\s*页(?:\s*[,，]?\s*共\s*\d+\s*页)?|^[\s\-–—]*\d+[\s\-–—]*$")


def line_key(line: str) -> str:
    """A line as running headers and footers are compared: its page number and spacing left out."""
    return "".join(_PAGE_NUMBER.sub("#", line.strip()).split())


def _edges(page: list[str]) -> list[int]:
    filled = [i for i, line in enumerate(page) if line.strip()]
    return sorted(set(filled[:_EDGE_LINES] + filled[-_EDGE_LINES:]))


def running_lines(pages: list[str]) -> set[str]:
    """The ``line_key`` of each running header and footer of a document's pages: a line among the first or
    last ``_EDGE_LINES`` of at least half the pages with text (three or more), the same but for its page
    number (``公司点评 高测股份（688556.SH）``, ``2 / 4 请务必阅读…``, ``Page 3 of 9``)."""
    lines = [text.split("\n") for text in pages]
    with_text = sum(any(line.strip() for line in page) for page in lines)
    if with_text < 3:
        return set()
    counts = Counter(k for page in lines for k in {line_key(page[i]) for i in _edges(page)} if k)
    return {k for k, n in counts.items() if n >= max(3, (with_text + 1) // 2)}


def drop_running_lines(pages: list[str], running: set[str] | None = None) -> list[str]:
    """The pages' texts without their running headers and footers (``running_lines``), kept where each
    first appears: repeated on every page, as a passage of its own or at the head of one, such a line answers
    nothing yet sits close to every question about the document."""
    running = running_lines(pages) if running is None else running
    if not running:
        return pages
    seen: set[str] = set()
    out = []
    for page in (text.split("\n") for text in pages):
        drop = set()
        for i in _edges(page):
            k = line_key(page[i])
            if k in running:
                if k in seen:
                    drop.add(i)
                seen.add(k)
        out.append("\n".join(line for i, line in enumerate(page) if i not in drop))
    return out


def _form_values(page: object) -> list[str]:
    """The values filled into a page's form fields, as ``field: value`` lines (the text layer has only the
    form's printed labels: "Applicant name:" without "Maria Gonzalez"); a checkbox's when it is ticked."""
    lines = []
    try:
        for ref in page.get("/Annots") or ():  # type: ignore[attr-defined]
            widget = ref.get_object()
            if widget.get("/Subtype") != "/Widget":
                continue
            field = widget if "/V" in widget or "/Parent" not in widget else widget["/Parent"].get_object()
            value = field.get("/V")
            if isinstance(value, list):  # a list box's choices
                value = ", ".join(str(v) for v in value)
            value = str(value).lstrip("/") if value is not None else ""
            if value.strip() and value != "Off":
                lines.append(f"{field.get('/TU') or field.get('/T') or 'field'}: {value.strip()}")
    except Exception:  # a damaged annotation: the text layer is what there is
        logger.debug("form fields not read", exc_info=True)
    return list(dict.fromkeys(lines))  # a radio group's buttons share their field's value


def _has_page_sized_image(page: object) -> bool:
    """Whether the page holds an image of at least half the page's area at 72 dpi (a scan's resolution or more)."""
    try:
        box = page.mediabox  # type: ignore[attr-defined]
        area = float(box.width) * float(box.height)
        resources = page.get("/Resources")  # type: ignore[attr-defined]
        xobjects = resources.get_object().get("/XObject") if resources is not None else None
        for ref in (xobjects.get_object().values() if xobjects is not None else ()):
            image = ref.get_object()
            if (image.get("/Subtype") == "/Image"
                    and float(image.get("/Width", 0)) * float(image.get("/Height", 0)) >= area / 2):
                return True
    except Exception:  # a damaged resource dictionary: the page's text layer is what there is
        logger.debug("no image size read", exc_info=True)
    return False


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
