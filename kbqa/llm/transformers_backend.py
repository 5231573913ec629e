"""The in-process ``transformers`` backend: the ``TransformersLLM`` class and ``build_transformers_llm``."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from kbqa.errors import ConfigError, ContextLengthExceeded, KBQAError, ModelUnavailable
from kbqa.llm import chatglm
from kbqa.llm.base import GenerationParams, Usage, abandoned, apply_stop
from kbqa.llm.chatglm.checkpoint import read_json
from kbqa.llm.model_cache import Progress, prepare_model
from kbqa.llm.placement import Machine, Placement, choose_placement, count_parameters, detect_machine
from kbqa.llm.prompting import PromptCodec, fit_prompt, load_codec
from kbqa.models import embedded_name, is_embedded, load_failure, resolve_local_or_hub, weights_errors
from kbqa.schema import ChatMessage
from kbqa.settings import LLMSettings, env_variable

log = logging.getLogger(__name__)


def build_transformers_llm(settings: LLMSettings, cache_dir: Path,
                           progress: Progress | None = None) -> TransformersLLM:
    """The ``transformers`` backend for ``settings`` (conversions are cached in ``cache_dir``).

    Resolves ``llm.model`` to a native folder (converting a GGUF or a ChatGLM2/3 checkpoint once), picks
    device, dtype and quantization for this machine, loads the model with its prompt format, then the
    LoRA or P-tuning v2 adapter of ``llm.adapter``.

    Raises:
        ConfigError: settings this machine cannot honour.
        ModelUnavailable: the model or adapter cannot be found or read.
    """
    machine = detect_machine()
    # Device, dtype, quantization and memory: refused before any conversion (minutes and gigabytes for a 6B
    # checkpoint). A local folder's weights are counted where they are; a hub id or a GGUF only once ready.
    source = Path(settings.model).expanduser()
    try:
        weights = count_parameters(source) if source.is_dir() else 0
    except Exception:  # a damaged shard: the conversion names it clearly, so let it
        weights = 0
    choose_placement(settings, machine, weights)
    with _naming("llm.model", settings.model, ModelUnavailable):
        folder = prepare_model(settings.model, Path(cache_dir), progress)
        try:
            placement, model, codec = _load(settings, machine, folder)
        except ModelUnavailable:
            damage = _damage(folder) if folder.is_relative_to(Path(cache_dir) / "models") else None
            if damage is None:  # not ours, or whole: the model itself cannot load here (e.g. too big for the GPU)
                raise
            # A conversion of ours whose files were damaged or removed since: make it again.
            log.warning("the cached conversion %s is damaged (%s): converting %s again", folder, damage,
                        settings.model)
            shutil.rmtree(folder)
            folder = prepare_model(settings.model, Path(cache_dir), progress)
            placement, model, codec = _load(settings, machine, folder)
    if settings.adapter:
        with _naming("llm.adapter", settings.adapter, KBQAError):
            model = apply_adapter(model, settings.adapter, placement)
    elif chatglm.is_converted_chatglm(folder) and chatglm.read_marker(folder).get("ptuning_prefix"):
        # Said at every load, not only at the conversion: the answers come from the model without the fine-tune.
        log.warning("llm.model %s holds a P-tuning prefix, which is not used: set llm.adapter to that folder too "
                    "to use it", settings.model)
    name = embedded_name(settings.model) if is_embedded(settings.model) else Path(settings.model).name
    return TransformersLLM(model, codec, name=name, context_window=settings.context_window)


def _damage(folder: Path) -> str | None:
    """What is wrong with the files of a model folder (a JSON file that does not parse, a safetensors file cut
    short, a shard its index names but that is missing), or None when they look whole."""
    from safetensors import safe_open

    try:
        for path in folder.glob("*.json"):
            index = json.loads(path.read_text(encoding="utf-8"))
            if path.name.endswith(".index.json"):
                missing = sorted({f for f in index.get("weight_map", {}).values() if not (folder / f).is_file()})
                if missing:
                    return f"{missing[0]} is missing"
        for path in folder.glob("*.safetensors"):
            with safe_open(str(path), framework="pt"):
                pass
    except Exception as exc:  # a JSON, Unicode, OS or safetensors error: damaged
        return f"{exc}"
    return None


def _load(settings: LLMSettings, machine: Machine, folder: Path) -> tuple[Placement, Any, PromptCodec]:
    placement = choose_placement(settings, machine, count_parameters(folder))
    log.info("loading %s on %s (%s, quantization %s)", folder, placement.device, placement.dtype,
             placement.quantization)
    model = load_model(folder, placement)
    return placement, model, load_codec(folder, model)


#: peft adapter types that add virtual tokens instead of changing weights (``PeftConfig.is_prompt_learning``).
_PROMPT_LEARNING = frozenset(("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING",
                              "ADAPTION_PROMPT", "CPT"))


@contextmanager
def _naming(setting: str, value: str, kind: type[KBQAError]) -> Iterator[None]:
    """Errors of ``kind`` that do not say which setting gave the path get told (the converters and loaders
    below also serve ``kbqa convert-chatglm``, where the path is an argument)."""
    try:
        yield
    except kind as exc:
        if setting in str(exc):
            raise
        try:
            named = type(exc)(f"{exc} (from {setting} = '{value}': change {setting} or {env_variable(setting)})")
        except TypeError:  # an error class built from other arguments: as it is, with its own cause
            raise exc from exc.__cause__  # noqa: B904 - the cause is kept, not the TypeError
        named.param = exc.param
        raise named from exc


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
    def __init__(self, halted: Callable[[], bool]) -> None:
        self.halted = halted

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: Any) -> torch.BoolTensor:
        done = torch.full((input_ids.shape[0],), self.halted(), dtype=torch.bool)
        return done.to(input_ids.device)  # type: ignore[return-value]


class TransformersLLM:
    """A transformers causal LM behind kbqa's ``LLM`` protocol.

    It chats in the model's own prompt format (the codec's), trims the prompt to the context window and
    streams the reply: ``generate`` runs in a worker thread and hands token ids over a queue; decoding
    happens in the reading thread.

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
        self._window = (f"llm.context_window ({context_window}, capped at the model's {limit} positions)"
                        if self.context_window < context_window else f"llm.context_window ({context_window})")
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
            raise ContextLengthExceeded(f"max_tokens ({max_tokens}: llm.max_tokens, or the request's) leaves no room "
                                        f"for a prompt in {self._window}; lower max_tokens.")
        return fit_prompt(messages, self.codec, budget)

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> str:
        """The whole reply (the streamed pieces, joined)."""
        return "".join(self.stream(messages, params))

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None,
               usage: Usage | None = None) -> Iterator[str]:
        """The reply as it is generated; stops at a stop token, a stop string, or ``max_tokens``."""
        started = time.perf_counter()
        params = params or GenerationParams()
        yield from self.stream_ids(self.prompt_ids(messages, params.max_tokens), params, started=started,
                                   usage=usage)

    def stream_ids(self, prompt: list[int], params: GenerationParams, *,
                   started: float | None = None, usage: Usage | None = None) -> Iterator[str]:
        """Stream the reply to prompt ids already in the model's format (``started``: for timings).

        ``usage`` (also kept as ``last_usage``) gets the token counts, timings and finish reason.
        """
        started = time.perf_counter() if started is None else started
        tokens = _TokenQueue()
        cancel = threading.Event()
        left = abandoned()

        def halted() -> bool:
            return cancel.is_set() or left()

        errors: list[BaseException] = []
        worker = threading.Thread(target=self._generate, args=(prompt, params, tokens, halted, errors),
                                  name="kbqa-generate", daemon=True)
        generated: list[int] = []
        stops = set(self.stop_token_ids)
        emitted = ""
        hold = max((len(s) for s in params.stop if s), default=1) - 1
        usage = self.last_usage = usage if usage is not None else Usage()
        usage.prompt_tokens = len(prompt)
        worker.start()
        try:
            while (item := tokens.queue.get()) is not None:
                usage.first_token_seconds = usage.first_token_seconds or time.perf_counter() - started
                generated += item
                text = self.codec.decode(generated[:-1] if generated[-1] in stops else generated)
                # A character still arriving byte by byte (U+FFFD at the end) shows once whole; what comes before it
                # is read now, so a stop string before it ends generation at once.
                visible = self.codec.visible_reply(text.rstrip("\ufffd"), False)
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
            elif len(generated) >= params.max_tokens:
                usage.finish_reason = "length"
            visible = self.codec.visible_reply(self.codec.decode(generated), True) or ""
            visible, stopped = apply_stop(visible, params.stop)
            if stopped:  # the reply ends at a stop string, whatever else ended generation
                usage.finish_reason = "stop"
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
                  halted: Callable[[], bool], errors: list[BaseException]) -> None:
        try:
            # Honour torch.set_num_threads() made elsewhere: OpenMP keeps the thread count per OS thread.
            torch.set_num_threads(torch.get_num_threads())
            with self._lock, torch.inference_mode():
                if halted():  # its reader or its client left while it waited for the model
                    return
                device = self.model.device
                input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
                kwargs = generation_kwargs(params, self.stop_token_ids, self.codec.pad_token_id)
                if kwargs["do_sample"]:
                    torch.manual_seed(params.seed)
                stop = StoppingCriteriaList([_Cancelled(halted)])
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
        kwargs["logits_processor"] = LogitsProcessorList([RecentRepetitionPenalty(params.repetition_penalty)])
    return kwargs


class RecentRepetitionPenalty(LogitsProcessor):
    """The repetition penalty over the last ``last_n`` tokens only, as llama.cpp applies it (its default 64).

    transformers' own ``repetition_penalty`` weighs every token of the prompt, so the passages' words, which an
    answer should copy ("4,000 projects"), would count against the answer as repeats: the penalty is there to
    stop a small model looping, which a window of recent tokens does. Both backends then read the setting alike.
    """

    def __init__(self, penalty: float, last_n: int = 64) -> None:
        self.penalty = penalty
        self.last_n = last_n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        recent = input_ids[:, -self.last_n:]
        picked = torch.gather(scores, 1, recent)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return cast(torch.FloatTensor, scores.scatter(1, recent, picked))


def _user_error(exc: BaseException) -> BaseException:
    if isinstance(exc, torch.OutOfMemoryError):
        return ConfigError("The model ran out of memory while generating: lower llm.context_window or "
                           "llm.max_tokens, or use llm.quantization = '8bit'/'4bit' on a GPU.")
    return exc


def load_model(folder: Path, placement: Placement) -> Any:
    """The causal LM of a native folder, placed as chosen; never runs a model's own Python code."""
    kwargs: dict[str, Any] = {"dtype": placement.torch_dtype, "trust_remote_code": False}
    if placement.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=placement.quantization == "8bit", load_in_4bit=placement.quantization == "4bit",
            bnb_4bit_compute_dtype=placement.torch_dtype, bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = {"": int(placement.device.partition(":")[2] or 0)}
    elif placement.device != "cpu":
        kwargs["device_map"] = placement.device
    _check_causal_lm(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise ConfigError(f"Loading {folder} (llm.model, KBQA_LLM__MODEL) ran out of {placement.device} memory: "
                          "use a smaller model, llm.quantization = '8bit' or '4bit' on a GPU, or free memory.") from exc
    except weights_errors() as exc:  # RuntimeError: weights that do not fit config.json
        first = load_failure(exc)
        if "ignore_mismatched_sizes" in str(exc) or "size mismatch" in str(exc):
            first = "its weights do not have the shapes its config.json gives (is config.json the model's own?)"
        raise ModelUnavailable(f"Cannot load {folder} (llm.model, KBQA_LLM__MODEL) as a causal LM without remote "
                               f"code: {first}") from exc
    return model.eval()


def _check_causal_lm(folder: Path) -> None:
    """Refuse a folder whose config.json names a model that does not write text (an embedding model: transformers
    would load it with a new, random output layer, and it would answer gibberish without a word)."""
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # transformers says what is wrong with it
    if architectures and not any(str(a).endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
                                 for a in architectures):
        raise ModelUnavailable(f"{folder} (llm.model, KBQA_LLM__MODEL) holds a {', '.join(map(str, architectures))}, "
                               "not a language model that writes text: set llm.model to a chat model (an embedding "
                               "model such as text2vec belongs in embedding.model).")


def apply_adapter(model: Any, spec: str, placement: Placement) -> Any:
    """The model with a LoRA (merged unless quantized) or a P-tuning v2 prefix from ``llm.adapter``."""
    folder = resolve_local_or_hub(spec, "llm.adapter", embedded=False)
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
    peft_type = str(read_json(folder / "adapter_config.json").get("peft_type") or "LORA")
    if peft_type in _PROMPT_LEARNING:  # virtual tokens: nothing to merge (and unmerged, untried here)
        raise ConfigError(f"llm.adapter = '{spec}' is a peft {peft_type} adapter, which cannot be merged into "
                          "the weights; kbqa loads LoRA-style adapters (peft) and P-tuning v2 checkpoints "
                          "(ChatGLM's ptuning recipe).")
    from peft import PeftModel

    mismatch = f"llm.adapter = '{spec}' does not fit llm.model: was it trained on another base model?"
    layers = chatglm.lora_layers(folder)
    if layers and max(layers) >= config.num_hidden_layers:  # peft would drop the extra layers' weights unsaid
        raise ConfigError(f"{mismatch} (it holds weights for layer {max(layers) + 1}; the model has "
                          f"{config.num_hidden_layers} layers)")
    with tempfile.TemporaryDirectory() as tmp:
        if is_glm and chatglm.is_chatglm_lora(folder):
            dims = (config.num_attention_heads, config.num_key_value_heads, config.head_dim)
            folder = chatglm.convert_lora(folder, Path(tmp), dims)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = PeftModel.from_pretrained(model, folder)
        except (RuntimeError, ValueError, KeyError) as exc:  # size mismatches; no matching modules
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            first = next((line for line in lines if "size mismatch" in line), lines[0])[:300]
            raise ConfigError(f"{mismatch} ({first})") from exc
    for warning in caught:  # transformers' deprecation notices, raised inside peft, are not the user's business
        text = str(warning.message)
        if "missing adapter keys" in text:  # modules it was meant for got none: fewer layers, other names
            raise ConfigError(f"{mismatch} (it has no weights for some of the modules it names: "
                              f"{text.split(':', 1)[-1].strip()[:200]}…)")
        if not issubclass(warning.category, FutureWarning):
            log.warning("llm.adapter: %s", text[:300])
    return model.merge_and_unload() if placement.quantization == "none" else model
