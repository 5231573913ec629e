"""Vector store: Chroma, embedded (``PersistentClient``), one collection per knowledge base.

Vectors are always computed by kbqa's embedder and passed in; collections are created with an
embedding function that refuses to run, so Chroma never falls back to its default model (which
would try to download weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kbqa.errors import IndexDamaged, KBQAError
from kbqa.schema import Chunk, SourceChunk, titled

log = logging.getLogger(__name__)

_BATCH = 2000


class _NoEmbeddingFunction:
    """Stands in for Chroma's default embedding function: kbqa always supplies vectors."""

    def __call__(self, input: Any) -> Any:  # noqa: A002 - Chroma's parameter name
        raise KBQAError("internal error: Chroma was asked to embed text itself; kbqa passes vectors.")

    @staticmethod
    def name() -> str:
        return "kbqa-precomputed"

    def is_legacy(self) -> bool:
        return False

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> _NoEmbeddingFunction:
        return _NoEmbeddingFunction()


def _metadata(chunk: Chunk) -> dict[str, Any]:
    meta: dict[str, Any] = {"source": chunk.source, "sha256": chunk.sha256, "chunk": chunk.index}
    if chunk.title:  # as the splitter gave it: a keyword index rebuilt from the store reads each chunk as embedded
        meta["title"] = chunk.title
    if chunk.page is not None:
        meta["page"] = chunk.page
    for key, value in chunk.extra.items():
        if isinstance(value, str | int | float | bool):
            meta[f"x_{key}"] = value
    return meta


def _source_chunk(chunk_id: str, text: str, meta: dict[str, Any], score: float) -> SourceChunk:
    row = meta.get("x_line")  # CSV rows; knowledge bases built before it was recorded have none
    return SourceChunk(source=str(meta.get("source", "")), page=meta.get("page"), chunk=int(meta.get("chunk", 0)),
                       score=float(score), text=text, id=chunk_id, row=int(row) if row is not None else None)


class ChromaStore:
    """All knowledge bases' vectors in one embedded Chroma database.

    Args:
        path: Folder of the database (created if missing).
    """

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        try:
            self._client = chromadb.PersistentClient(
                path=str(path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
        except Exception as exc:  # chromadb's InternalError, sqlite's DatabaseError...: the database is unreadable
            log.info("the vector database %s cannot be opened: %r", path, exc)
            reason = str(exc).split(": ")[-1][:200]
            raise IndexDamaged(
                f"The vector database ({path}) cannot be read ({reason}): a write was cut short (a full disk, a "
                "crash) or its files were changed outside kbqa. Every knowledge base's files are kept in its "
                f"folder's content/ folder under {Path(path).parent}: copy them elsewhere, move {path} away, "
                "start kbqa again and add them again.") from exc
        self._collections: dict[str, Any] = {}
        self.path = Path(path)

    @contextmanager
    def _readable(self, slug: str) -> Iterator[None]:
        """Chroma's internal errors on a collection (an index file a full disk left empty...) as one clear error."""
        from chromadb.errors import InternalError

        try:
            yield
        except InternalError as exc:
            reason = str(exc).split(": ")[-1][:200]
            log.info("the vector index of %s cannot be read: %s", slug, exc)
            raise IndexDamaged(
                f"The vector index of this knowledge base (folder {slug}) cannot be read ({reason}): a database "
                "write was cut short (a full disk, a crash). Its files are kept in "
                f"{self.path.parent / slug / 'content'}: copy them elsewhere, delete the knowledge base "
                "(kbqa kb delete, or the web app's button) and add them again.") from exc

    def _collection(self, slug: str) -> Any:
        if slug not in self._collections:
            self._collections[slug] = self._client.get_or_create_collection(
                slug, embedding_function=_NoEmbeddingFunction(),  # type: ignore[arg-type]
                metadata={"hnsw:space": "cosine"})
        return self._collections[slug]

    def add(self, slug: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Upsert chunks with their vectors (idempotent: ids are stable)."""
        with self._readable(slug):
            col = self._collection(slug)
            for start in range(0, len(chunks), _BATCH):
                part = chunks[start:start + _BATCH]
                col.upsert(ids=[c.id for c in part], embeddings=vectors[start:start + _BATCH],
                           documents=[c.text for c in part], metadatas=[_metadata(c) for c in part])

    def search(self, slug: str, vector: np.ndarray, k: int) -> list[SourceChunk]:
        """The ``k`` nearest chunks, best first, scored by cosine similarity."""
        with self._readable(slug):
            col = self._collection(slug)
            n = col.count()
            if n == 0:
                return []
            res = col.query(query_embeddings=[vector], n_results=min(k, n),
                            include=["documents", "metadatas", "distances"])
        return [_source_chunk(i, d, m, 1.0 - dist) for i, d, m, dist in
                zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True)]

    def fetch(self, slug: str, ids: Sequence[str], vector: np.ndarray) -> list[SourceChunk]:
        """Chunks by id (in the given order), scored by cosine similarity to ``vector``."""
        if not ids:
            return []
        with self._readable(slug):
            res = self._collection(slug).get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
        found = {i: (d, m, e) for i, d, m, e in
                 zip(res["ids"], res["documents"], res["metadatas"], res["embeddings"], strict=True)}
        out = []
        for chunk_id in ids:
            if chunk_id in found:
                doc, meta, emb = found[chunk_id]
                out.append(_source_chunk(chunk_id, doc, meta, float(np.dot(np.asarray(emb), vector))))
        return out

    def texts(self, slug: str) -> Iterable[tuple[list[str], list[str]]]:
        """All (ids, documents) of a collection, in pages."""
        for res in self._pages(slug, ["documents"]):
            yield res["ids"], res["documents"]

    def indexed_texts(self, slug: str) -> Iterable[tuple[list[str], list[str]]]:
        """All (ids, texts as the retrievers read them: each with its document's title), in pages (to rebuild a
        keyword index)."""
        for res in self._pages(slug, ["documents", "metadatas"]):
            yield res["ids"], [titled(str((meta or {}).get("title", "")), doc)
                               for doc, meta in zip(res["documents"], res["metadatas"], strict=True)]

    def _pages(self, slug: str, include: list[str]) -> Iterable[Any]:
        with self._readable(slug):
            col = self._collection(slug)
            total = col.count()
        for offset in range(0, total, _BATCH):
            with self._readable(slug):
                yield col.get(include=include, limit=_BATCH, offset=offset)  # type: ignore[arg-type]

    def contents(self, slug: str) -> dict[str, tuple[str, int, int | None]]:
        """Per content hash held: its file's name, its chunks and its last page (None: a file without pages)."""
        found: dict[str, tuple[str, int, int | None]] = {}
        for res in self._pages(slug, ["metadatas"]):
            for meta in res["metadatas"]:
                meta = meta or {}
                sha = str(meta.get("sha256", ""))
                name, chunks, last = found.get(sha, (str(meta.get("source", "")), 0, None))
                page = meta.get("page")
                found[sha] = (name, chunks + 1, last if page is None else max(last or 0, int(page)))
        return found

    def delete_sha(self, slug: str, sha256: str) -> list[str]:
        """Remove every chunk of one file's content; returns the removed ids."""
        with self._readable(slug):
            col = self._collection(slug)
            ids = col.get(where={"sha256": sha256}, include=[])["ids"]
            for start in range(0, len(ids), _BATCH):
                col.delete(ids=ids[start:start + _BATCH])
        return list(ids)

    def count(self, slug: str) -> int:
        """Chunks in a collection."""
        with self._readable(slug):
            return int(self._collection(slug).count())

    def drop(self, slug: str) -> None:
        """Delete a collection (no error if it does not exist)."""
        self._collections.pop(slug, None)
        try:
            self._client.delete_collection(slug)
        except Exception:  # chromadb raises different types for a missing collection across versions
            log.debug("collection %s did not exist", slug)
