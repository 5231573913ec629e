"""Document loaders: a file becomes ``Section``s (PDF pages, CSV rows, whole texts), chosen by suffix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from kbqa.errors import CorruptDocument, EmptyDocument, KBQAError, UnsupportedFile
from kbqa.loaders.images import IMAGE_SUFFIXES, load_image
from kbqa.loaders.office import load_docx
from kbqa.loaders.pdf import load_pdf
from kbqa.loaders.text import load_csv, load_html, load_text, read_text
from kbqa.loaders.tidy import tidy_text
from kbqa.schema import Section

__all__ = ["SUPPORTED_SUFFIXES", "Loader", "load_document", "loader_for", "read_text", "tidy_text"]

logger = logging.getLogger(__name__)

#: ``loader(path, display name, ocr)``; raises ``KBQAError`` for files it cannot read.
Loader = Callable[[Path, str, bool], list[Section]]

_LOADERS: dict[str, Loader] = {
    ".txt": load_text, ".md": load_text, ".markdown": load_text, ".csv": load_csv, ".tsv": load_csv,
    ".html": load_html, ".htm": load_html, ".xhtml": load_html,
    ".docx": load_docx, ".pdf": load_pdf, **dict.fromkeys(IMAGE_SUFFIXES, load_image),
}
_HINTS = {".doc": "save it as .docx", ".docm": "save it as .docx", ".dotx": "save it as .docx",
          ".xls": "save it as .csv", ".xlsx": "save it as .csv",
          ".ppt": "save it as .pdf", ".pptx": "save it as .pdf", ".rtf": "save it as .docx"}

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)


def loader_for(name: str) -> Loader:
    """The loader for a file of this name.

    Raises:
        UnsupportedFile: No loader reads files with its suffix.
    """
    suffix = Path(name).suffix.lower()
    loader = _LOADERS.get(suffix)
    if loader is None:
        kind = f"'{suffix}' files are" if suffix else "Files without an extension are"
        hint = f" ({_HINTS[suffix]})" if suffix in _HINTS else ""
        raise UnsupportedFile(f"{name}: {kind} not supported. Convert it to one of "
                              f"{', '.join(sorted(SUPPORTED_SUFFIXES))}{hint} and upload it again.")
    return loader


def load_document(path: Path, *, ocr: bool = True, name: str | None = None) -> list[Section]:
    """Load a document as sections of text, picking the loader by the suffix of its name.

    Every failure is a ``KBQAError`` naming the file and what to do; parser exceptions of any kind
    become ``CorruptDocument`` (third-party parsers raise many types on bad input).

    Args:
        path: The file to read.
        ocr: Whether to run OCR on images, scanned PDF pages and pictures inside .docx files.
        name: The file's original name (an upload's temp file may have no or another suffix): its
            suffix picks the loader and it names the file in error messages. Defaults to ``path.name``.

    Returns:
        Non-empty sections: one per PDF page (1-based ``page``), one per CSV row (``extra["line"]``, its line),
        otherwise one for the whole document.

    Raises:
        UnsupportedFile: No loader for the suffix, or an image while OCR is off.
        EmptyDocument: The file holds no text.
        CorruptDocument: The file cannot be parsed.
        EncryptedDocument: The PDF needs a password.
        KBQAError: The file cannot be read at all, or OCR is unavailable.
    """
    name = name or path.name
    loader = loader_for(name)
    suffix = Path(name).suffix.lower()
    try:
        if path.stat().st_size == 0:
            raise EmptyDocument(f"{name} is empty (0 bytes); check that it is the right file.")
        sections = loader(path, name, ocr)
    except KBQAError:
        raise
    except OSError as exc:
        raise KBQAError(f"{name} could not be read ({exc.strerror or exc}); check it and retry.") from exc
    except Exception as exc:
        logger.debug("loading %s failed", name, exc_info=True)  # the message is the user's; the trace, debugging's
        raise CorruptDocument(f"{name} could not be parsed ({type(exc).__name__}: {exc}); it may be damaged "
                              f"or not really a {suffix} file. Re-save it and upload again.") from exc
    sections = [replace(s, text=_typeset(s.text), lead=_typeset(s.lead)) for s in sections if s.text.strip()]
    if not sections:
        raise EmptyDocument(f"{name} contains no text to index; check that it is the right file.")
    return sections


#: Typesetting that is no text: a soft hyphen (shows only where a line breaks: ``Donau\u00addampf``) and
#: ligatures a PDF's text layer keeps (``ﬁ`` for ``fi``), which split a word for keyword search and for reading.
_TYPESET = str.maketrans({"\u00ad": "", "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi",
                          "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"})


def _typeset(text: str) -> str:
    return text.translate(_TYPESET)
