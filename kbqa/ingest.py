"""The ingest pipeline: check, hash, load, split, embed, then commit each file atomically.

Chunks of several small files are embedded together (the embedder sorts a batch by length, so
bigger batches waste less padding). A file is committed only after all of its chunks are in the
vector store and the keyword index; see ``kbqa.knowledge`` for how a crash is recovered.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbqa.embeddings import Embedder
from kbqa.errors import DiskFull, EmptyDocument, FileTooLarge, InvalidName, KBQAError
from kbqa.fileio import file_sha256
from kbqa.knowledge import KnowledgeBase
from kbqa.loaders import loader_for
from kbqa.names import safe_file_name
from kbqa.retrieval import KeywordIndexes
from kbqa.schema import Chunk, FileResult, IngestReport, Section
from kbqa.splitter import Splitter
from kbqa.store import ChromaStore
from kbqa.upkeep import delete_document, recover

log = logging.getLogger(__name__)

#: ``progress(fraction_done, message)``.
ProgressFn = Callable[[float, str], None]
Loader = Callable[[Path, str], list[Section]]

#: Chunks gathered from several files before one embedding call.
EMBED_GROUP = 256
#: Chunks per embedding call within a group: the progress bar moves after each.
EMBED_SLICE = 32
#: Free disk space kept under the knowledge root beyond what a commit needs: a database write that a full
#: disk cuts short can leave Chroma's index unreadable, so files are refused before that point.
MIN_FREE_BYTES = 64 * 2**20
_DELETED = ("the knowledge base '{kb}' was deleted while files were being added to it; nothing more was "
            "added (add the files again to re-create it)")


@dataclass
class _Prepared:
    position: int
    path: Path
    name: str
    sha256: str
    size: int
    chunks: list[Chunk]
    pages: int | None
    replaces: str | None
    #: The local path it was added from (None for an upload).
    origin: str | None = None
    #: Set at commit when another writer got there first: why nothing was added.
    skipped: str | None = None
    #: Set at commit when it replaces a same-named file added from another path.
    note: str = ""
    #: Its name's old version was removed just before, its content going to another name: "updated".
    renewed: bool = False


@dataclass
class _Twin:
    """A file with the same bytes as an earlier file of the batch: indexed only if that one is not."""

    position: int
    path: Path
    name: str
    sha256: str
    size: int


@dataclass
class _Moving(_Twin):
    """A file whose bytes the knowledge base holds under another name that this batch gives new content (an
    old version kept under a new name, two files swapping contents): added once that name has changed."""


class Ingestor:
    """Adds files to a knowledge base.

    Args:
        store: Vector store.
        keywords: BM25 indexes, kept in step with the store.
        embedder: Encodes chunks.
        splitter: Cuts documents into chunks.
        load: ``load(path, display_name) -> sections``; raises KBQAError for bad files.
        max_bytes: Larger files are refused.
    """

    def __init__(self, store: ChromaStore, keywords: KeywordIndexes, embedder: Embedder, splitter: Splitter,
                 load: Loader, max_bytes: int) -> None:
        self.store = store
        self.keywords = keywords
        self.embedder = embedder
        self.splitter = splitter
        self.load = load
        self.max_bytes = max_bytes

    def ingest(self, kb: KnowledgeBase, files: Sequence[tuple[Path, str]],
               progress: ProgressFn | None = None, local: Sequence[bool] | None = None,
               on_file: Callable[[FileResult], None] | None = None) -> IngestReport:
        """Ingest ``(path, display name)`` pairs; one bad file never stops the others.

        ``local[i]``: file ``i`` was added from a path on this machine (recorded as its origin, so a later
        file of that name from elsewhere is noted); uploads (False) come from temporary folders. None: all local.
        ``on_file(result)``: called once per file, in input order, as soon as its outcome and those of the
        files before it are settled, so a long batch can report each file as it goes.
        """
        start = time.perf_counter()
        kb.check_embedding(self.embedder.name, adding=True, load=lambda: self.embedder.dim)
        results = _Results(len(files), on_file)
        group: list[_Prepared] = []
        seen: dict[str, tuple[str, int]] = {}  # sha256 -> (name, position) of the batch's file with those bytes
        twins: list[_Twin] = []
        batch: dict[str, tuple[str, str]] = {}  # name -> (sha256, the path it came from) in this batch
        moving: list[_Moving] = []
        paths = _paths_by_name(files)
        report = _monotone(progress, len(files)) if progress else None
        for position, (path, given_name) in enumerate(files):
            if report:  # files read but not yet embedded are not done: the bar stays at the first of them
                report(group[0].position if group else position, f"reading {given_name}")
            is_local = local is None or local[position]
            # A failure names a local file as the user typed it; an upload by its name (the client's
            # "../../etc/passwd" is "passwd"), as the file would have been held.
            shown = str(given_name) if is_local else upload_name(str(given_name))
            if kb.deleted:
                results[position] = FileResult(shown, "failed", reason=_DELETED.format(kb=kb.name))
                continue
            try:
                prepared = self._prepare(kb, position, Path(path), given_name, seen, batch, paths, local=is_local)
            except Exception as exc:  # a loader bug must not abort the batch either
                if exc is getattr(self.embedder, "error", None):  # the model cannot load: one error, not one per file
                    raise
                results[position] = _failed(shown, Path(path), exc)
                continue
            if isinstance(prepared, FileResult):
                results[position] = prepared
                continue
            if isinstance(prepared, _Moving):
                moving.append(prepared)
                continue
            if isinstance(prepared, _Twin):
                twins.append(prepared)
                continue
            group.append(prepared)
            if sum(len(p.chunks) for p in group) >= EMBED_GROUP:
                self._flush(kb, group, results, report)
                group = []
        self._flush(kb, group, results, report)
        self._settle_twins(kb, twins, seen, results, report)
        self._settle_moves(kb, moving, seen, results, report)
        try:
            with kb.lock:
                if not kb.deleted:
                    self.keywords.get(kb).save()
        except Exception:  # the saved index then lags the manifest and is rebuilt from the store on open
            log.exception("could not save the keyword index of %s", kb.name)
        if report:
            report(len(files), "done")
        return IngestReport(kb=kb.name, files=[r for r in results if r is not None],
                            seconds=time.perf_counter() - start)

    def _prepare(self, kb: KnowledgeBase, position: int, path: Path, given_name: str,
                 seen: dict[str, tuple[str, int]], batch: dict[str, tuple[str, str]],
                 paths: dict[str, Path] | None = None, local: bool = True) -> _Prepared | _Twin | FileResult:
        name = safe_file_name(given_name)
        if not path.is_file():
            raise KBQAError(f"{given_name}: no such file (check the path).")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise file_too_large(name, size, self.max_bytes)
        loader_for(name)  # a format kbqa cannot read is refused, even with bytes it already holds
        try:
            sha = file_sha256(path)
        except OSError as exc:
            raise KBQAError(f"{given_name} cannot be read ({exc.strerror or exc}): check its permissions.") from exc
        if name in batch:  # one knowledge base holds one file per name
            if batch[name][0] == sha:
                return FileResult(name, "unchanged", reason="listed earlier in this batch")
            held = f" ({batch[name][1]})" if batch[name][1] != name else ""  # an upload has only its name
            raise KBQAError(f"another file named {name}{held} is in this batch, and a knowledge base "
                            f"holds one file per name: rename one of them and add it again.")
        # Where it came from, for a later same-named file's message: the path of a local file, the name given
        # to an upload (never the server's temporary folder).
        batch[name] = (sha, str(path) if local and str(given_name) == name else str(given_name))
        existing = kb.manifest.files.get(name)
        if existing and existing["sha256"] == sha:
            return FileResult(name, "unchanged")
        same = kb.manifest.name_of(sha)
        if same and same != name:
            if _changes(same, sha, paths or {}):  # its holder gets new content in this batch: decided after it
                return _Moving(position, path, name, sha, size)
            return self._same_as(kb, name, sha, same)
        if sha in seen:  # decided once the earlier file is: it may yet fail (an unknown suffix...)
            return _Twin(position, path, name, sha, size)
        seen[sha] = (name, position)
        prepared = self._load(position, path, name, sha, size, existing)
        prepared.origin = str(path.resolve()) if local and path.name == str(given_name) else None
        return prepared

    def _same_as(self, kb: KnowledgeBase, name: str, sha: str, same: str) -> FileResult:
        """The result for a file whose bytes are indexed under another name (``same``)."""
        existing = kb.manifest.files.get(name)
        if existing and existing["sha256"] != sha:  # it now holds another file's content, indexed once
            delete_document(kb, self.store, self.keywords, name)
            return FileResult(name, "updated", reason=f"now the same content as {same}, which is indexed "
                                                      f"once; the old version of {name} was removed")
        return FileResult(name, "unchanged", reason=_held_by(same))

    def _load(self, position: int, path: Path, name: str, sha: str, size: int,
              existing: dict[str, Any] | None) -> _Prepared:
        sections = self.load(path, name)
        chunks = self.splitter.split(sections, source=name, sha256=sha)
        if not chunks:
            raise EmptyDocument(f"{name} holds no text to index.")
        pages = max((s.page for s in sections if s.page is not None), default=None)
        return _Prepared(position, path, name, sha, size, chunks, pages,
                         replaces=existing["sha256"] if existing else None)

    def _settle_twins(self, kb: KnowledgeBase, twins: list[_Twin], seen: dict[str, tuple[str, int]],
                      results: list[FileResult | None], report: Callable[[float, str], None] | None) -> None:
        """Each twin is unchanged when its earlier copy got in; where that failed, the next copy is tried."""
        while twins:
            waiting, group = [], []
            for twin in twins:
                first_name, first = seen[twin.sha256]
                outcome = results[first]
                if outcome is None:  # a copy tried in this pass, not committed yet
                    waiting.append(twin)
                elif outcome.status != "failed":
                    results[twin.position] = self._same_as(kb, twin.name, twin.sha256, first_name)
                elif kb.deleted:
                    results[twin.position] = FileResult(twin.name, "failed", reason=_DELETED.format(kb=kb.name))
                else:
                    seen[twin.sha256] = (twin.name, twin.position)
                    try:
                        group.append(self._load(twin.position, twin.path, twin.name, twin.sha256, twin.size,
                                                kb.manifest.files.get(twin.name)))
                    except Exception as exc:
                        results[twin.position] = _failed(twin.name, twin.path, exc)
            self._flush(kb, group, results, report)
            twins = waiting

    def _settle_moves(self, kb: KnowledgeBase, moving: list[_Moving], seen: dict[str, tuple[str, int]],
                      results: list[FileResult | None], report: Callable[[float, str], None] | None) -> None:
        """Files whose bytes were held under a name the batch has now changed are added (encoded anew: their
        chunks were removed with that name's old version). A file whose own old version another of them takes
        is removed first, as is each name of a swap, so no content is dropped as it changes hands; where the
        holder's change failed, the file is the same as that holder, as before."""
        if not moving:
            return
        wanted = {m.sha256 for m in moving}
        freed: set[int] = set()
        for m in moving:
            old = kb.manifest.files.get(m.name)
            if old and old["sha256"] != m.sha256 and old["sha256"] in wanted and not kb.deleted:
                try:
                    delete_document(kb, self.store, self.keywords, m.name)
                    freed.add(m.position)
                except Exception as exc:
                    log.exception("could not remove the old version of %s", m.name)
                    results[m.position] = _failed(m.name, m.path, exc)
        group: list[_Prepared] = []
        twins: list[_Twin] = []
        for m in moving:
            if results[m.position] is not None:
                continue
            holder = kb.manifest.name_of(m.sha256)
            if kb.deleted:
                results[m.position] = FileResult(m.name, "failed", reason=_DELETED.format(kb=kb.name))
            elif holder and holder != m.name:  # the holder's new version failed: it still holds these bytes
                results[m.position] = self._same_as(kb, m.name, m.sha256, holder)
            elif any(p.sha256 == m.sha256 for p in group):  # a second copy: settled with the first
                twins.append(_Twin(m.position, m.path, m.name, m.sha256, m.size))
            else:
                seen[m.sha256] = (m.name, m.position)
                try:
                    group.append(self._load(m.position, m.path, m.name, m.sha256, m.size,
                                            kb.manifest.files.get(m.name)))
                    group[-1].renewed = m.position in freed  # removed above only to be added again
                except Exception as exc:
                    results[m.position] = _failed(m.name, m.path, exc)
        self._flush(kb, group, results, report)
        self._settle_twins(kb, twins, seen, results, report)

    def _flush(self, kb: KnowledgeBase, group: list[_Prepared], results: list[FileResult | None],
               report: Callable[[float, str], None] | None) -> None:
        if not group:
            return
        texts = [c.indexed for p in group for c in p.chunks]  # with their document's title
        first, last = group[0].position, group[-1].position + 1
        # The counts are this group's, the bar the whole batch's: say whose chunks they are.
        whose = group[0].name if len(group) == 1 else f"{group[0].name} and {len(group) - 1} more files"

        def embedded(done: int) -> None:
            if report:  # the bar moves while a big file is embedded, not once per file
                report(first + (last - first) * 0.95 * done / len(texts),
                       f"embedding chunks of {whose}: {done} of {len(texts)}" + (
                           "; the bar counts all files" if len(results) > 1 else ""))

        try:
            vectors = self._embed(texts, embedded)
        except Exception as exc:
            log.exception("embedding failed")
            for p in group:
                results[p.position] = FileResult(p.name, "failed", reason=f"embedding failed: {exc}")
            return
        try:
            self.commit(kb, group, vectors)
            done: list[tuple[_Prepared, Exception | None]] = [(p, None) for p in group]
        except Exception as exc:  # e.g. disk full: retry file by file so one failure stays one failure
            if kb.deleted:  # the user deleted the knowledge base meanwhile: no retry, no traceback
                log.info("%s was deleted while files were being added", kb.name)
                for p in group:
                    results[p.position] = FileResult(p.name, "failed", reason=_DELETED.format(kb=kb.name))
                return
            # A KBQAError (a full disk) says what to do in each file's reason: no traceback on the console.
            expected = isinstance(exc, KBQAError)
            log.log(logging.INFO if expected else logging.WARNING, "group commit failed (%s); committing file by "
                    "file", exc)
            done = []
            for p, part in zip(group, _per_file(group, vectors), strict=True):
                try:
                    self.commit(kb, [p], part)
                    done.append((p, None))
                except Exception as exc_one:
                    if isinstance(exc_one, KBQAError):
                        log.info("could not index %s: %s", p.name, exc_one)
                    else:
                        log.exception("could not index %s", p.name)
                    done.append((p, exc_one))
        for p, error in done:
            if error:
                reason = str(error) if isinstance(error, KBQAError) else f"could not index: {error}"
                results[p.position] = FileResult(p.name, "failed", reason=reason)
            elif p.skipped:
                results[p.position] = FileResult(p.name, "unchanged", reason=p.skipped)
            else:
                results[p.position] = FileResult(p.name, "updated" if p.replaces or p.renewed else "added",
                                                 len(p.chunks), reason=p.note)
        if report:
            report(group[-1].position + 1, f"indexed {group[-1].name}")

    def _embed(self, texts: list[str], embedded: Callable[[int], None]) -> np.ndarray:
        """Vectors of ``texts``, encoded shortest first in slices of ``EMBED_SLICE`` (progress after each).

        Sorting the whole group by length keeps the embedder's batches as free of padding as one call would.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        embedded(0)
        parts = []
        for start in range(0, len(order), EMBED_SLICE):
            rows = order[start:start + EMBED_SLICE]
            parts.append(self.embedder.embed_documents([texts[i] for i in rows]))
            embedded(start + len(rows))
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return vectors

    def commit(self, kb: KnowledgeBase, group: list[_Prepared], vectors: np.ndarray) -> None:
        """Write files' chunks to the store and keyword index, then name them in the manifest.

        The keyword index is saved at the end of the batch; if the process dies before that, its
        generation lags the manifest's and it is rebuilt from the store. If anything fails midway, the
        partial chunks are removed before the error propagates.
        """
        with kb.lock:
            if kb.deleted:
                raise KBQAError(_DELETED.format(kb=kb.name))
            # Decide against the manifest as it is now: another upload may have committed meanwhile.
            fresh = []
            for p, part in zip(group, _per_file(group, vectors), strict=True):
                current = kb.manifest.files.get(p.name)
                holder = kb.manifest.name_of(p.sha256)
                p.skipped = None
                if current and current["sha256"] == p.sha256:
                    p.skipped = "added meanwhile by another upload"
                elif holder and holder != p.name:
                    p.skipped = _held_by(holder)
                else:
                    p.replaces = current["sha256"] if current else None
                    before = (current or {}).get("origin")
                    p.note = (f"replaces the {p.name} added from {before}: a knowledge base holds one file per "
                              f"name" if before and p.origin and before != p.origin else "")
                    fresh.append((p, part))
            if not fresh:
                return
            group = [p for p, _ in fresh]
            vectors = np.concatenate([part for _, part in fresh])
            chunks = [c for p in group for c in p.chunks]
            _check_room(kb, group, chunks, vectors)
            shas = [p.sha256 for p in group] + [p.replaces for p in group if p.replaces]
            if not kb.embedding:
                kb.set_embedding(self.embedder.name)
            index = self.keywords.get(kb)
            try:
                with kb.pending(*shas):
                    self.store.add(kb.slug, chunks, vectors)
                    index.add([c.id for c in chunks], [c.indexed for c in chunks])
                    for p in group:
                        kb.stage_content(p.path, p.name)
                    kb.commit_files([(p.name, p.sha256, len(p.chunks), p.pages, p.size, p.origin) for p in group])
                    for p in group:
                        kb.place_content(p.name)
                    for p in group:
                        if p.replaces:
                            index.delete(self.store.delete_sha(kb.slug, p.replaces))
                    index.generation = kb.manifest.generation
            except BaseException:
                recover(kb, self.store)
                raise


def _held_by(name: str) -> str:
    """Why a file whose bytes another file holds adds nothing, and what that means for it."""
    return f"same content as {name}, which holds it: deleting {name} removes it"


def _check_room(kb: KnowledgeBase, group: list[_Prepared], chunks: list[Chunk], vectors: np.ndarray) -> None:
    """Refuse a commit the disk may not hold (the text and vectors several times over: the database's log,
    its tables and its vector index each keep them, plus the file's copy), with ``MIN_FREE_BYTES`` to spare."""
    needed = (4 * sum(len(c.text.encode("utf-8")) for c in chunks) + 4 * vectors.nbytes
              + sum(p.size for p in group) + MIN_FREE_BYTES)
    free = shutil.disk_usage(kb.folder).free
    if free < needed:
        names = group[0].name if len(group) == 1 else f"{group[0].name} and {len(group) - 1} more files"
        raise DiskFull(f"the disk of the knowledge root has {free / 2**20:.0f} MB free; indexing {names} safely "
                       f"needs about {needed / 2**20:.0f} MB (a database write cut short by a full disk can "
                       "damage the index): free some space, then add it again")


class _Results(list[FileResult | None]):
    """One slot per file of a batch; ``on_file`` hears of the outcomes in input order, each as soon as it and
    every file before it are settled (a group's files are committed together: its failures wait for it)."""

    def __init__(self, files: int, on_file: Callable[[FileResult], None] | None) -> None:
        super().__init__([None] * files)
        self.on_file = on_file
        self.told = 0  # outcomes passed to on_file so far

    def __setitem__(self, position: Any, result: Any) -> None:
        super().__setitem__(position, result)
        while self.on_file is not None and self.told < len(self) and (settled := self[self.told]) is not None:
            self.told += 1
            self.on_file(settled)


def _monotone(progress: ProgressFn, files: int) -> Callable[[float, str], None]:
    """``progress`` given files done (a float), never moving back (a guard: a twin of a failed file is
    settled after the files that follow it)."""
    high = 0.0

    def report(done: float, message: str) -> None:
        nonlocal high
        high = max(high, done / max(files, 1))
        progress(high, message)

    return report


def _paths_by_name(files: Sequence[tuple[Path, str]]) -> dict[str, Path]:
    """The batch's files by the name each would be held under (the first of a name)."""
    paths: dict[str, Path] = {}
    for path, given in files:
        with contextlib.suppress(KBQAError):
            paths.setdefault(safe_file_name(given), Path(path))
    return paths


def _changes(holder: str, sha: str, paths: dict[str, Path]) -> bool:
    """Whether this batch gives ``holder`` (a held file with content ``sha``) other content."""
    path = paths.get(holder)
    if path is None:
        return False
    try:
        return path.is_file() and file_sha256(path) != sha
    except OSError:  # reported when that file's turn comes
        return False


def upload_name(given: str) -> str:
    """An uploaded file's name as kbqa holds it (its base name), or as given when nothing of it is usable."""
    try:
        return safe_file_name(given)
    except InvalidName:
        return given


def _failed(name: str, path: Path, exc: Exception) -> FileResult:
    """The result of a file that could not be read: the error's message, naming the file as the user did."""
    if isinstance(exc, KBQAError):
        reason = str(exc)
    else:
        log.exception("unexpected error reading %s", name)
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
    return FileResult(name, "failed", reason=reason.replace(str(path), name))


def _per_file(group: list[_Prepared], vectors: np.ndarray) -> list[np.ndarray]:
    """Each prepared file's rows of ``vectors`` (those of its chunks, in order)."""
    return np.split(vectors, np.cumsum([len(p.chunks) for p in group])[:-1])


def file_too_large(name: str, size: int, max_bytes: float) -> FileTooLarge:
    """The error for a file over ``ingest.max_file_mb``."""
    limit = f"{max_bytes / 2**20:,.2f}".rstrip("0").rstrip(".")  # 0.01 MB is 10485 bytes: not "0.00999928"
    return FileTooLarge(f"{name} is {size / 2**20:.3g} MB, over the {limit} MB limit "
                        f"(ingest.max_file_mb): split it or raise the limit.")
