"""The LLM protocol every backend implements: ``generate`` and ``stream`` over chat messages."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
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


#: Set by a caller whose client may leave while its request waits for the model (the API): a backend that
#: finds the event set when its turn comes does not start, and stops if it has started. Worker threads started
#: with the context (``anyio.to_thread``) see it.
ABANDONED: ContextVar[threading.Event | None] = ContextVar("kbqa_abandoned", default=None)


def abandoned() -> Callable[[], bool]:
    """Whether the current request's client has left (always False outside such a request); read it where
    the generation is called, not in a thread of the backend's own."""
    gone = ABANDONED.get()
    return gone.is_set if gone is not None else _never


def _never() -> bool:
    return False


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
