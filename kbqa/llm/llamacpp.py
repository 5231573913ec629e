"""In-process llama.cpp backend (``xllamacpp``) for GGUF chat models.

The model's own chat template (stored in the GGUF) formats the messages. Streaming runs the
blocking ``handle_chat_completions`` call in a worker thread that feeds a queue; closing the
generator tells llama.cpp to stop. Token counts come from the GGUF's vocabulary, converted once to
a ``tokenizer.json`` in the cache.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kbqa.errors import ContextLengthExceeded, KBQAError, ModelUnavailable
from kbqa.llm.base import GenerationParams, Usage, abandoned
from kbqa.schema import ChatMessage

log = logging.getLogger(__name__)

_DONE = object()


class LlamaCppLLM:
    """A GGUF model served in-process by llama.cpp.

    Args:
        model_path: The ``.gguf`` file.
        name: Display name.
        context_window: ``n_ctx`` (prompt plus answer).
        threads: CPU threads; 0 = all cores.
        gpu_layers: Layers offloaded to a GPU (-1 = all); 0 on CPU-only builds.
        tokenizer_cache: Folder for the converted tokenizer (for token counting).
    """

    def __init__(self, model_path: Path, name: str, context_window: int = 4096, threads: int = 0,
                 gpu_layers: int = 0, tokenizer_cache: Path | None = None) -> None:
        try:
            import xllamacpp as xlc
        except ImportError as exc:
            raise ModelUnavailable("The llamacpp backend needs xllamacpp: run `make` "
                                   "(pip install xllamacpp==2026.10.11549).") from exc
        if not Path(model_path).is_file():
            raise ModelUnavailable(f"GGUF file {model_path} not found; check llm.model.")
        params = xlc.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = context_window
        params.n_parallel = 1
        params.warmup = False
        params.verbosity = -1
        n_threads = threads or os.cpu_count() or 2
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.n_gpu_layers = gpu_layers
        try:
            self._server = xlc.Server(params)
        except Exception as exc:
            raise ModelUnavailable(f"llama.cpp could not load {model_path} ({str(exc).rstrip('.')}): is it a GGUF chat "
                                   "model? Check llm.model (KBQA_LLM__MODEL).") from exc
        self.name = name
        self.context_window = context_window
        self.model_path = Path(model_path)
        self._tokenizer_cache = tokenizer_cache
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one generation at a time (n_parallel = 1)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's vocabulary."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.model_path, self._tokenizer_cache)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _request(self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool) -> dict[str, Any]:
        req: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "repeat_penalty": params.repetition_penalty, "seed": params.seed, "stream": stream,
            "cache_prompt": params.reuse_prompt_cache,
        }
        if params.stop:
            req["stop"] = list(params.stop)
        return req

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> str:
        """The whole reply."""
        return "".join(self.stream(messages, params))

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None,
               usage: Usage | None = None) -> Iterator[str]:
        """Reply pieces as llama.cpp produces them; ``usage`` gets llama.cpp's token counts."""
        req = self._request(messages, params or GenerationParams(), stream=True)
        req["stream_options"] = {"include_usage": True}
        usage = usage if usage is not None else Usage()
        started = time.perf_counter()
        pieces: queue.Queue[Any] = queue.Queue()
        cancel = threading.Event()
        left = abandoned()

        def stopped() -> bool:
            return cancel.is_set() or left()

        def on_chunk(chunk: Any) -> bool:
            if isinstance(chunk, dict) and "error" in chunk:
                pieces.put(_error(chunk))
                return True
            if not isinstance(chunk, dict):
                return stopped()
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    usage.first_token_seconds = usage.first_token_seconds or time.perf_counter() - started
                    usage.completion_tokens += 1  # one token per piece; exact counts come with the last chunk
                    pieces.put(text)
                if choice.get("finish_reason") in ("stop", "length"):
                    usage.finish_reason = choice["finish_reason"]
            counts = chunk.get("usage") or {}
            usage.prompt_tokens = counts.get("prompt_tokens", usage.prompt_tokens)
            usage.completion_tokens = counts.get("completion_tokens", usage.completion_tokens)
            return stopped()

        def run() -> None:
            with self._lock:
                try:
                    if stopped():  # its reader or its client left while it waited for the model
                        return
                    result = self._server.handle_chat_completions(req, on_chunk)
                    if isinstance(result, dict) and "error" in result:
                        pieces.put(_error(result))
                except Exception as exc:  # surfaced to the consumer below
                    pieces.put(KBQAError(f"llama.cpp failed: {exc}"))
                finally:
                    pieces.put(_DONE)

        worker = threading.Thread(target=run, name="llamacpp-generate", daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()
            usage.seconds = time.perf_counter() - started


def _error(result: dict[str, Any]) -> KBQAError:
    err = result.get("error") or {}
    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    if isinstance(err, dict) and err.get("type") == "exceed_context_size_error":
        # llama.cpp's own message ends "try increasing it": say which setting that is instead.
        size = (f"{err['n_prompt_tokens']} tokens; the context holds {err['n_ctx']}"
                if err.get("n_prompt_tokens") and err.get("n_ctx") else message.split(", try increasing it")[0])
        return ContextLengthExceeded(f"The prompt does not fit the model's context ({size}): "
                           "raise llm.context_window, or send less text (a shorter message or history; for "
                           "answers from a knowledge base, lower retrieval.top_k or splitter.chunk_size).")
    return KBQAError(f"llama.cpp: {message}")


def _load_tokenizer(model_path: Path, cache: Path | None) -> Any:
    """The GGUF's tokenizer as a ``tokenizers.Tokenizer``, converted once and cached as JSON."""
    from tokenizers import Tokenizer

    stat = model_path.stat()
    target = (cache or model_path.parent) / f"{model_path.stem}-{stat.st_size}.tokenizer.json"
    if target.is_file():
        return Tokenizer.from_file(str(target))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.partial")
    tok.backend_tokenizer.save(str(tmp))
    os.replace(tmp, target)
    return Tokenizer.from_file(str(target))
