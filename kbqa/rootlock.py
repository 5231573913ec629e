"""One process per knowledge root: an advisory lock on ``<root>/.lock`` naming its holder (and its address).

Chroma's embedded database and the per-process caches of manifests and keyword indexes are safe in one
process only: a second process writing the same root (say ``kbqa ingest`` while ``kbqa serve`` runs) would
leave each with a stale view and chunks that no file names.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from kbqa.errors import ConfigError, KnowledgeRootInUse

try:
    import fcntl
except ImportError:  # not on Windows: there, running one kbqa process per knowledge root is up to the user
    fcntl = None  # type: ignore[assignment]

#: Knowledge roots this process holds: resolved folder -> [lock file descriptor, holders].
_HELD: dict[Path, list[int]] = {}
_HELD_LOCK = threading.Lock()


def hold_root(root: Path) -> None:
    """Take the knowledge root for this process (again, for each holder), or explain which process has it.

    Raises:
        KnowledgeRootInUse: another process holds it.
        ConfigError: the root cannot be written.
    """
    if fcntl is None:
        return
    with _HELD_LOCK:
        if root in _HELD:
            _HELD[root][1] += 1
            return
        try:
            fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"The knowledge root {root} cannot be written ({exc.strerror}); set "
                              "paths.knowledge_root (KBQA_PATHS__KNOWLEDGE_ROOT) to a folder you can write, or "
                              "fix its permissions.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lines = os.read(fd, 1000).decode("utf-8", "replace").splitlines()
            os.close(fd)
            holder = lines[0].strip() if lines and lines[0].strip() else "another process"
            url = lines[1].strip() if len(lines) > 1 and lines[1].startswith("http") else ""
            if url:  # a server: work through it
                then = (f"Use that process instead (the web app at {url}, or its HTTP API, e.g. "
                        f"`curl -F files=@report.pdf {url}kb/NAME/files`), stop it first")
            elif " serve" in holder or "app.py" in holder:  # a server still loading its models
                then = "Use that process instead (its web app or HTTP API), stop it first"
            else:  # a command (an ingest, an eval): it ends by itself
                then = "Wait for that command to finish (or stop it)"
            raise KnowledgeRootInUse(
                f"The knowledge root {root} is in use by another kbqa process ({holder}), and its database works "
                f"from one process at a time. {then}, or set paths.knowledge_root to another folder.") from None
        os.ftruncate(fd, 0)
        command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200] if sys.argv else "python"
        os.write(fd, f"pid {os.getpid()}: {command}".encode())
        _HELD[root] = [fd, 1]


def release_root(root: Path) -> None:
    """Let go of one hold on ``root``; the lock is released with the last."""
    with _HELD_LOCK:
        held = _HELD.get(root)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            os.close(held[0])  # closing the descriptor releases the lock
            del _HELD[root]


def announce_root(root: Path, url: str) -> None:
    """Record where this process serves ``root``, for the message another process gets."""
    held = _HELD.get(root)
    if held is not None:
        os.write(held[0], f"\n{url}".encode())
