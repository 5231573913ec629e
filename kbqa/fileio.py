"""Small file operations shared by the knowledge bases and the model caches.

Hashing, atomic JSON writes, and the temporary folders that model conversions are written into before
they are renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def partial_folder(dst: Path) -> Path:
    """A fresh temporary name beside ``dst``, holding this process id (see ``remove_abandoned``)."""
    return dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_abandoned(dst: Path) -> None:
    """Delete the partial folders of ``dst`` left by processes that no longer run (a killed conversion).

    ``dst``'s name may be a glob pattern (``chatglm2-6b-glm-*``) to clear those of several destinations.
    """
    for partial in dst.parent.glob(f".{dst.name}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 2)[-2]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


@contextmanager
def staged_folder(dst: Path, finished: Callable[[Path], bool]) -> Iterator[Path]:
    """Write a folder under a temporary name beside ``dst``, renamed to ``dst`` only when the block succeeds.

    Yields the new, empty partial folder. Partial folders of dead processes are removed first. If ``dst``
    appears meanwhile and ``finished(dst)`` says another process completed it, that one is kept. The partial
    folder never outlives the block, whether it succeeds, fails or is interrupted.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(dst)
    tmp = partial_folder(dst)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, dst)
        except OSError:
            if not finished(dst):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
