"""The LLM protocol every backend implements: ``generate`` and ``stream`` over chat messages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kbqa.schema import ChatMessage


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one generation. Temperature 0 means greedy decoding."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.9
    #: Small models loop on list answers at temperature 0; 1.15 stops that (see MODELS.md).
    repetition_penalty: float = 1.15
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 42
    #: llama.cpp: start from the previous request's KV cache where the prompts share a prefix. Faster for
    #: multi-turn chat, but the cached prefix was computed in other batches, so the logits differ in the last
    #: bits and a greedy reply to the same prompt can change with what was asked before. kbqa's answers turn
    #: it off: the same question over the same passages always gets the same answer.
    reuse_prompt_cache: bool = True


@dataclass
class Usage:
    """What one reply cost, filled in by the backend while it generates (the API's ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: ``stop`` (the model ended its reply, or a stop string came) or ``length`` (``max_tokens`` ran out).
    finish_reason: str = "stop"
    seconds: float = 0.0
    #: From the call to the first generated token (prompt processing included).
    first_token_seconds: float | None = None


@runtime_checkable
class LLM(Protocol):
    """A chat model. Backends apply their own chat template to ``messages``."""

    #: Human-readable model name (shown in the UI and the API's model list).
    name: str
    #: Tokens the model can attend to: prompt plus answer.
    context_window: int

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes in this model's vocabulary."""
        ...

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> str:
        """The whole reply to ``messages``."""
        ...

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None,
               usage: Usage | None = None) -> Iterator[str]:
        """The reply to ``messages`` as it is generated, in text pieces; ``usage`` is filled in as it goes."""
        ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string. Returns the kept text and whether a stop was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
