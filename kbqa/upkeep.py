"""Keeping a knowledge base whole outside adding files: deleting one, undoing an interrupted change, and
forgetting files whose chunks left the vector database (see ``kbqa.knowledge`` for the crash-safety scheme)."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from kbqa.errors import DocumentNotFound, KBQAError
from kbqa.fileio import file_sha256
from kbqa.knowledge import KnowledgeBase
from kbqa.names import safe_file_name
from kbqa.retrieval import KeywordIndexes
from kbqa.store import ChromaStore

log = logging.getLogger(__name__)


def delete_document(kb: KnowledgeBase, store: ChromaStore, keywords: KeywordIndexes, name: str) -> str:
    """Remove a file: out of the manifest first, then its chunks, then its copy. Returns its name as held."""
    with kb.lock:
        given = name
        if name not in kb.manifest.files:  # a path, or a name as the file system spells it: as ingest stored it
            with contextlib.suppress(KBQAError):
                name = safe_file_name(name)
        entry = kb.manifest.files.get(name)
        if entry is None:
            names = sorted(kb.manifest.files)
            held = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise DocumentNotFound(f"Knowledge base '{kb.name}' has no file '{name}' (it holds: {held or 'none'}).")
        # A path names the file added from there: another folder's file of the same name is not this one.
        origin = entry.get("origin")
        if given != name and re.search(r"[\\/]", given) and str(Path(given).resolve()) != origin:
            raise DocumentNotFound(
                f"'{name}' in knowledge base '{kb.name}' was " + (
                    f"added from {origin}, not from {given}: give its name ({name}) or that path to delete it."
                    if origin else f"uploaded, not added from {given}: give its name ({name}) to delete it."))
        index = keywords.get(kb)
        with kb.pending(entry["sha256"]):
            kb.forget_file(name)
            index.delete(store.delete_sha(kb.slug, entry["sha256"]))
            index.generation = kb.manifest.generation
            index.save()
            (kb.content_dir / name).unlink(missing_ok=True)
    return name


def recover(kb: KnowledgeBase, store: ChromaStore) -> None:
    """Undo what an interrupted change left behind: chunks of content marked pending that no file names,
    and original-file copies out of step with the manifest."""
    if not kb.manifest.pending:
        return
    with kb.lock:
        committed = {f["sha256"] for f in kb.manifest.files.values()}
        removed = 0
        for sha in list(kb.manifest.pending):
            if sha not in committed:
                removed += len(store.delete_sha(kb.slug, sha))
        if removed:
            log.warning("removed %d chunks of an interrupted change in %s", removed, kb.name)
        kb.settle_content()  # before pending is cleared: a crash in here is recovered again
        kb.manifest.pending = []
        kb.manifest.generation += 1  # the keyword index no longer matches: rebuild it from the store
        kb.save_manifest()


def reconcile(kb: KnowledgeBase, store: ChromaStore, keywords: KeywordIndexes) -> None:
    """Bring the manifest and the vector store back into agreement after a change made outside kbqa.

    They agree unless the database or the manifest was damaged, replaced or deleted outside kbqa (an ingest or
    a deletion cut short is ``recover`` 's case). A file whose chunks left the store is forgotten, so that
    adding it again works (it would be listed, never found, and "unchanged" when added again). Chunks no listed
    file owns (a lost manifest) would be found and cited but could never be deleted: their file is listed again
    when its original is still kept, and they are removed when it is not.
    """
    if store.count(kb.slug) == kb.chunk_count:
        return
    with kb.lock:
        held = store.contents(kb.slug)
        files = kb.manifest.files
        lost = [name for name, f in files.items() if held.get(f["sha256"], ("", 0, None))[1] != f["chunks"]]
        owned = {f["sha256"] for f in files.values()} | set(kb.manifest.pending)
        unlisted = {sha: content for sha, content in held.items() if sha not in owned}
        for name in lost:
            delete_document(kb, store, keywords, name)  # what is left of its chunks, its keywords, its copy
        listed, removed = _claim_unlisted(kb, store, unlisted)
        if listed or removed:  # a lost manifest began its count again: it may match the keyword index's
            keywords.rebuild(kb)
    if lost:
        log.warning("knowledge base %s: the vector database lacks the chunks of %d file(s) (%s); they were taken "
                    "off its list: add them again", kb.name, len(lost), ", ".join(lost[:5]))
    if listed:
        log.warning("knowledge base %s: %d file(s) whose chunks it holds were missing from its list (%s); they are "
                    "listed again", kb.name, len(listed), ", ".join(listed[:5]))
    if removed:
        log.warning("knowledge base %s: the chunks of %d file(s) missing from its list, whose originals are not kept "
                    "(%s), were removed: add them again", kb.name, len(removed), ", ".join(removed[:5]))


def _claim_unlisted(kb: KnowledgeBase, store: ChromaStore,
                    unlisted: dict[str, tuple[str, int, int | None]]) -> tuple[list[str], list[str]]:
    """List again the files of chunks no listed file owns (``unlisted``, as ``ChromaStore.contents`` gives them)
    whose originals are kept (same content); remove the other such chunks. Returns the names listed again and
    the names whose chunks were removed."""
    back: list[tuple[str, str, int, int | None, int, str | None]] = []
    removed: list[str] = []
    for sha, (name, chunks, pages) in unlisted.items():
        copy = kb.content_dir / name
        if name and name not in kb.manifest.files and copy.is_file() and file_sha256(copy) == sha:
            back.append((name, sha, chunks, pages, copy.stat().st_size, None))
        else:
            store.delete_sha(kb.slug, sha)
            removed.append(name)
    if back:
        kb.commit_files(back)
    return [entry[0] for entry in back], removed
