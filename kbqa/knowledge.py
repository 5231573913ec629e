"""Knowledge bases on disk: one folder each under the knowledge root.

```
<root>/<slug>/kb.json        display name, embedding model, created
<root>/<slug>/manifest.json  generation, files {name: sha256, chunks, pages, size, added_at}, pending
<root>/<slug>/content/       the original files, under their sanitised names
<root>/<slug>/bm25/          the keyword index (kbqa.bm25)
<root>/.chroma/              the Chroma database, one collection per knowledge base (named by slug)
```

The manifest is the source of truth. Chunks are written to the vector store before the manifest names
their file, and the sha256 of a file being written or deleted is recorded in ``pending`` first, so a
crash at any point leaves, at worst, orphan chunks that ``pending`` names and ``kbqa.upkeep.recover``
removes. An original file's copy is staged as ``content/.NAME.partial`` and renamed into place after the manifest
names it; after a crash, ``settle_content`` finishes or drops staged copies and removes the copies of
files the manifest no longer names. A new knowledge base holds an ``UNFINISHED`` marker until its first
batch ends, so one whose first ingest was killed before any file got in is removed at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbqa.errors import (
    ConfigError,
    DocumentNotFound,
    IncompatibleIndex,
    IndexDamaged,
    InvalidName,
    KBQAError,
    KnowledgeBaseNotFound,
)
from kbqa.fileio import file_sha256, write_json_atomic
from kbqa.models import model_identity
from kbqa.names import check_kb_name, slugify
from kbqa.rootlock import announce_root, hold_root, release_root
from kbqa.schema import DocumentInfo

log = logging.getLogger(__name__)
_BURIED = ".deleted-"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """What a knowledge base holds. ``generation`` grows with every committed change."""

    generation: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)

    def name_of(self, sha256: str) -> str | None:
        """The file name holding this content, if any."""
        return next((n for n, f in self.files.items() if f["sha256"] == sha256), None)


class KnowledgeBase:
    """One knowledge base folder. Writers hold ``lock``; the manifest is rewritten atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.slug = folder.name
        try:
            info = json.loads((folder / "kb.json").read_text(encoding="utf-8"))
            self.name: str = info["name"]
            self.manifest = self._read_manifest()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # edited or cut short outside kbqa
            raise IndexDamaged(
                f"The knowledge base in {folder} is damaged ({type(exc).__name__}: {exc}): restore its kb.json and "
                f"manifest.json from a backup, or copy its files out of {folder / 'content'}, delete the knowledge "
                "base (deleting it still works) and add them again.") from None
        self.embedding: str = info.get("embedding", "")
        self.created: str = info.get("created", "")
        for leftover in folder.glob(".manifest.json.*"):  # of a write a crash cut short (see write_json_atomic)
            leftover.unlink(missing_ok=True)
        self.lock = threading.RLock()
        #: Set (under ``lock``) when the knowledge base is deleted; writers still holding it stop.
        self.deleted = False

    def stage_content(self, src: Path, name: str) -> None:
        """Copy an original file beside its place in ``content/``; ``place_content`` puts it there."""
        self.content_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self._staged(name))

    def place_content(self, name: str) -> None:
        """Rename a staged copy into place (once the manifest names the file)."""
        os.replace(self._staged(name), self.content_dir / name)

    def _staged(self, name: str) -> Path:
        return self.content_dir / f".{name}.partial"

    def settle_content(self) -> None:
        """After a crash: put the staged copies of committed files in place; remove those of files the
        manifest does not name (a change that did not commit, a deletion that did)."""
        if not self.content_dir.is_dir():
            return
        for path in sorted(self.content_dir.iterdir(), key=lambda p: p.name.startswith(".")):
            if path.name.startswith(".") and path.name.endswith(".partial"):
                name = path.name[1:-len(".partial")]
                entry = self.manifest.files.get(name)
                if entry is not None and file_sha256(path) == entry["sha256"]:
                    self.place_content(name)
                    continue
            elif path.name in self.manifest.files:
                continue
            path.unlink(missing_ok=True)

    @property
    def content_dir(self) -> Path:
        """Where the original files are kept."""
        return self.folder / "content"

    @property
    def bm25_dir(self) -> Path:
        """Where the keyword index is kept."""
        return self.folder / "bm25"

    def _read_manifest(self) -> Manifest:
        path = self.folder / "manifest.json"
        if not path.is_file():
            return Manifest()
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(generation=data.get("generation", 0), files=data.get("files", {}),
                        pending=data.get("pending", []))

    def save_manifest(self) -> None:
        """Persist the manifest (atomic)."""
        m = self.manifest
        write_json_atomic(self.folder / "manifest.json",
                          {"generation": m.generation, "files": m.files, "pending": m.pending})

    def set_embedding(self, spec: str) -> None:
        """Record the embedding model the first chunks were written with."""
        self.embedding = spec
        write_json_atomic(self.folder / "kb.json",
                          {"name": self.name, "embedding": spec, "created": self.created})

    @contextmanager
    def pending(self, *shas: str) -> Iterator[None]:
        """Mark content as in flight for the duration of a store change (see module docstring)."""
        self.manifest.pending = sorted(set(self.manifest.pending) | set(shas))
        self.save_manifest()
        yield
        self.manifest.pending = [s for s in self.manifest.pending if s not in shas]
        self.save_manifest()

    def commit_file(self, name: str, sha256: str, chunks: int, pages: int | None, size: int,
                    origin: str | None = None) -> None:
        """Name a file whose chunks are fully written."""
        self.commit_files([(name, sha256, chunks, pages, size, origin)])

    def commit_files(self, files: list[tuple[str, str, int, int | None, int, str | None]]) -> None:
        """Name files whose chunks are fully written, in one write.

        Each is ``(name, sha256, chunks, pages, size, origin)``; ``origin`` is the path a local file was added
        from (None for uploads), so replacing it with a same-named file from elsewhere can be pointed out.
        """
        for name, sha256, chunks, pages, size, origin in files:
            self.manifest.files[name] = {"sha256": sha256, "chunks": chunks, "pages": pages, "size": size,
                                         "added_at": _now(), "origin": origin}
        self.manifest.generation += 1
        self.save_manifest()

    def forget_file(self, name: str) -> dict[str, Any]:
        """Drop a file from the manifest (before its chunks are deleted) and return its entry."""
        entry = self.manifest.files.pop(name, None)
        if entry is None:
            raise DocumentNotFound(f"Knowledge base '{self.name}' has no file '{name}'.")
        self.manifest.generation += 1
        self.save_manifest()
        return entry

    def documents(self) -> list[DocumentInfo]:
        """The files it holds, by name."""
        return [DocumentInfo(name=n, sha256=f["sha256"], chunks=f["chunks"], pages=f.get("pages"),
                             size=f.get("size", 0), added_at=f.get("added_at", ""))
                for n, f in sorted(self.manifest.files.items())]

    def check_embedding(self, embedder: str, *, adding: bool, load: Callable[[], object] | None = None) -> None:
        """Refuse an embedding model whose vectors cannot be compared with the ones stored.

        ``embedder`` is a model spec, ``#int8`` marking chunks encoded by the int8 copy of the model. Questions
        are always encoded by the float model, so searching only needs the same model; adding chunks needs the
        same encoder too, so that one knowledge base does not mix two.

        ``load`` loads the configured model: called before a mismatch is reported, so that a model that cannot
        load (a mistyped path) is the error the user sees, not advice to re-create the knowledge base.

        Raises:
            IncompatibleIndex: the knowledge base was built with another model (or encoder, when adding).
        """
        if not self.embedding or self.embedding == embedder:
            return
        if load is not None:
            load()
        (built, _, built_mark), (now, _, now_mark) = self.embedding.partition("#"), embedder.partition("#")
        # A path recorded as typed (before paths were recorded resolved) is the same model as its resolved form.
        same = built == now or model_identity(built) == model_identity(now)
        if same and (built_mark == now_mark or not adding):
            return
        if same:
            want = "int8" if self.embedding.endswith("#int8") else "none"
            raise IncompatibleIndex(
                f"Knowledge base '{self.name}' was built with embedding.quantize = \"{want}\", which is not the "
                f"setting now: set embedding.quantize back to \"{want}\" to add files to it, or re-create it.")
        raise IncompatibleIndex(
            f"Knowledge base '{self.name}' was built with embedding model '{built}', but embedding.model is "
            f"'{now}', and vectors of different models cannot be compared. Set embedding.model back to "
            f"'{built}', or re-create the knowledge base (delete it and add its files again).")

    @property
    def chunk_count(self) -> int:
        """Chunks of all committed files."""
        return sum(f["chunks"] for f in self.manifest.files.values())


#: In a new knowledge base's folder until its first batch of files ends (see ``KBQAService.add_files``).
UNFINISHED = ".first-batch-unfinished"


def _half_created(folder: Path) -> bool:
    """Whether a folder without ``kb.json`` holds only what an interrupted ``create`` leaves (or nothing)."""
    return all(p.name == UNFINISHED or p.name.startswith(".kb.json.") for p in folder.iterdir())


class KnowledgeRoot:
    """The folder of all knowledge bases."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        blocking = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ConfigError(f"The knowledge root {self.root} cannot be a folder here: {blocking} is a file; set "
                              "paths.knowledge_root (KBQA_PATHS__KNOWLEDGE_ROOT) to a folder you can write.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"The knowledge root {self.root} cannot be a folder here ({exc.strerror or exc}); set "
                              "paths.knowledge_root (KBQA_PATHS__KNOWLEDGE_ROOT) to a folder you can write.") from None
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()
        key = self.root.resolve()
        hold_root(key)
        weakref.finalize(self, release_root, key)

    def announce(self, url: str) -> None:
        """Record where this process serves the knowledge root, for the message another process gets."""
        announce_root(self.root.resolve(), url)

    @property
    def chroma_dir(self) -> Path:
        """The Chroma database folder."""
        return self.root / ".chroma"

    def list(self) -> list[KnowledgeBase]:
        """All knowledge bases, by display name."""
        kbs = []
        for p in self.root.iterdir():
            if (p / "kb.json").is_file() and not p.name.startswith(_BURIED):
                try:
                    kbs.append(self.open(p.name))
                except KBQAError as exc:  # one damaged knowledge base must not hide the others
                    log.warning("%s", exc)
        return sorted(kbs, key=lambda kb: kb.name.lower())

    def folder_for(self, name: str) -> Path | None:
        """The folder of a knowledge base given its display name or its slug."""
        for candidate in (slugify(name.strip()), name.strip()):
            if (not candidate or "/" in candidate or "\\" in candidate or len(candidate.encode("utf-8")) > 255
                    or candidate.startswith(_BURIED)):
                continue
            try:
                if (self.root / candidate / "kb.json").is_file():
                    return self.root / candidate
            except OSError:  # a name the file system cannot hold is no folder of ours
                continue
        return None

    def open(self, name: str) -> KnowledgeBase:
        """An existing knowledge base (cached per process).

        Raises:
            KnowledgeBaseNotFound: no such name or slug.
        """
        folder = self.folder_for(name)
        if folder is None:
            known = ", ".join(kb.name for kb in self.list()) or "none yet"
            raise KnowledgeBaseNotFound(
                f"No knowledge base named '{name}' (existing: {known}); one is created by adding files to it."
                if name.strip() else
                f"A knowledge base name is needed (existing: {known}).")
        with self._lock:
            if folder.name not in self._open:
                self._open[folder.name] = KnowledgeBase(folder)
            return self._open[folder.name]

    def create(self, name: str, first_batch: bool = False) -> KnowledgeBase:
        """Create a knowledge base, or open it when it exists.

        ``first_batch``: it is created to receive a batch of files; it is marked ``UNFINISHED`` until the
        caller's batch ends (``finish_first_batch``), so that a crash before then does not leave it empty.
        """
        name = check_kb_name(name)
        folder = self.root / slugify(name)
        if not (folder / "kb.json").is_file():  # (checked before the lock: list() opens, which takes it)
            twin = next((kb.name for kb in self.list() if kb.name.casefold() == name.casefold()), None)
            if twin is not None:  # "Manuals" beside "manuals": almost surely a slip, not a second one
                raise InvalidName(f"A knowledge base named '{twin}' exists: use that name (names differ in "
                                  "letter case only here), or choose one that differs by more than case.")
        with self._lock:  # two uploads creating the same name at once: one creates, the other opens
            if not (folder / "kb.json").is_file():
                if folder.exists():  # a creation a crash cut short is no reason to refuse the name
                    if not _half_created(folder):
                        raise KBQAError(f"{folder} exists but is not a knowledge base; move it away and try again.")
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                if first_batch:
                    (folder / UNFINISHED).touch()
                write_json_atomic(folder / "kb.json", {"name": name, "embedding": "", "created": _now()})
        return self.open(name)

    @staticmethod
    def finish_first_batch(kb: KnowledgeBase) -> None:
        """Clear the ``UNFINISHED`` mark of a knowledge base created with ``first_batch``."""
        (kb.folder / UNFINISHED).unlink(missing_ok=True)

    def unfinished(self) -> tuple[KnowledgeBase, ...]:
        """Knowledge bases whose first batch of files did not end (the process was killed).

        Folders a crash left in the middle of ``create`` (no ``kb.json`` yet) are removed on the way.
        """
        found = []
        for marker in sorted(self.root.glob(f"*/{UNFINISHED}")):
            folder = marker.parent
            if folder.name.startswith("."):
                continue
            if (folder / "kb.json").is_file():
                try:
                    found.append(self.open(folder.name))
                except KBQAError as exc:  # a damaged one is left to say so when it is used
                    log.warning("%s", exc)
            elif _half_created(folder):
                shutil.rmtree(folder, ignore_errors=True)
        return tuple(found)

    def bury_damaged(self, name: str) -> tuple[str, Path] | None:
        """``bury`` a knowledge base that cannot be opened (its ``kb.json`` or manifest is damaged), by name.

        Returns its slug and renamed folder, or None when ``name`` names no knowledge-base folder.
        """
        folder = self.folder_for(name)
        return None if folder is None else (folder.name, self._bury_folder(folder))

    def bury(self, kb: KnowledgeBase) -> Path:
        """Take a knowledge base out of the root in one step (a rename), before its parts are deleted.

        Returns the renamed folder: the caller drops the vector collection, then ``shutil.rmtree`` s it. A
        crash in between leaves a ``.deleted-<slug>`` folder that ``buried`` lists at the next start, never a
        knowledge base that lists files whose vectors are gone.
        """
        kb.deleted = True
        return self._bury_folder(kb.folder)

    def _bury_folder(self, folder: Path) -> Path:
        with self._lock:
            self._open.pop(folder.name, None)
        tomb = self.root / f"{_BURIED}{folder.name}"
        if tomb.exists():  # an earlier deletion of the same name that did not finish
            shutil.rmtree(tomb)
        folder.rename(tomb)
        return tomb

    def buried(self) -> tuple[tuple[str, Path], ...]:
        """``(slug, folder)`` of deletions a crash interrupted."""
        return tuple((p.name[len(_BURIED):], p) for p in sorted(self.root.glob(f"{_BURIED}*")) if p.is_dir())
