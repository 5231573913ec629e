"""Names: knowledge-base names to folder slugs, uploaded file names to safe base names."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from kbqa.errors import InvalidName

_SLUG_OK = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")
_RESERVED = {"con", "prn", "aux", "nul"}
_MAX_NAME_BYTES = 240


def slugify(name: str) -> str:
    """A Chroma-safe, file-system-safe id for a knowledge-base name in any language.

    Lower-case ASCII names that are already safe are kept; others become their ASCII part plus a short
    hash of the full name, so ``法律 文件`` and ``法律-文件`` get different slugs.
    """
    name = name.strip()
    if _SLUG_OK.fullmatch(name) and name not in _RESERVED:
        return name
    ascii_part = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", name).lower()).strip("-")[:40]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{ascii_part or 'kb'}-{digest}"


def check_kb_name(name: str) -> str:
    """A knowledge-base name, trimmed; raises InvalidName for empty or control-character names."""
    name = name.strip()
    if not name:
        raise InvalidName("A knowledge base needs a name.")
    if len(name) > 100 or any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidName(f"'{name[:40]}' cannot be a knowledge-base name: use up to 100 printable characters.")
    if "/" in name or "\\" in name:
        raise InvalidName(f"'{name}' cannot be a knowledge-base name: leave out / and \\ (they cannot appear "
                          "in a web address).")
    if not name.strip("."):
        raise InvalidName(f"'{name}' cannot be a knowledge-base name: it needs a character other than a dot "
                          "(web addresses read . and .. as folders).")
    return name


def safe_file_name(name: str) -> str:
    """The base name of an uploaded file, stripped of any path, so ``../../etc/passwd`` -> ``passwd``.

    Raises:
        InvalidName: nothing usable is left (empty, ``.``, ``..``, only control characters).
    """
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if not unicodedata.category(c).startswith("C"))
    base = base.strip()
    if not base or set(base) <= {"."}:
        raise InvalidName(f"'{name}' is not a usable file name: give the file a name such as report.pdf.")
    if len(base.encode("utf-8")) > _MAX_NAME_BYTES:  # the file system's 255, less the ".NAME.partial" of a copy
        stem, dot, suffix = base.rpartition(".")
        base = stem.encode("utf-8")[:200].decode("utf-8", "ignore") + dot + suffix
    return base
