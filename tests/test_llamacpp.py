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
