"""``KBQAService``: the one API the web app, the HTTP API and the CLI call. It speaks ``kbqa.schema``."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from kbqa.errors import IndexDamaged, KBQAError
from kbqa.ingest import Ingestor, ProgressFn
from kbqa.knowledge import KnowledgeBase, KnowledgeRoot
from kbqa.llm.base import LLM, GenerationParams, Usage
from kbqa.qa import QAEngine, empty_knowledge_base
from kbqa.retrieval import KeywordIndexes
from kbqa.schema import (
    Answer,
    AnswerEvent,
    ChatMessage,
    DocumentInfo,
    FileResult,
    IngestReport,
    KnowledgeBaseInfo,
    SourceChunk,
)
from kbqa.store import ChromaStore
from kbqa.upkeep import delete_document, reconcile, recover

log = logging.getLogger(__name__)


class KBQAService:
    """Knowledge bases, ingestion and question answering.

    Args:
        root: The knowledge bases on disk.
        store: Their vectors.
        keywords: Their keyword indexes.
        ingestor: The ingest pipeline.
        qa: The answering engine.
        llm: Returns the LLM (loaded on first use), for plain chat through the API.
    """

    def __init__(self, root: KnowledgeRoot, store: ChromaStore, keywords: KeywordIndexes, ingestor: Ingestor,
                 qa: QAEngine, llm: Callable[[], LLM]) -> None:
        self.root = root
        self.store = store
        self.keywords = keywords
        self.ingestor = ingestor
        self.qa = qa
        self.get_llm = llm
        self._recovered: set[str] = set()
        self._lock = threading.Lock()
        #: Per knowledge-base slug, ``[files settled, files]`` of each batch being added now.
        self._adding: dict[str, list[list[int]]] = {}
        #: Per knowledge base: when its latest batch ended (inf while it runs) and its outcomes so far.
        self._latest: dict[str, tuple[float, list[FileResult]]] = {}
        self._finish_interrupted()

    def _kb(self, name: str) -> KnowledgeBase:
        kb = self.root.open(name)
        with self._lock:
            if kb.slug not in self._recovered:
                recover(kb, self.store)
                reconcile(kb, self.store, self.keywords)
                self._recovered.add(kb.slug)
        return kb

    # knowledge bases -------------------------------------------------------------------------
    def list_kbs(self) -> list[KnowledgeBaseInfo]:
        """All knowledge bases."""
        return [KnowledgeBaseInfo(kb.name, kb.slug, len(kb.manifest.files), kb.chunk_count, kb.embedding)
                for kb in self.root.list()]

    def create_kb(self, name: str) -> KnowledgeBaseInfo:
        """Create a knowledge base (no error if it exists)."""
        kb = self.root.create(name)
        return KnowledgeBaseInfo(kb.name, kb.slug, len(kb.manifest.files), kb.chunk_count, kb.embedding)

    def delete_kb(self, name: str) -> str:
        """Delete a knowledge base with all its files and chunks (also one whose kb.json or manifest is damaged).

        Returns its display name (``name`` may be its slug, or the name as given when it is damaged).
        """
        try:
            kb = self.root.open(name)
        except IndexDamaged:  # it cannot be opened, so cannot be used: deleting it is the way out
            if (buried := self.root.bury_damaged(name)) is not None:
                self._destroy(*buried)
            return name
        self._remove(kb)
        with self._lock:  # a new knowledge base of the same name has had no upload yet
            self._latest.pop(kb.slug, None)
        return kb.name

    def _remove(self, kb: KnowledgeBase) -> None:
        with kb.lock:
            tomb = self.root.bury(kb)  # first: from here on the knowledge base is gone, whatever happens
            self._destroy(kb.slug, tomb)

    def _finish_interrupted(self) -> None:
        """Complete deletions a crash interrupted (the folder was renamed; the vectors may remain), and
        settle new knowledge bases whose first batch a crash interrupted."""
        for slug, tomb in self.root.buried():
            log.warning("finishing the interrupted deletion of knowledge base %s", slug)
            self._destroy(slug, tomb)
        for kb in self.root.unfinished():
            try:
                self._kb(kb.slug)  # recovery first: what the manifest names got in whole
            except IndexDamaged as exc:  # left as it is: deleting it still works, the others are not affected
                log.warning("knowledge base %s: %s", kb.name, exc)
                continue
            self._settle_first_batch(kb)

    def _destroy(self, slug: str, tomb: Path) -> None:
        """The last steps of a deletion: the vectors, then the renamed folder."""
        self.keywords.forget(slug)
        self.store.drop(slug)
        shutil.rmtree(tomb, ignore_errors=True)

    # documents -------------------------------------------------------------------------------
    def list_documents(self, kb_name: str) -> list[DocumentInfo]:
        """The files of a knowledge base."""
        return self._kb(kb_name).documents()

    def add_files(self, kb_name: str, files: Sequence[Path | str | tuple[Path | str, str]],
                  progress: ProgressFn | None = None,
                  on_file: Callable[[FileResult], None] | None = None) -> IngestReport:
        """Ingest files into a knowledge base, creating it if needed.

        Args:
            kb_name: Knowledge base (display name or slug).
            files: Paths of local files, or ``(temporary path, file name)`` pairs for uploads.
            progress: ``progress(fraction, message)`` for a progress bar.
            on_file: ``on_file(result)`` as each file's outcome is settled (the CLI prints its line then).
        """
        new = self.root.folder_for(kb_name) is None
        kb = self.root.create(kb_name, first_batch=True) if new else self._kb(kb_name)
        pairs, local = [], []
        for f in files:
            pairs.append((Path(f[0]), f[1]) if isinstance(f, tuple) else (Path(f), Path(f).name))
            local.append(not isinstance(f, tuple))
        batch = [0, len(pairs)]
        outcomes: list[FileResult] = []

        def settled(result: FileResult) -> None:
            batch[0] += 1
            outcomes.append(result)
            if on_file is not None:
                on_file(result)

        with self._lock:
            self._adding.setdefault(kb.slug, []).append(batch)
            self._latest[kb.slug] = (float("inf"), outcomes)  # running
        try:
            return self.ingestor.ingest(kb, pairs, progress, local=local, on_file=settled)
        finally:
            with self._lock:
                self._adding[kb.slug].remove(batch)
                if not self._adding[kb.slug]:
                    del self._adding[kb.slug]
                if self._latest.get(kb.slug, (0.0, None))[1] is outcomes:
                    self._latest[kb.slug] = (time.monotonic(), outcomes)
            if new and not kb.deleted:
                self._settle_first_batch(kb)

    def latest_upload(self, kb_name: str, within: float = 600.0) -> list[FileResult] | None:
        """The outcomes of the latest batch added to a knowledge base, while it runs and for ``within`` seconds
        after (a page reloaded mid-upload shows them again, the failed files' reasons too); None otherwise."""
        folder = self.root.folder_for(kb_name)
        with self._lock:
            none: tuple[float, list[FileResult]] = (float("-inf"), [])
            ended, outcomes = self._latest.get(folder.name, none) if folder is not None else none
            return list(outcomes) if time.monotonic() - ended <= within else None

    def adding(self, kb_name: str) -> tuple[int, int] | None:
        """``(files settled, files)`` of the batches being added to a knowledge base now; None when none is."""
        folder = self.root.folder_for(kb_name)
        with self._lock:
            batches = self._adding.get(folder.name, []) if folder is not None else []
            return (sum(b[0] for b in batches), sum(b[1] for b in batches)) if batches else None

    def _settle_first_batch(self, kb: KnowledgeBase) -> None:
        """A new knowledge base that nothing got into is removed (no empty one is left); else it is kept."""
        if kb.manifest.files:
            self.root.finish_first_batch(kb)
        else:
            self._remove(kb)

    def delete_document(self, kb_name: str, file_name: str) -> str:
        """Remove one file and all its chunks; returns its name as held (a path given is read as its base name)."""
        return delete_document(self._kb(kb_name), self.store, self.keywords, file_name)

    # questions -------------------------------------------------------------------------------
    def ask_stream(self, kb_name: str, question: str, history: Sequence[ChatMessage] = (),
                   params: GenerationParams | None = None, usage: Usage | None = None) -> Iterator[AnswerEvent]:
        """Sources, tokens, then the finished answer.

        Args:
            kb_name: Knowledge base (display name or slug).
            question: The question.
            history: Earlier messages of the same chat, oldest first: a follow-up question ("and the second
                one?") is read in their light (``retrieval.follow_up``).
            params: Generation settings of the answer (default ``answer_params``).
            usage: Filled in with the answer's token counts and finish reason.
        """
        if not question.strip():
            raise KBQAError("The question is empty: type a question first.")
        yield from self.qa.stream(self._kb(kb_name), question, history, params, usage)

    @property
    def answer_params(self) -> GenerationParams:
        """The generation settings answers use (``llm.*``), which API clients may override."""
        return self.qa.params

    def ask(self, kb_name: str, question: str, history: Sequence[ChatMessage] = ()) -> Answer:
        """The finished answer with its sources (``ask_stream`` collected)."""
        for event in self.ask_stream(kb_name, question, history):
            if event.kind == "done" and event.answer is not None:
                return event.answer
        raise KBQAError("internal error: the answer stream ended without an answer")

    def search(self, kb_name: str, query: str, k: int, history: Sequence[ChatMessage] = ()) -> list[SourceChunk]:
        """Retrieval only: the top ``k`` chunks with scores (no LLM unless a follow-up needs rewriting)."""
        if not query.strip():
            raise KBQAError("The search query is empty: type what to search for.")
        kb = self._kb(kb_name)
        if not kb.manifest.files:  # as for questions: say why nothing comes back
            raise empty_knowledge_base(kb.name)
        return self.qa.retriever.retrieve(kb, self.qa.search_query(query, history), k)

    # plain model access (the HTTP API) -------------------------------------------------------
    def chat_stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None,
                    usage: Usage | None = None) -> Iterator[str]:
        """Chat with the local LLM directly, without a knowledge base."""
        if not messages:
            raise KBQAError("No messages to answer.")
        yield from self.get_llm().stream(messages, params or self.qa.params, usage)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of texts from the configured embedding model (as chunks are embedded)."""
        if not texts:
            raise KBQAError("No input to embed.")
        return self.qa.retriever.embedder.embed_documents(list(texts))

    @property
    def embedding_dim(self) -> int:
        """Dimensions of the configured embedding model's vectors."""
        return int(self.qa.retriever.embedder.dim)

    def embedding_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the embedding model reads of ``texts`` (the usage of an embeddings request)."""
        return sum(self.qa.retriever.embedder.token_counts(list(texts)))
