"""Optical character recognition for scans and images: one lazy, process-wide RapidOCR engine.

The engine (three ONNX models shipped with ``rapidocr-onnxruntime``) is built on first use and shared
by all threads; recognition runs under a lock because one engine holds per-call state. Boxes come
back in RapidOCR's top-to-bottom order, which interleaves the lines of multi-column pages, so they
are re-ordered with a recursive XY-cut (columns first where a gutter runs through a block).
"""

from __future__ import annotations

import io
import logging
import statistics
import threading
from collections.abc import Sequence
from typing import Any, cast

from PIL import Image, ImageOps

from kbqa.errors import CorruptDocument, ModelUnavailable

logger = logging.getLogger(__name__)

_engine: Any = None
_engine_lock = threading.Lock()
_run_lock = threading.Lock()

#: An OCR box as (left, top, right, bottom, text).
_Box = tuple[float, float, float, float, str]


def _get_engine() -> Any:
    """The shared RapidOCR engine, created on first call."""
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise ModelUnavailable(
                    "OCR needs the rapidocr-onnxruntime package: install it "
                    "(pip install rapidocr-onnxruntime) or turn OCR off.") from exc
            try:
                _engine = RapidOCR()
            except Exception as exc:
                raise ModelUnavailable(f"The OCR engine could not start ({exc}); "
                                       "reinstall rapidocr-onnxruntime or turn OCR off.") from exc
            # RapidOCR's loggers are set to DEBUG with their own stderr handler; keep them to warnings.
            for name in ("RapidOCR", "OrtInferSession"):
                logging.getLogger(name).setLevel(logging.WARNING)
            logger.info("OCR engine loaded")
        return _engine


def prepare_image(image: Image.Image) -> Image.Image:
    """Convert any Pillow image to upright RGB, compositing transparency onto white.

    A plain ``convert("RGB")`` drops the alpha channel and turns black text on a transparent
    background into black on black.

    Args:
        image: An image in any mode (RGBA, LA, P with transparency, 1, L, CMYK, I;16...).

    Returns:
        An RGB image of the same size.
    """
    # Phone photos are stored sideways with an EXIF orientation tag; OCR needs them upright.
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale (some TIFF scans): scale to 8 bits before colour conversion.
        image = image.convert("I") if image.mode.startswith("I;16") else image
        low, high = cast(tuple[float, float], image.getextrema())
        scale = 255.0 / (high - low) if high > low else 1.0
        image = image.point(lambda v: v * scale - low * scale).convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def ocr_image(image: Image.Image | bytes) -> str:
    """Read the text in an image.

    Args:
        image: A Pillow image or the bytes of an image file (PNG, JPEG, TIFF, ...).

    Returns:
        The recognised lines in reading order, joined by newlines; ``""`` when nothing is found.

    Raises:
        CorruptDocument: The bytes are not a readable image.
        ModelUnavailable: rapidocr-onnxruntime is missing or its engine cannot start.
    """
    if isinstance(image, bytes | bytearray):
        try:
            image = Image.open(io.BytesIO(image))
            image.load()
        except Exception as exc:
            raise CorruptDocument(f"An image could not be decoded ({exc}).") from exc
    rgb = prepare_image(image)
    if min(rgb.size) < 8:  # icons, rules and spacer pixels hold no text
        return ""
    engine = _get_engine()
    with _run_lock:
        result, _elapsed = engine(rgb)
    boxes: list[_Box] = []
    for points, text, _score in result or []:
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
        if text.strip():
            boxes.append((min(xs), min(ys), max(xs), max(ys), text.strip()))
    return order_lines(boxes)


def order_lines(boxes: Sequence[_Box]) -> str:
    """Arrange OCR boxes in reading order: columns left to right, lines top to bottom.

    Args:
        boxes: ``(left, top, right, bottom, text)`` for each recognised box.

    Returns:
        One line per visual line (boxes on a line joined by a space), newline-separated.
    """
    if not boxes:
        return ""
    height = statistics.median(min(b[3] - b[1], b[2] - b[0]) for b in boxes) or 1.0
    lines = _xy_cut(list(boxes), height)
    return "\n".join(" ".join(b[4] for b in line) for line in lines)


def _gaps(boxes: list[_Box], axis: int, min_gap: float) -> list[tuple[float, float]]:
    """Empty bands at least ``min_gap`` wide in the boxes' projection on an axis (0 = x, 1 = y)."""
    spans = sorted((float(b[axis]), float(b[axis + 2])) for b in boxes)
    gaps, reach = [], spans[0][1]
    for low, high in spans[1:]:
        if low - reach >= min_gap:
            gaps.append((reach, low))
        reach = max(reach, high)
    return gaps


def _xy_cut(boxes: list[_Box], height: float) -> list[list[_Box]]:
    """Recursive XY-cut: split at a column gutter, else at wide row gaps, else group into lines."""
    if len(boxes) > 1:
        top = min(b[1] for b in boxes)
        extent = max(b[3] for b in boxes) - top
        x_gaps = _gaps(boxes, 0, 0.25 * height)
        if x_gaps:
            low, high = max(x_gaps, key=lambda g: g[1] - g[0])
            cut = (low + high) / 2
            left = [b for b in boxes if b[2] <= cut]
            right = [b for b in boxes if b[2] > cut]
            # A gutter only if both sides span several lines: a caption beside a column, or the gap
            # between two boxes of one line, is not a gutter.
            tall = max(0.3 * extent, 2 * height)
            if all(max(b[3] for b in s) - min(b[1] for b in s) >= tall for s in (left, right)):
                return _xy_cut(left, height) + _xy_cut(right, height)
        y_gaps = _gaps(boxes, 1, 0.5 * height)
        if y_gaps:
            bands: list[list[_Box]] = [[] for _ in range(len(y_gaps) + 1)]
            for box in boxes:
                bands[sum(box[1] >= g[1] for g in y_gaps)].append(box)
            return [line for band in bands if band for line in _xy_cut(band, height)]
    return _group_lines(boxes)


def _group_lines(boxes: list[_Box]) -> list[list[_Box]]:
    """Group boxes that overlap vertically into lines; lines top to bottom, boxes left to right."""
    lines: list[tuple[float, float, list[_Box]]] = []
    for box in sorted(boxes, key=lambda b: (b[1] + b[3]) / 2):
        if lines:
            top, bottom, members = lines[-1]
            overlap = min(bottom, box[3]) - max(top, box[1])
            if overlap >= 0.5 * min(bottom - top, box[3] - box[1]):
                members.append(box)
                lines[-1] = (min(top, box[1]), max(bottom, box[3]), members)
                continue
        lines.append((box[1], box[3], [box]))
    return [sorted(members, key=lambda b: b[0]) for _, _, members in lines]
