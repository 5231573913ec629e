"""The in-process ``transformers`` backend: a causal-LM folder, a GGUF or a ChatGLM2/3 checkpoint.

``build_transformers_llm`` resolves ``llm.model`` (an ``embedded:`` GGUF, a ``.gguf`` file, a model folder,
a ChatGLM2/3 checkpoint folder or a hub id), converts GGUF and ChatGLM checkpoints once into a cached
native folder (keyed by a fingerprint of the source, written under a temporary name then renamed), picks
device, dtype and quantization (``ConfigError`` when the machine cannot do what the settings ask), and
loads a LoRA or P-tuning v2 adapter. ``TransformersLLM`` then chats with the model's own prompt format
(the tokenizer's chat template, or ChatGLM's), trims the prompt to the context window and streams the
reply: ``generate`` runs in a worker thread and hands token ids over a queue; decoding happens here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from kbqa.errors import ConfigError, KBQAError, ModelUnavailable
from kbqa.llm import chatglm
from kbqa.llm.base import GenerationParams, apply_stop
from kbqa.llm.chatglm.checkpoint import read_json
from kbqa.models import EMBEDDED_LLMS, assemble_gguf, embedded_name, is_embedded, resolve_local_or_hub
from kbqa.schema import ChatMessage
from kbqa.settings import LLMSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_GIB = 1 << 30
#: Bytes per parameter by dtype / quantization (bitsandbytes keeps embeddings and norms in 16 bits).
_PARAM_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.1, "4bit": 0.6}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HUB_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenization_chatglm.py"]


# ---------------------------------------------------------------- prompts and trimming

class PromptCodec(Protocol):
    """Turns chat messages into prompt ids and generated ids into text, for one model family."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...
    @property
    def pad_token_id(self) -> int | None: ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]: ...
    def encode_text(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def visible_reply(self, text: str, finished: bool) -> str | None: ...


class TemplateCodec:
    """A transformers tokenizer and its chat template (a plain role-prefixed format when it has none)."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int], pad_token_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_token_id = pad_token_id

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except Exception:  # some templates refuse a system role: fold it into the first user turn
                system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
                turns = [t for t in turns if t["role"] != "system"]
                if system and turns:
                    turns[0] = {**turns[0], "content": f"{system}\n\n{turns[0]['content']}"}
                text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        else:
            text = (self.tokenizer.bos_token or "") + "".join(
                f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns) + "Assistant:"
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def visible_reply(self, text: str, finished: bool) -> str | None:
        return text


def fit_prompt(messages: Sequence[ChatMessage], codec: PromptCodec, budget: int) -> list[int]:
    """Prompt ids of at most ``budget`` tokens.

    The system messages and the last user turn are kept; the oldest history turns are dropped first
    (a user turn with the replies that follow it). If that is not enough, the middle of the last user
    message is cut out (it usually holds retrieved context; its instructions open it and the question
    closes it), marked with an ellipsis.

    Raises:
        ConfigError: even the system messages and a short last user message do not fit.
    """
    messages = list(messages)
    if not messages:
        raise ValueError("fit_prompt needs at least one message")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    last = users[-1] if users else len(messages) - 1
    system = [m for m in messages[:last] if m.role == "system"]
    history = [m for m in messages[:last] if m.role != "system"]
    tail = messages[last:]
    ids = codec.encode_chat(system + history + tail)
    while len(ids) > budget and history:
        history = history[1:]
        while history and history[0].role != "user":
            history = history[1:]
        ids = codec.encode_chat(system + history + tail)
    for _ in range(4):
        if len(ids) <= budget:
            return ids
        content = codec.encode_text(tail[0].content)
        keep = len(content) - (len(ids) - budget) - 8
        if keep < 32:
            break
        text = (codec.decode(content[:keep // 2]).rstrip("\ufffd") + "\n…\n"
                + codec.decode(content[-(keep - keep // 2):]).lstrip("\ufffd"))
        log.warning("prompt over %d tokens: cut %d tokens out of the last user message",
                    budget, len(content) - keep)
        tail = [ChatMessage(tail[0].role, text), *tail[1:]]
        ids = codec.encode_chat(system + tail)
    raise ConfigError(
        f"The prompt does not fit in {budget} tokens (llm.context_window minus llm.max_tokens), even "
        f"without history. Raise llm.context_window (up to the model's limit), lower llm.max_tokens, "
        f"or shorten the system prompt.")


# ---------------------------------------------------------------- the LLM

@dataclass
class Usage:
    """Token counts and timings of the last reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    #: From the call to the first generated token (prompt processing included).
    first_token_seconds: float | None = None


class _TokenQueue(BaseStreamer):
    """Receives token ids from ``generate`` (worker thread); decoding is left to the reader."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: Any) -> torch.BoolTensor:
        done = torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)
        return done.to(input_ids.device)  # type: ignore[return-value]


class TransformersLLM:
    """A transformers causal LM behind kbqa's ``LLM`` protocol.

    Args:
        model: A loaded causal LM (``GlmForCausalLM`` for ChatGLM2/3), possibly wrapped by peft.
        codec: Its prompt format and tokenizer.
        name: Shown in the UI and the API's model list.
        context_window: Tokens of prompt plus reply; capped at the model's maximum positions.
    """

    def __init__(self, model: Any, codec: PromptCodec, *, name: str, context_window: int) -> None:
        self.model = model
        self.codec = codec
        self.name = name
        limit = getattr(model.config, "max_position_embeddings", None) or context_window
        self.context_window = min(context_window, int(limit))
        #: Token ids that end a reply (passed to ``generate`` as ``eos_token_id``).
        self.stop_token_ids: tuple[int, ...] = codec.eos_token_ids
        self.last_usage = Usage()
        self._lock = threading.Lock()  # one generation at a time on this model

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes in this model's vocabulary."""
        return len(self.codec.encode_text(text))

    def prompt_ids(self, messages: Sequence[ChatMessage], max_tokens: int) -> list[int]:
        """The prompt for ``messages``, trimmed to leave ``max_tokens`` for the reply."""
        budget = self.context_window - max_tokens
        if budget < 16:
            raise ConfigError(f"llm.max_tokens ({max_tokens}) leaves no room for a prompt in "
                              f"llm.context_window ({self.context_window}); lower max_tokens.")
        return fit_prompt(messages, self.codec, budget)

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> str:
        """The whole reply (the streamed pieces, joined)."""
        return "".join(self.stream(messages, params))

    def stream(self, messages: Sequence[ChatMessage],
               params: GenerationParams | None = None) -> Iterator[str]:
        """The reply as it is generated; stops at a stop token, a stop string, or ``max_tokens``."""
        started = time.perf_counter()
        params = params or GenerationParams()
        yield from self.stream_ids(self.prompt_ids(messages, params.max_tokens), params, started=started)

    def stream_ids(self, prompt: list[int], params: GenerationParams, *,
                   started: float | None = None) -> Iterator[str]:
        """Stream the reply to prompt ids already in the model's format (``started``: for timings)."""
        started = time.perf_counter() if started is None else started
        tokens = _TokenQueue()
        cancel = threading.Event()
        errors: list[BaseException] = []
        worker = threading.Thread(target=self._generate, args=(prompt, params, tokens, cancel, errors),
                                  name="kbqa-generate", daemon=True)
        generated: list[int] = []
        stops = set(self.stop_token_ids)
        emitted = ""
        hold = max((len(s) for s in params.stop if s), default=1) - 1
        usage = self.last_usage = Usage(prompt_tokens=len(prompt))
        worker.start()
        try:
            while (item := tokens.queue.get()) is not None:
                usage.first_token_seconds = usage.first_token_seconds or time.perf_counter() - started
                generated += item
                text = self.codec.decode(generated[:-1] if generated[-1] in stops else generated)
                visible = None if text.endswith("\ufffd") else self.codec.visible_reply(text, False)
                if visible is None:
                    continue
                visible, stopped = apply_stop(visible, params.stop)
                ready = visible if stopped else visible[:len(visible) - hold]
                if len(ready) > len(emitted):
                    yield ready[len(emitted):]
                    emitted = ready
                if stopped:
                    return
            if generated and generated[-1] in stops:  # the stop token is not part of the reply
                generated.pop()
                usage.completion_tokens = 1
            visible = self.codec.visible_reply(self.codec.decode(generated), True) or ""
            visible = apply_stop(visible, params.stop)[0]
            if len(visible) > len(emitted):
                yield visible[len(emitted):]
        finally:
            cancel.set()
            worker.join()
            usage.completion_tokens += len(generated)
            usage.seconds = time.perf_counter() - started
        if errors:
            raise _user_error(errors[0]) from errors[0]

    def _generate(self, prompt: list[int], params: GenerationParams, tokens: _TokenQueue,
                  cancel: threading.Event, errors: list[BaseException]) -> None:
        try:
            # Honour torch.set_num_threads() made elsewhere: OpenMP keeps the thread count per OS thread.
            torch.set_num_threads(torch.get_num_threads())
            with self._lock, torch.inference_mode():
                device = self.model.device
                input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
                kwargs = generation_kwargs(params, self.stop_token_ids, self.codec.pad_token_id)
                if kwargs["do_sample"]:
                    torch.manual_seed(params.seed)
                stop = StoppingCriteriaList([_Cancelled(cancel)])
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    streamer=tokens, stopping_criteria=stop, **kwargs)
        except BaseException as exc:  # handed to the reading thread
            errors.append(exc)
        finally:
            tokens.end()


def generation_kwargs(params: GenerationParams, eos: Sequence[int], pad: int | None) -> dict[str, Any]:
    """``generate`` arguments for kbqa's generation parameters (temperature 0 = greedy)."""
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": params.temperature > 0,
                              "eos_token_id": list(eos) or None, "pad_token_id": pad}
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    if params.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = params.repetition_penalty
    return kwargs


def _user_error(exc: BaseException) -> BaseException:
    if isinstance(exc, torch.OutOfMemoryError):
        return ConfigError("The model ran out of memory while generating: lower llm.context_window or "
                           "llm.max_tokens, or use llm.quantization = '8bit'/'4bit' on a GPU.")
    return exc


# ---------------------------------------------------------------- device, dtype, quantization

@dataclass(frozen=True)
class Machine:
    """What this machine offers the backend (``detect_machine``; tests build their own)."""

    cuda: bool = False
    mps: bool = False
    cuda_bf16: bool = False
    bitsandbytes: bool = False
    #: Free memory in bytes per device kind ("cpu", "cuda", "mps"); absent = unknown.
    free_memory: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where and how the weights are loaded."""

    device: str
    dtype: str
    quantization: str = "none"

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def detect_machine() -> Machine:
    """Probe CUDA, MPS, bitsandbytes and free memory."""
    free: dict[str, int] = {}
    cuda = torch.cuda.is_available()
    if cuda:
        free["cuda"] = int(torch.cuda.mem_get_info()[0])
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    ram = _available_ram()
    if ram is not None:
        free["cpu"] = free["mps"] = ram
    return Machine(cuda=cuda, mps=mps, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
                   bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None, free_memory=free)


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def choose_placement(llm: LLMSettings, machine: Machine, n_params: int) -> Placement:
    """Device, dtype and quantization for ``n_params`` weights, as the settings ask and the machine allows.

    Raises:
        ConfigError: the choice cannot work here (no such device, 4-bit without CUDA, fp16 on a CPU,
            not enough memory), saying what to set instead.
    """
    device = llm.device
    if device == "auto":
        device = "cuda" if machine.cuda else "mps" if machine.mps else "cpu"
    elif device == "cuda" and not machine.cuda:
        raise ConfigError("llm.device = 'cuda', but torch sees no CUDA GPU here (a CPU-only torch build, or "
                          "no driver). Set llm.device = 'auto' or 'cpu'.")
    elif device == "mps" and not machine.mps:
        raise ConfigError("llm.device = 'mps', but Apple's MPS is not available here. "
                          "Set llm.device = 'auto'.")
    quant = llm.quantization
    if quant != "none" and device != "cuda":
        raise ConfigError(f"llm.quantization = '{quant}' needs a CUDA GPU (bitsandbytes); this machine "
                          f"runs the model on {device}. Set llm.quantization = 'none' (and llm.dtype = "
                          f"'bf16' to halve memory on a CPU).")
    if quant != "none" and not machine.bitsandbytes:
        raise ConfigError(f"llm.quantization = '{quant}' needs bitsandbytes: pip install 'kbqa[gpu]'.")
    dtype = llm.dtype
    free = machine.free_memory.get(device)
    if dtype == "auto":
        dtype = {"cuda": "bf16" if machine.cuda_bf16 else "fp16", "mps": "fp16", "cpu": "fp32"}[device]
        if device == "cpu" and free is not None and n_params * 4.2 > free:
            dtype = "bf16"  # fp32 would not fit (a 6B model needs ~25 GB in fp32)
            log.info("loading in bf16: fp32 weights would not fit in the free memory")
    if dtype == "fp16" and device == "cpu":
        raise ConfigError("llm.dtype = 'fp16' is not usable on a CPU (many fp16 kernels are missing or very "
                          "slow there). Set llm.dtype = 'bf16' (half the memory) or 'fp32'.")
    if dtype == "bf16" and device == "cuda" and not machine.cuda_bf16:
        raise ConfigError("This GPU has no bf16 support (it predates Ampere). Set llm.dtype = 'fp16'.")
    needed = n_params * _PARAM_BYTES[quant if quant != "none" else dtype] * 1.05
    if free is not None and needed > free:
        if device == "cuda" and quant != "4bit":
            hint = "use llm.quantization = '8bit' or '4bit'"
        elif dtype == "fp32":
            hint = "set llm.dtype = 'bf16' (half the memory), use a GPU, or a smaller model"
        else:
            hint = "free some memory, use a GPU, or a smaller model"
        raise ConfigError(f"The model needs about {needed / _GIB:.1f} GiB of {device} memory for its "
                          f"weights ({dtype if quant == 'none' else quant}), but only {free / _GIB:.1f} GiB "
                          f"is free: {hint}.")
    return Placement(device=device, dtype=dtype, quantization=quant)


def count_parameters(folder: Path) -> int:
    """Parameters stored in a model folder (read from safetensors headers; estimated for ``.bin``)."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                numel = 1
                for size in handle.get_slice(key).get_shape():
                    numel *= size
                total += numel
    if total:
        return total
    config_file = Path(folder) / "config.json"
    config = read_json(config_file) if config_file.is_file() else {}
    width = 4 if str(config.get("torch_dtype") or config.get("dtype")) == "float32" else 2
    return sum(p.stat().st_size for p in Path(folder).glob("*.bin")) // width


def load_model(folder: Path, placement: Placement) -> Any:
    """The causal LM of a native folder, placed as chosen; never runs a model's own Python code."""
    kwargs: dict[str, Any] = {"dtype": placement.torch_dtype, "trust_remote_code": False}
    if placement.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=placement.quantization == "8bit", load_in_4bit=placement.quantization == "4bit",
            bnb_4bit_compute_dtype=placement.torch_dtype, bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = {"": 0}
    elif placement.device != "cpu":
        kwargs["device_map"] = placement.device
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (ValueError, OSError) as exc:
        raise ModelUnavailable(f"Cannot load {folder} as a causal LM without remote code: {exc}") from exc
    return model.eval()


# ---------------------------------------------------------------- model resolution and conversion

def fingerprint(files: Sequence[Path]) -> str:
    """A quick key for source files: names, sizes, and the first and last MiB of each."""
    digest = hashlib.sha256(f"kbqa-convert-{chatglm.CONVERTER_VERSION}".encode())
    for path in sorted(files, key=lambda p: p.name):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def convert_gguf(gguf: Path, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A GGUF file dequantized once into a bf16 safetensors folder in ``cache_dir`` (reused afterwards)."""
    dst = Path(cache_dir) / "models" / f"{gguf.stem}-hf-{fingerprint([gguf])[:16]}"
    if (dst / "config.json").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("converting %s into %s (once)", gguf, dst)
    if progress:
        progress(0, 1)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # type: ignore[assignment]  # plain tensors now: save them as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        try:
            os.rename(tmp, dst)
        except OSError:
            if not (dst / "config.json").is_file():
                raise
    except KBQAError:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"Cannot convert {gguf} with transformers' GGUF reader: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(1, 1)
    return dst


def convert_chatglm_cached(src: Path, cache_dir: Path, progress: Progress | None = None,
                           name: str | None = None) -> Path:
    """A ChatGLM2/3 checkpoint converted once into ``cache_dir`` (keyed by its fingerprint)."""
    source = chatglm.read_source(src)
    names = ("config.json", "tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py")
    files = [*source.weight_files, *(p for n in names if (p := Path(src) / n).is_file())]
    name = name or Path(src).resolve().name
    dst = Path(cache_dir) / "models" / f"{name}-glm-{fingerprint(files)[:16]}"
    if chatglm.is_converted_chatglm(dst):
        return dst
    return chatglm.convert_chatglm(src, dst, progress)


def _download(spec: str, setting: str) -> Path:
    folder = Path(spec)
    for patterns in (["*.safetensors"], ["*.bin"]):  # one weight format, never both
        folder = resolve_local_or_hub(spec, setting, allow_patterns=_HUB_FILES + patterns)
        if any(folder.glob(patterns[0])):
            break
    return folder


def prepare_model(spec: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A native folder for ``llm.model``: converted (once, cached) when it is a GGUF or a ChatGLM checkpoint.

    Raises:
        ConfigError: an unknown embedded name.
        ModelUnavailable: the model cannot be found or read.
    """
    if is_embedded(spec):
        name = embedded_name(spec)
        if name not in EMBEDDED_LLMS:
            raise ConfigError(f"llm.model = '{spec}': no such embedded model ({', '.join(EMBEDDED_LLMS)}).")
        gguf = assemble_gguf(EMBEDDED_LLMS[name], cache_dir, "llm.model", progress)
        return convert_gguf(gguf, cache_dir, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        path = _download(spec, "llm.model")
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path, cache_dir, progress)
        raise ModelUnavailable(f"llm.model = '{spec}' is a file but not a .gguf; point it at a model folder.")
    if chatglm.is_converted_chatglm(path):
        return path
    if chatglm.is_chatglm_checkpoint(path):
        return convert_chatglm_cached(path, cache_dir, progress, name=Path(spec).name)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0], cache_dir, progress)
        raise ModelUnavailable(f"{path} has no config.json: not a transformers model folder"
                               + (" (set llm.model to one of its .gguf files)" if ggufs else "."))
    return path


def load_codec(folder: Path, model: Any) -> PromptCodec:
    """ChatGLM's tokenizer and prompt format for a converted ChatGLM folder, else the folder's tokenizer."""
    if chatglm.is_converted_chatglm(folder):
        marker = chatglm.read_marker(folder)
        glm_tokenizer = chatglm.ChatGLMTokenizer.from_folder(folder, marker["version"])
        return chatglm.ChatGLMCodec(glm_tokenizer, marker["eos_token_ids"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    pad = model.generation_config.pad_token_id
    pad = tokenizer.pad_token_id if pad is None else pad
    return TemplateCodec(tokenizer, eos_ids, eos_ids[0] if pad is None and eos_ids else pad)


def apply_adapter(model: Any, spec: str, placement: Placement) -> Any:
    """The model with a LoRA (merged unless quantized) or a P-tuning v2 prefix from ``llm.adapter``."""
    folder = resolve_local_or_hub(spec, "llm.adapter")
    config = model.config
    is_glm = getattr(config, "model_type", "") == "glm"
    if chatglm.is_ptuning_checkpoint(folder) and not chatglm.is_lora(folder):
        if not is_glm:
            raise ConfigError(f"llm.adapter = '{spec}' is a P-tuning v2 checkpoint, which applies to "
                              f"ChatGLM2/3 models only.")
        keys, values = chatglm.load_prefix(folder, num_layers=config.num_hidden_layers,
                                           num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim)
        chatglm.attach_prefix(model, keys, values)
        return model
    if not chatglm.is_lora(folder):
        raise ConfigError(f"llm.adapter = '{spec}' is neither a LoRA folder (adapter_config.json) nor a "
                          f"P-tuning v2 checkpoint (config.json with pre_seq_len).")
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as tmp:
        if is_glm and chatglm.is_chatglm_lora(folder):
            dims = (config.num_attention_heads, config.num_key_value_heads, config.head_dim)
            folder = chatglm.convert_lora(folder, Path(tmp), dims)
        model = PeftModel.from_pretrained(model, folder)
    return model.merge_and_unload() if placement.quantization == "none" else model


def build_transformers_llm(settings: LLMSettings, cache_dir: Path,
                           progress: Progress | None = None) -> TransformersLLM:
    """The ``transformers`` backend for ``settings`` (conversions are cached in ``cache_dir``).

    Raises:
        ConfigError: settings this machine cannot honour.
        ModelUnavailable: the model or adapter cannot be found or read.
    """
    folder = prepare_model(settings.model, Path(cache_dir), progress)
    placement = choose_placement(settings, detect_machine(), count_parameters(folder))
    log.info("loading %s on %s (%s, quantization %s)", folder, placement.device, placement.dtype,
             placement.quantization)
    model = load_model(folder, placement)
    codec = load_codec(folder, model)
    if settings.adapter:
        model = apply_adapter(model, settings.adapter, placement)
    name = embedded_name(settings.model) if is_embedded(settings.model) else Path(settings.model).name
    return TransformersLLM(model, codec, name=name, context_window=settings.context_window)
