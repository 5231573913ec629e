"""Keeping a knowledge base whole outside adding files: deleting one, undoing an interrupted change, and
forgetting files whose chunks left the vector database (see ``kbqa.knowledge`` for the crash-safety scheme)."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from kbqa.errors import DocumentNotFound, KBQAError
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
    """Forget files whose chunks are no longer in the vector store, so that adding them again works.

    The store and the manifest agree unless the database was damaged, replaced or deleted outside kbqa
    (an ingest or a deletion cut short is ``recover`` 's case). Without this, such a file would be listed,
    never found, and "unchanged" when added again.
    """
    if not kb.manifest.files or store.count(kb.slug) == sum(f["chunks"] for f in kb.manifest.files.values()):
        return
    with kb.lock:
        lost = [name for name, f in kb.manifest.files.items() if store.count_sha(kb.slug, f["sha256"]) != f["chunks"]]
        for name in lost:
            delete_document(kb, store, keywords, name)  # what is left of its chunks, its keywords, its copy
    if lost:
        log.warning("knowledge base %s: the vector database lacks the chunks of %d file(s) (%s); they were taken "
                    "off its list: add them again", kb.name, len(lost), ", ".join(lost[:5]))
