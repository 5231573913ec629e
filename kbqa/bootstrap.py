"""``build_service(settings)``: the one place that knows the concrete classes."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from kbqa.embeddings import Embedder, LazyEmbedder, build_embedder, embedder_name
from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.ingest import Ingestor
from kbqa.knowledge import KnowledgeRoot
from kbqa.language import is_chinese
from kbqa.llm.base import LLM, GenerationParams
from kbqa.models import (
    EMBEDDED_LLMS,
    Progress,
    assemble_gguf,
    embedded_name,
    is_embedded,
    resolve_local_or_hub,
)
from kbqa.prompts import PromptBook
from kbqa.qa import QAEngine
from kbqa.retrieval import KeywordIndexes, Reranker, RetrievalConfig, Retriever
from kbqa.service import KBQAService
from kbqa.settings import LLMSettings, Settings
from kbqa.splitter import Splitter
from kbqa.store import ChromaStore

log = logging.getLogger(__name__)
T = TypeVar("T")

LLM_SETTING = "llm.model (KBQA_LLM__MODEL)"
#: The project folder: relative paths.prompts_dir absent from the working folder are looked up here.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def quiet_environment() -> None:
    """Defaults for the skins (CLI, web app): no library progress bars or analytics, only our own."""
    for key, value in {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False",
                       "ANONYMIZED_TELEMETRY": "False"}.items():
        os.environ.setdefault(key, value)
    # pypdf logs every oddity of a damaged PDF; kbqa reports the file's problem itself, once.
    logging.getLogger("pypdf").setLevel(logging.ERROR)


def resolve_gguf(spec: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A GGUF file for the llamacpp backend: embedded, a file, a folder holding one, or a hub id."""
    if is_embedded(spec):
        name = embedded_name(spec)
        if name not in EMBEDDED_LLMS:
            known = ", ".join(f"embedded:{n}" for n in EMBEDDED_LLMS)
            raise ModelUnavailable(f"Unknown embedded LLM '{spec}' in {LLM_SETTING}; choose one of {known}.")
        return assemble_gguf(EMBEDDED_LLMS[name], cache_dir, LLM_SETTING, progress)
    path = resolve_local_or_hub(spec, LLM_SETTING, allow_patterns=["*.gguf"])
    if not path.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelUnavailable(
                f"{LLM_SETTING} = '{spec}' is a folder with {len(ggufs)} GGUF files; the llamacpp backend needs "
                f"exactly one: point {LLM_SETTING} at the file, or use llm.backend = 'transformers' for a "
                f"transformers model folder.")
        path = ggufs[0]
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":  # llama.cpp itself only says "Failed to init server, please check the input params"
        raise ModelUnavailable(f"{LLM_SETTING} = '{spec}': {path} is not a GGUF model (it does not start with "
                               f"GGUF{'; it is empty' if not magic else ''}): the llamacpp backend reads GGUF files "
                               "only; point it at one (or download it again if it was cut short).")
    return path


def build_llm(settings: LLMSettings, cache_dir: Path, progress: Progress | None = None) -> LLM:
    """Load the configured LLM backend.

    Raises:
        ConfigError: settings this machine cannot honour, or a cache folder that cannot be written.
        ModelUnavailable: the model cannot be found or read.
    """
    try:
        return _load_llm(settings, cache_dir, progress)
    except OSError as exc:  # what the backends' own checks did not catch: the file system said no
        cannot_write = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}
        if exc.errno in cannot_write and exc.filename and \
                Path(str(exc.filename)).resolve().is_relative_to(Path(cache_dir).resolve()):
            raise ConfigError(f"kbqa cannot write its model cache {cache_dir} ({exc.strerror}): set paths.cache_dir "
                              "(KBQA_PATHS__CACHE_DIR) to a folder you can write.") from exc
        raise ModelUnavailable(f"Cannot read llm.model (KBQA_LLM__MODEL) = '{settings.model}': {exc}") from exc


def _load_llm(settings: LLMSettings, cache_dir: Path, progress: Progress | None) -> LLM:
    match settings.backend:
        case "llamacpp":
            from kbqa.llm.llamacpp import LlamaCppLLM

            _check_llamacpp_settings(settings)
            path = resolve_gguf(settings.model, cache_dir, progress)
            return LlamaCppLLM(path, name=settings.model, context_window=settings.context_window,
                               threads=settings.threads, gpu_layers=settings.gpu_layers,
                               tokenizer_cache=cache_dir / "tokenizers")
        case "transformers":
            from kbqa.llm.transformers_backend import build_transformers_llm

            return build_transformers_llm(settings, cache_dir, progress)
    raise ModelUnavailable(f"Unknown llm.backend '{settings.backend}'.")  # pragma: no cover - pydantic checks


def _check_llamacpp_settings(settings: LLMSettings) -> None:
    """Refuse the transformers backend's settings with llama.cpp, which would run without them, unsaid (a user
    following the GPU table without llm.backend = 'transformers' got a CPU run at full precision)."""
    ignored = [f"llm.{name} = '{value}'" for name, value, default in (
        ("quantization", settings.quantization, "none"), ("dtype", settings.dtype, "auto"),
        ("adapter", settings.adapter, None)) if value != default]
    if settings.device not in ("auto", "cpu"):
        ignored.append(f"llm.device = '{settings.device}' (llama.cpp offloads to a GPU with llm.gpu_layers)")
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: {'these apply' if len(ignored) > 1 else 'this applies'} to "
                          "llm.backend = 'transformers' only, and llm.backend is 'llamacpp' (GGUF models): set "
                          "llm.backend (KBQA_LLM__BACKEND) to 'transformers', or leave "
                          f"{'them' if len(ignored) > 1 else 'it'} out.")


#: Held while a model loads. One loads at a time: transformers imports its classes lazily, and two threads
#: doing so at once (the server's warm-up loading the embedder while a first request loads the LLM) can
#: fail with "cannot import name ... from 'transformers'".
_LOADING = threading.RLock()


def one_at_a_time(load: Callable[[], T]) -> Callable[[], T]:
    """``load`` run under the lock that keeps model loads apart."""
    def run() -> T:
        with _LOADING:
            return load()

    return run


def lazy(load: Callable[[], T]) -> Callable[[], T]:
    """Load once, on first call, thread-safely."""
    box: list[T] = []
    lock = threading.Lock()

    def get() -> T:
        with lock:
            if not box:
                box.append(load())
            return box[0]

    return get


def build_reranker(spec: str | None, cache_dir: Path) -> Reranker | None:
    """The configured cross-encoder, loaded at its first use (listing knowledge bases loads nothing), or None
    when reranking is off."""
    if not spec:
        return None
    from kbqa.rerank import CrossEncoderReranker

    def load() -> Reranker:
        if is_embedded(spec):
            raise ModelUnavailable(f"retrieval.reranker (KBQA_RETRIEVAL__RERANKER) = {spec!r}: no reranker model is "
                                   "embedded (no installable package ships one); give a cross-encoder's local folder "
                                   "or hub id (e.g. BAAI/bge-reranker-base), or 'none'.")
        return CrossEncoderReranker(resolve_local_or_hub(spec, "retrieval.reranker (KBQA_RETRIEVAL__RERANKER)",
                                                        embedded=False))

    return LazyReranker(lazy(one_at_a_time(load)))


class LazyReranker:
    """A reranker that loads its model when it first scores."""

    def __init__(self, load: Callable[[], Reranker]) -> None:
        self._load = load

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        return self._load().score(question, texts)


def build_service(settings: Settings, embedder: Embedder | None = None, llm: Callable[[], LLM] | None = None,
                  progress: Progress | None = None) -> KBQAService:
    """Wire a service from settings. Tests pass fakes for ``embedder`` and ``llm``.

    Models load lazily: listing knowledge bases loads nothing, ingesting loads the embedder, asking
    loads the LLM too.
    """
    from kbqa.loaders import load_document

    cache = settings.paths.cache_dir
    emb_cfg = settings.embedding
    if embedder is None:
        embedder = LazyEmbedder(embedder_name(emb_cfg), one_at_a_time(lambda: build_embedder(emb_cfg, cache, progress)))
    if llm is None:
        llm = lazy(one_at_a_time(lambda: build_llm(settings.llm, cache, progress)))
    root = KnowledgeRoot(settings.paths.knowledge_root)
    store = ChromaStore(root.chroma_dir)
    keywords = KeywordIndexes(store)
    splitter = Splitter(settings.splitter.chunk_size, settings.splitter.chunk_overlap, too_long=embedder.too_long)
    ocr = settings.ingest.ocr
    ingestor = Ingestor(store, keywords, embedder, splitter,
                        load=lambda path, name: load_document(path, ocr=ocr, name=name),
                        max_bytes=int(settings.ingest.max_file_mb * 2**20))
    r = settings.retrieval
    retriever = Retriever(embedder, store, keywords,
                          RetrievalConfig(r.mode, r.dense_weight, r.bm25_weight, r.bm25_weight_en, r.rrf_k,
                                          r.candidates),
                          reranker=build_reranker(r.reranker, cache))
    prompts_dir = settings.paths.prompts_dir
    if not prompts_dir.is_absolute() and not prompts_dir.is_dir():
        prompts_dir = PROJECT_ROOT / prompts_dir
    prompts = PromptBook.load(prompts_dir, settings.prompts.qa_zh, settings.prompts.qa_en)
    g = settings.llm
    # Answers never reuse llama.cpp's prompt cache, so they do not depend on what was asked before.
    params = GenerationParams(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                              repetition_penalty=g.repetition_penalty, reuse_prompt_cache=False)
    emb = embedder

    def language_threshold(chinese: bool) -> float:
        explicit = r.score_threshold_zh if chinese and r.score_threshold_zh is not None else r.score_threshold
        if explicit is not None:
            return explicit
        profile = getattr(emb, "profile", None)
        return profile.threshold(chinese) if profile is not None else 0.0

    def threshold(question: str, passage: str | None = None) -> float:
        """The least score for ``passage`` (None: the question's own threshold, for its language).

        A Chinese question is held to the lower (other-language) threshold against a passage that is not
        Chinese: a translation pair scores below a same-language match (e5: Chinese questions about the English
        speech, answerable median 0.813), so 0.85 refused every one of them (benchmarks/cross_language.py).
        """
        chinese = is_chinese(question)
        own = language_threshold(chinese)
        if chinese and passage is not None and not is_chinese(passage):
            return min(own, language_threshold(False))
        return own

    qa = QAEngine(retriever, llm, prompts, top_k=r.top_k, threshold=threshold, params=params,
                  follow_up=r.follow_up, history_turns=r.history_turns,
                  translate=r.translate)
    return KBQAService(root, store, keywords, ingestor, qa, llm)
