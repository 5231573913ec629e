"""Per browser session: which conversation is current, and the answer being streamed into it.

A new chat (Clear chat, the chat box's clear icon, another knowledge base, a deleted knowledge base) starts a new
conversation: the answer still streaming must stop and none of it may land in the new chat. Gradio sends an
event's outputs in the order they are made, so the new chat's empty output is sent only once the old answer's
stream has ended (or a few seconds have passed, if the model is still reading its prompt and sends nothing).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class _Answer:
    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


class Conversations:
    """Conversation numbers and running answers, keyed by browser session."""

    def __init__(self, settle_seconds: float = 5.0) -> None:
        self.settle_seconds = settle_seconds
        self._numbers: dict[str, int] = {}
        self._answers: dict[str, _Answer] = {}
        self._lock = threading.Lock()

    def current(self, key: str) -> int:
        """The number of the session's current conversation."""
        with self._lock:
            return self._numbers.get(key, 0)

    @contextlib.contextmanager
    def answering(self, key: str) -> Iterator[threading.Event]:
        """While an answer streams: yields the event that stops it (at the model's next word)."""
        answer = _Answer()
        with self._lock:
            self._answers[key] = answer
        try:
            yield answer.stop
        finally:
            with self._lock:
                if self._answers.get(key) is answer:
                    del self._answers[key]
            answer.ended.set()

    def stop(self, key: str) -> _Answer | None:
        """Stop the answer the session is being given, if any: what came of it stays in its chat."""
        with self._lock:
            answer = self._answers.get(key)
        if answer is not None:
            answer.stop.set()
        return answer

    def new(self, key: str) -> None:
        """Start a new conversation: stop the running answer and wait until its stream has ended."""
        with self._lock:
            self._numbers[key] = self._numbers.get(key, 0) + 1
        answer = self.stop(key)
        if answer is not None:
            answer.ended.wait(self.settle_seconds)
