"""Half-written output folders: their temporary names, and removal of those abandoned by dead processes."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def partial_folder(dst: Path) -> Path:
    """A fresh temporary name beside ``dst``, holding this process id (see ``remove_abandoned``)."""
    return dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_abandoned(dst: Path) -> None:
    """Delete the partial folders of ``dst`` left by processes that no longer run (a killed conversion)."""
    for partial in dst.parent.glob(f".{dst.name}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 2)[-2]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass
