"""Typed settings: ``kbqa.toml`` overridden by ``KBQA_*`` environment variables.

Nothing is read at import time: call ``load_settings()`` once and pass the tree (or parts of it) to
constructors. Nested fields take ``__`` in their variable name: ``KBQA_LLM__MODEL``,
``KBQA_RETRIEVAL__TOP_K``. ``KBQA_CONFIG`` names another TOML file.

Model settings (``embedding.model``, ``llm.model``, ``retrieval.reranker``) each accept one of:
an embedded model (``embedded:<name>``, shipped by a pinned package), a local folder or file,
or a hub id such as ``shibing624/text2vec-base-chinese`` (needs a reachable model hub).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kbqa.errors import ConfigError


class _Section(BaseModel):
    """A settings section; unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``top_k = true`` is a slip, not 1: a TOML boolean only fills a boolean setting."""
        if isinstance(value, bool) and info.field_name:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in (typing.get_args(annotation) or (annotation,)):
                raise ValueError(f"expected a {_kind(annotation)}, got the boolean {str(value).lower()}")
        return value


def _model_named(value: str) -> str:
    """A model setting, which must name a model (an empty one read as the working folder)."""
    if not value.strip():
        raise ValueError("is empty: give an embedded model (embedded:<name>), a folder, a file or a hub id")
    return value


def _off(value: Any) -> Any:
    """None for a model setting written as off: "none" (as the settings table shows the default), "off" or ""."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none", "off") else value


def _kind(annotation: Any) -> str:
    """'number' for int/float settings, else 'value'."""
    names = {getattr(a, "__name__", "") for a in (typing.get_args(annotation) or (annotation,))}
    return "number" if names & {"int", "float"} else "value"


class PathSettings(_Section):
    """Where kbqa keeps its data (``~`` is expanded)."""

    knowledge_root: Path = Field(Path("knowledge"), description="Folder holding one sub-folder per knowledge base.")
    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
                            / "kbqa", description="Assembled and converted models are cached here.")
    prompts_dir: Path = Field(Path("prompts"), description="Folder of prompt templates (*.toml).")

    @field_validator("knowledge_root", "cache_dir", "prompts_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        """An empty value (``KBQA_PATHS__KNOWLEDGE_ROOT=``) is a slip, not the working folder."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a folder (\".\" for the working folder)")
        return value

    @field_validator("knowledge_root", "cache_dir", "prompts_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        try:
            return value.expanduser()
        except RuntimeError:  # ~someone who is no user here
            raise ValueError(f"{value}: its ~ names no home folder here") from None


class EmbeddingSettings(_Section):
    """The embedding model used for dense retrieval."""

    model: str = Field("embedded:multilingual-e5-small",
                       description="embedded:<name>, a local folder, or a hub id (text2vec SentenceModel).")
    batch_size: int = Field(
        8, ge=1, description="Texts the float model encodes per forward pass (8 beat 32 by about 1.2x on a 2-core "
        "CPU; see benchmarks/RESULTS.md); the int8 chunk encoder takes one per pass. On a GPU, larger batches pay.")
    device: str = Field("cpu", pattern=r"^(cpu|mps|cuda(:\d+)?)$",
                        description="torch device for the embedding model: cpu, cuda (or cuda:N), mps.")
    max_seq_length: int | None = Field(None, ge=8, description="Token limit per text; None = the model's own.")
    query_prefix: str | None = Field(
        None, description="Text put before queries; None = the model's own (e5: 'query: ').")
    passage_prefix: str | None = Field(
        None, description="Text put before chunks; None = the model's own (e5: 'passage: ').")
    quantize: Literal["none", "int8"] = Field(
        "int8", description="int8: chunks are encoded by a dynamic int8 copy of the model (CPU only; ignored on "
                            "other devices), about 1.3x faster ingest for slightly lower retrieval quality "
                            "(benchmarks/RESULTS.md); none: the float model. A knowledge base must be re-created "
                            "to switch.")

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        return _model_named(value)


class LLMSettings(_Section):
    """The answering model."""

    backend: Literal["llamacpp", "transformers"] = Field("llamacpp", description="Which runtime runs the model.")
    model: str = Field("embedded:qwen2.5-coder-1.5b-instruct",
                       description="embedded:<name>, a GGUF file, a model folder, or a hub id.")
    context_window: int = Field(4096, ge=256, description="Tokens of prompt plus answer.")
    max_tokens: int = Field(512, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.15, ge=1.0, le=2.0, description="Stops small models from looping.")
    threads: int = Field(0, ge=0, description="CPU threads for llama.cpp; 0 = all cores.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="transformers backend: auto = cuda, then mps, then cpu; or cpu, mps, cuda (or cuda:N).")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="transformers backend weights dtype; auto = bf16 on a GPU that has it (Ampere or "
                            "newer), fp16 on older GPUs and on mps, fp32 on a CPU (bf16 when fp32 would not fit "
                            "in free memory).")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="transformers backend on CUDA (needs the gpu extra: .venv/bin/pip install -e '.[gpu]').")
    adapter: str | None = Field(None, description="A LoRA folder (peft) or a P-tuning v2 checkpoint folder; "
                                                  "none = no adapter.")
    gpu_layers: int = Field(0, ge=-1, description="llama.cpp layers to offload to a GPU; -1 = all.")

    @field_validator("adapter", mode="before")
    @classmethod
    def _no_adapter(cls, value: Any) -> Any:
        return _off(value)

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        return _model_named(value)


class SplitterSettings(_Section):
    """How documents are cut into chunks."""

    chunk_size: int = Field(500, ge=50, le=8000, description="Largest chunk, in characters.")
    chunk_overlap: int = Field(50, ge=0, description="Characters shared by neighbouring chunks.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> SplitterSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"splitter.chunk_overlap ({self.chunk_overlap}) must be smaller than splitter.chunk_size "
                             f"({self.chunk_size})")
        return self


class RetrievalSettings(_Section):
    """How chunks are found for a question."""

    top_k: int = Field(3, ge=1, le=50, description="Chunks given to the LLM and shown as sources.")
    score_threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="Least cosine similarity a chunk needs for a non-Chinese question; None = the embedding "
                    "model's calibrated default.")
    score_threshold_zh: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="The same for Chinese questions (e5 scores Chinese pairs higher); None = the model's default, "
                    "or score_threshold when only that is set.")
    mode: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid", description="Dense vectors, BM25 keywords, or both fused.")
    dense_weight: float = Field(1.0, ge=0.0, description="Weight of the dense ranking in reciprocal rank fusion.")
    bm25_weight: float = Field(2.0, ge=0.0, description="Weight of the BM25 ranking for Chinese questions.")
    bm25_weight_en: float = Field(0.1, ge=0.0, description="Weight of the BM25 ranking for other questions "
                                  "(those naming an identifier such as 000-30653 take bm25_weight).")
    rrf_k: int = Field(5, ge=1, description="Reciprocal rank fusion constant: score = weight / (rrf_k + rank).")
    candidates: int = Field(20, ge=1, description="Candidates each retriever contributes before fusion.")
    reranker: str | None = Field(None, description="Cross-encoder (hub id or folder) to rerank candidates; none = off.")
    follow_up: Literal["rewrite", "concat", "off"] = Field(
        "rewrite", description="A follow-up question in a chat: rewritten by the LLM into a standalone question "
                               "(rewrite), searched for together with the earlier questions (concat), or alone (off).")
    history_turns: int = Field(2, ge=0, le=10, description="Earlier turns of a chat a follow-up is read with.")
    translate: bool = Field(
        True, description="A question that finds no passage relevant enough, where a passage found is in the other "
                          "language (Chinese / not Chinese) or the knowledge base holds such passages, is translated "
                          "by the LLM into it and searched for again.")

    @field_validator("reranker", mode="before")
    @classmethod
    def _no_reranker(cls, value: Any) -> Any:
        return _off(value)


class PromptSettings(_Section):
    """Prompt templates, by name, from ``paths.prompts_dir``."""

    qa_zh: str = Field("qa_zh", description="Template for Chinese questions.")
    qa_en: str = Field("qa_en", description="Template for other questions.")


class IngestSettings(_Section):
    """Limits on what users upload."""

    max_file_mb: float = Field(100.0, gt=0, description="Larger files are refused.")
    ocr: bool = Field(True, description="OCR images and PDF pages without a text layer (rapidocr).")


class ServerSettings(_Section):
    """The web app and HTTP API."""

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(7860, ge=1, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names the server answers to besides localhost, 127.0.0.1 and ::1 "
        "(a loopback bind). Empty with any other bind = any name; '*' = any name.")


class Settings(BaseSettings):
    """The whole settings tree."""

    model_config = SettingsConfigDict(env_prefix="KBQA_", env_nested_delimiter="__", extra="forbid",
                                      toml_file="kbqa.toml")

    paths: PathSettings = PathSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    llm: LLMSettings = LLMSettings()
    splitter: SplitterSettings = SplitterSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    prompts: PromptSettings = PromptSettings()
    ingest: IngestSettings = IngestSettings()
    server: ServerSettings = ServerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, then environment, then the TOML file."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings tree.

    Args:
        config: A TOML file; defaults to ``$KBQA_CONFIG``, then ``./kbqa.toml`` (which may be absent).
        **overrides: Top-level sections as dicts or models, e.g. ``llm={"backend": "transformers"}``.

    Raises:
        ConfigError: when a value is invalid, naming the setting.
    """
    path = Path(config or os.environ.get("KBQA_CONFIG") or "kbqa.toml")
    if (config or os.environ.get("KBQA_CONFIG")) and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"Settings file {path} {what} (set by --config or KBQA_CONFIG).")
    _check_variables()
    if path.is_dir():
        raise ConfigError(f"Settings file {path} is a folder, not a file: rename or remove it (kbqa reads "
                          f"./{path.name} when there is one).")
    if path.exists():
        try:
            path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"Settings file {path} cannot be read ({exc.strerror}); fix its permissions.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"Settings file {path} is not UTF-8 text; save it as UTF-8.") from None
    # A subclass per file: pydantic-settings reads the TOML path from the class's model_config.
    bound = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        return bound(**overrides)
    except tomllib.TOMLDecodeError as exc:
        bom = " (it starts with a byte-order mark: save it as UTF-8 without one)" if \
            path.read_bytes().startswith(b"\xef\xbb\xbf") else ""
        raise ConfigError(f"Settings file {path} is not valid TOML ({exc}){bom}; fix it.") from None
    except ValidationError as exc:
        errors = exc.errors()
        wheres = [_where(err["loc"]) for err in errors]
        problems = "; ".join(f"{w}: {_message(err)}{_suggestion(err)}" for w, err in zip(wheres, errors, strict=True))
        # The file is named where it sets a value at fault that no variable overrides.
        data = _read_toml(path) if path.is_file() else {}
        in_file = any(_sets(data, err["loc"]) and env_variable(err["loc"]) not in _environ() for err in errors)
        fix = [str(path)] if in_file else []
        fix += ["the KBQA_* variable named"] if any("(KBQA_" in w for w in wheres) else []
        raise ConfigError(f"Invalid settings ({problems}). Fix {' or '.join(fix) or 'the settings'}.") from exc


def _where(loc: tuple[Any, ...]) -> str:
    """``retrieval.top_k``, and the environment variable(s) setting it (or, for a section, its settings)."""
    dotted = ".".join(str(p) for p in loc)
    variable = env_variable(loc)
    named = sorted(k for k in _environ() if k == variable or k.startswith(variable + "__"))
    return f"{dotted} ({', '.join(named)})" if named else dotted


def env_variable(setting: str | tuple[Any, ...]) -> str:
    """The environment variable of a setting: ``llm.model`` (or ``("llm", "model")``) -> ``KBQA_LLM__MODEL``."""
    parts = setting.split(".") if isinstance(setting, str) else [str(p) for p in setting]
    return "KBQA_" + "__".join(parts).upper()


def _environ() -> set[str]:
    return {k.upper() for k in os.environ}


def _read_toml(path: Path) -> Any:
    """The settings file's values (None when it cannot be read now: then every value may be in it)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _sets(data: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the settings file's ``data`` sets what ``loc`` names (so fixing the file can help)."""
    if data is None:
        return True
    for part in loc:
        if not isinstance(data, dict) or str(part) not in data:
            return False
        data = data[str(part)]
    return True


def _message(err: Any) -> str:
    """pydantic's message, in the user's terms where it shows a regular expression."""
    if err["type"] == "string_pattern_mismatch" and "cuda" in str((err.get("ctx") or {}).get("pattern", "")):
        auto = "auto, " if "auto" in str(err["ctx"]["pattern"]) else ""
        return f"{err['input']!r} is no device: give {auto}cpu, mps, cuda or cuda:N"
    return str(err["msg"]).removeprefix("Value error, ")


def _check_variables() -> None:
    """Refuse a ``KBQA_*`` variable that names no setting: a typo must not pass silently.

    Raises:
        ConfigError: naming the variable and, when one is close, the setting meant.
    """
    sections = set(Settings.model_fields)
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith("KBQA_") or upper == "KBQA_CONFIG":
            continue
        section = upper[len("KBQA_"):].split("__", 1)[0].lower()
        if section not in sections:
            known = [f"KBQA_{s.upper()}__..." for s in sorted(sections)]
            close = difflib.get_close_matches(section, sections, n=1)
            hint = f" Did you mean KBQA_{close[0].upper()}__...?" if close else ""
            raise ConfigError(f"{name} names no kbqa setting (settings variables: {', '.join(known)}, "
                              f"KBQA_CONFIG).{hint}")
        field = upper[len("KBQA_"):].split("__", 1)[-1].lower()
        if "__" in upper and field in _section_fields(section):
            annotation = Settings.model_fields[section].annotation.model_fields[field].annotation  # type: ignore[union-attr]
            if typing.get_origin(annotation) is list:
                try:
                    parsed = json.loads(os.environ[name])
                except ValueError:
                    parsed = None
                if not isinstance(parsed, list):
                    raise ConfigError(f"{name} must be a JSON list, e.g. {name}='[\"kb.lan\"]' (got "
                                      f"{os.environ[name]!r}).")
        if "__" not in upper:  # pydantic-settings would parse it as JSON for the whole section
            fields = ", ".join(f"KBQA_{section.upper()}__{f.upper()}" for f in _section_fields(section))
            raise ConfigError(f"{name} names a whole settings section; set one setting at a time instead "
                              f"({fields}).")


def _suggestion(err: Any) -> str:
    """' (did you mean retrieval?)' for a misspelt section or setting name, else ''."""
    loc = err["loc"]
    if err["type"] != "extra_forbidden" or len(loc) not in (1, 2):
        return ""
    if len(loc) == 1:  # a setting written outside its [section]
        homes = [section for section in Settings.model_fields if loc[0] in _section_fields(section)]
        if homes:
            return f" (it belongs under [{homes[0]}]: {homes[0]}.{loc[0]})"
    known = list(Settings.model_fields) if len(loc) == 1 else _section_fields(str(loc[0]))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""


def _section_fields(section: str) -> list[str]:
    annotation = Settings.model_fields[section].annotation
    return list(annotation.model_fields) if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else []
