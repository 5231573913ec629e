"""Image loader and OCR helpers: image files are OCRed frame by frame; pictures inside documents quietly."""

from __future__ import annotations

import logging
from pathlib import Path

from kbqa.errors import CorruptDocument, EmptyDocument, ModelUnavailable, UnsupportedFile
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path: Path, name: str, ocr: bool) -> list[Section]:
    """An image file OCRed as one section, or one per frame (1-based ``page``) for multi-frame images."""
    if not ocr:
        raise UnsupportedFile(f"{name} is an image and OCR is off; turn OCR on (ingest.ocr = true, "
                              "KBQA_INGEST__OCR=true) to read text from images.")
    from PIL import Image, ImageSequence

    from kbqa.ocr import ocr_image

    try:
        image = Image.open(path)
        frames = [frame.copy() for frame in ImageSequence.Iterator(image)]
    except Exception as exc:
        raise CorruptDocument(f"{name} is not a readable image ({exc}); re-save it and upload it again.") \
            from exc
    texts = [tidy_text(ocr_image(frame)) for frame in frames]
    if not any(texts):
        raise EmptyDocument(f"No text was found in the image {name}; check that it is legible.")
    if len(frames) == 1:
        return [Section(texts[0])]
    return [Section(text, page=number) for number, text in enumerate(texts, 1) if text]


def ocr_quietly(image: object, where: str) -> str:
    """OCR for images inside documents: a bad image loses its own text, not the document's."""
    from kbqa.ocr import ocr_image

    try:
        return ocr_image(image)  # type: ignore[arg-type]
    except ModelUnavailable:
        raise
    except Exception as exc:
        logger.warning("OCR of %s failed: %s", where, exc)
        return ""
