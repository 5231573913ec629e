"""The llamacpp backend's request, without loading a model."""

from __future__ import annotations

from kbqa.llm.base import GenerationParams
from kbqa.llm.llamacpp import LlamaCppLLM
from kbqa.schema import ChatMessage


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
