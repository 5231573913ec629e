"""Test doubles for the model protocols: deterministic, instant, and inspectable."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from kbqa.embeddings import ModelProfile
from kbqa.llm.base import GenerationParams, Usage, abandoned, apply_stop
from kbqa.schema import ChatMessage


class FakeEmbedder:
    """Hashed character unigrams and bigrams: texts sharing characters get similar vectors."""

    def __init__(self, dim: int = 256, name: str = "fake:ngrams", max_chars: int = 10_000,
                 threshold: float = 0.2) -> None:
        self.name = name
        self.dim = dim
        self.max_chars = max_chars
        self.profile = ModelProfile(score_threshold=threshold)
        self.calls: list[int] = []

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        t = re.sub(r"\s+", " ", text.lower())
        grams = list(t) + [t[i:i + 2] for i in range(len(t) - 1)]
        for g in grams:
            h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little")
            v[h % self.dim] += 1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def too_long(self, texts: Sequence[str]) -> list[bool]:
        return [len(t) > self.max_chars for t in texts]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]


class FakeLLM:
    """Records the messages it gets; replies with scripted text (or the last user line by default)."""

    def __init__(self, replies: Sequence[str] = (), context_window: int = 4096, name: str = "fake-llm") -> None:
        self.name = name
        self.context_window = context_window
        self.replies = list(replies)
        self.prompts: list[list[ChatMessage]] = []
        self.params: list[GenerationParams] = []
        #: Seconds to wait before each piece (a slow model), and how many streams are open now.
        self.delay = 0.0
        self.streaming = 0
        #: Raised by ``stream`` when set (e.g. the context overflow a real backend reports).
        self.error: Exception | None = None
        #: Held by a test to stand for the model busy with another request: a stream waits for it, then starts
        #: nothing if its client left meanwhile, as the real backends do (``kbqa.llm.base.abandoned``).
        self.busy = threading.Lock()
        self.skipped = 0

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 2)

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> str:
        return "".join(self.stream(messages, params))

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None,
               usage: Usage | None = None) -> Iterator[str]:
        """One word per piece (and per token); ``max_tokens`` counts words; ``delay`` seconds before each."""
        params = params or GenerationParams()
        if self.error is not None:
            raise self.error
        left = abandoned()
        with self.busy:
            if left():
                self.skipped += 1
                return
        self.prompts.append(list(messages))
        self.params.append(params)
        reply = self.replies.pop(0) if self.replies else "fake answer"
        reply, _ = apply_stop(reply, params.stop)
        words = re.findall(r"\S+\s*", reply)
        usage = usage if usage is not None else Usage()
        usage.prompt_tokens = sum(self.count_tokens(m.content) for m in messages)
        if len(words) > params.max_tokens:
            words, usage.finish_reason = words[:params.max_tokens], "length"
        self.streaming += 1
        try:
            for word in words:
                time.sleep(self.delay)
                usage.completion_tokens += 1
                yield word
        finally:
            self.streaming -= 1
