"""Retrieval: dense (Chroma), BM25 keywords, and both fused by weighted reciprocal rank fusion.

Whatever ranks the chunks, each returned ``SourceChunk.score`` is the cosine similarity between the
question and the chunk, so scores mean the same in every mode and one threshold applies to all.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from kbqa.bm25 import BM25Index
from kbqa.embeddings import Embedder
from kbqa.knowledge import KnowledgeBase
from kbqa.language import is_chinese
from kbqa.schema import SourceChunk
from kbqa.store import ChromaStore

log = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]


class Reranker(Protocol):
    """Scores (question, chunk) pairs; higher is more relevant."""

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text."""
        ...


class KeywordIndexes:
    """Each knowledge base's BM25 index, opened once and rebuilt from the store when out of step.

    The index records the manifest generation it reflects; after a crash between the vector store
    and the index, the generations differ and the index is rebuilt from the chunks in the store.
    """

    def __init__(self, store: ChromaStore) -> None:
        self.store = store
        self._open: dict[str, BM25Index] = {}
        self._lock = threading.Lock()

    def get(self, kb: KnowledgeBase) -> BM25Index:
        """The knowledge base's index, in step with its manifest."""
        with self._lock:
            index = self._open.get(kb.slug)
            if index is None:
                index = BM25Index.open(kb.bm25_dir)
                self._open[kb.slug] = index
            if index.generation != kb.manifest.generation:
                self._rebuild(kb, index)
            return index

    def rebuild(self, kb: KnowledgeBase) -> None:
        """Read the index again from the store (its manifest changed outside kbqa: the generations may agree)."""
        with self._lock:
            index = self._open.get(kb.slug)
            if index is None:
                index = self._open[kb.slug] = BM25Index.open(kb.bm25_dir)
            self._rebuild(kb, index)

    def _rebuild(self, kb: KnowledgeBase, index: BM25Index) -> None:
        start = time.perf_counter()
        index.clear()
        for ids, texts in self.store.indexed_texts(kb.slug):
            index.add(ids, texts)
        index.generation = kb.manifest.generation
        index.save()
        log.info("rebuilt keyword index of %s (%d chunks) in %.1fs", kb.name, len(index),
                 time.perf_counter() - start)

    def forget(self, slug: str) -> None:
        """Close a knowledge base's index (before its folder is deleted)."""
        with self._lock:
            self._open.pop(slug, None)


@dataclass(frozen=True)
class RetrievalConfig:
    """How to rank; see ``RetrievalSettings`` for the meaning of each field."""

    mode: Mode = "hybrid"
    dense_weight: float = 1.0
    #: BM25's weight for Chinese questions and for others (jieba words match Chinese factoids well; English
    #: has no stemming here and e5 is strong on it: see "Fusion settings search" in benchmarks/RESULTS.md).
    bm25_weight: float = 2.0
    bm25_weight_en: float = 0.1
    rrf_k: int = 5
    candidates: int = 20


#: A number an embedding cannot match but a keyword can: digit groups joined by - . / : _ (a file or account
#: number "000-30653", "CVE-2023-1234", a version "1.2.3") or a run of five digits or more.
_IDENTIFIER = re.compile(r"\d+(?:[-_./:]\w*\d\w*)+|\d{5,}")


def bm25_weight(question: str, cfg: RetrievalConfig) -> float:
    """BM25's weight in the fusion: the strong one for Chinese questions and for questions naming an
    identifier (dense retrieval put the passage holding "000-30653" below unrelated ones); else the English one."""
    return cfg.bm25_weight if is_chinese(question) or _IDENTIFIER.search(question) else cfg.bm25_weight_en


def fuse(rankings: Sequence[tuple[Sequence[str], float]], rrf_k: int) -> list[str]:
    """Weighted reciprocal rank fusion: ``sum(weight / (rrf_k + rank))`` over the rankings (rank from 1).

    Ties keep the order of first appearance, so the first ranking breaks ties.
    """
    scores: dict[str, float] = {}
    for ids, weight in rankings:
        if weight <= 0:
            continue
        for rank, chunk_id in enumerate(ids, 1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (rrf_k + rank)
    return sorted(scores, key=lambda i: -scores[i])


class Retriever:
    """Finds the chunks of a knowledge base that best match a question.

    Args:
        embedder: Encodes the question.
        store: The vector store.
        keywords: BM25 indexes (used in ``bm25`` and ``hybrid`` modes).
        config: Mode and fusion weights.
        reranker: Optional cross-encoder applied to the fused candidates.
    """

    def __init__(self, embedder: Embedder, store: ChromaStore, keywords: KeywordIndexes,
                 config: RetrievalConfig, reranker: Reranker | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self.keywords = keywords
        self.config = config
        self.reranker = reranker

    def retrieve(self, kb: KnowledgeBase, question: str, k: int) -> list[SourceChunk]:
        """Up to ``k`` chunks, best first, each with its cosine score and its rank.

        Raises:
            IncompatibleIndex: the knowledge base was built with another embedding model.
        """
        kb.check_embedding(self.embedder.name, adding=False, load=lambda: self.embedder.dim)
        cfg = self.config
        n = max(k, cfg.candidates)
        vector = self.embedder.embed_query(question)
        dense: list[SourceChunk] = []
        if cfg.mode in ("dense", "hybrid"):
            dense = self.store.search(kb.slug, vector, n)
        rankings: list[tuple[Sequence[str], float]] = [([c.id for c in dense], cfg.dense_weight)]
        if cfg.mode in ("bm25", "hybrid"):
            hits = self.keywords.get(kb).search(question, n)
            rankings.append(([i for i, _ in hits], bm25_weight(question, cfg)))
        order = [c.id for c in dense] if cfg.mode == "dense" else fuse(rankings, cfg.rrf_k)
        known = {c.id: c for c in dense}

        def resolve(ids: Sequence[str]) -> list[SourceChunk]:
            """The chunks of ``ids`` the store holds, in order (fetching text and vector of those not known)."""
            for chunk in self.store.fetch(kb.slug, [i for i in ids if i not in known], vector):
                known[chunk.id] = chunk
            return [known[i] for i in ids if i in known]

        # Without a reranker only the first k candidates are needed, unless the store lacks some of them.
        ranked = resolve(order[:k]) if self.reranker is None else []
        if len(ranked) < k:
            ranked = resolve(order)
        if self.reranker is not None and ranked:
            scores = self.reranker.score(question, [c.text for c in ranked])
            ranked = [c for _, c in sorted(zip(scores, ranked, strict=True), key=lambda p: -p[0])]
        return [replace(c, rank=r) for r, c in enumerate(ranked[:k], 1)]
