"""The llamacpp backend's request, without loading a model."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path

import pytest

from kbqa.bootstrap import build_llm
from kbqa.errors import ConfigError
from kbqa.llm.base import ABANDONED, GenerationParams
from kbqa.llm.llamacpp import LlamaCppLLM
from kbqa.schema import ChatMessage
from kbqa.settings import load_settings


def test_requests_follow_the_prompt_cache_setting() -> None:
    llm = object.__new__(LlamaCppLLM)  # _request reads only its arguments
    msgs = [ChatMessage("user", "hi")]
    assert llm._request(msgs, GenerationParams(), stream=True)["cache_prompt"] is True
    assert llm._request(msgs, GenerationParams(reuse_prompt_cache=False), stream=True)["cache_prompt"] is False


def test_a_prompt_over_the_context_is_openais_context_length_exceeded() -> None:
    from kbqa.llm.llamacpp import _error
    from kbqa.openai_format import error_code

    # the error body llama.cpp's server code returns (xllamacpp) for an over-long prompt
    over = _error({"error": {"type": "exceed_context_size_error", "message": "the request exceeds the available "
                                                                              "context size (4096 tokens)"}})
    assert error_code(over) == "context_length_exceeded" and "llm.context_window" in str(over)
    counted = _error({"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096,
                                "message": "request (5000 tokens) exceeds the available context size (4096 tokens), "
                                           "try increasing it"}})
    assert "(5000 tokens; the context holds 4096): raise llm.context_window" in str(counted)
    assert "try increasing it" not in str(counted)  # llama.cpp's hint names no setting: kbqa's does
    assert error_code(_error({"error": {"type": "server_error", "message": "boom"}})) == "kbqa_error"


def test_the_transformers_backends_settings_are_refused_with_llamacpp(tmp_path: Path) -> None:
    # They ran without effect, unsaid: llm.quantization = "4bit" from the GPU table gave a full-precision CPU run.

    for llm, named in (({"quantization": "4bit"}, "llm.quantization = '4bit'"),
                       ({"device": "cuda", "dtype": "fp16"}, "llm.dtype = 'fp16', llm.device = 'cuda'"),
                       ({"adapter": "lora"}, "llm.adapter = 'lora'")):
        with pytest.raises(ConfigError, match=rf"{named}.*appl(y|ies) to llm.backend = 'transformers' only"):
            build_llm(load_settings(llm=llm).llm, tmp_path)


class FakeServer:
    """Stands for xllamacpp's server: records the requests it is given, replies one word."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def handle_chat_completions(self, req: dict, on_chunk) -> None:  # type: ignore[no-untyped-def]
        self.requests.append(req)
        on_chunk({"choices": [{"delta": {"content": "word"}, "finish_reason": "stop"}]})


def test_a_stream_whose_client_left_while_it_waited_for_the_model_asks_llamacpp_nothing() -> None:
    llm = object.__new__(LlamaCppLLM)
    llm._lock, llm._server = threading.Lock(), FakeServer()
    assert list(llm.stream([ChatMessage("user", "hi")])) == ["word"]  # the fake answers when asked
    gone = threading.Event()
    token = ABANDONED.set(gone)
    context = contextvars.copy_context()  # as anyio's worker threads get it
    ABANDONED.reset(token)
    got: list[str] = []
    reader = threading.Thread(target=context.run, args=(lambda: got.extend(llm.stream([ChatMessage("user", "hi")])),))
    with llm._lock:  # the model is busy with another request
        reader.start()
        time.sleep(0.3)
        gone.set()  # its client left
    reader.join(10)
    assert not reader.is_alive() and got == [] and len(llm._server.requests) == 1
