"""OpenAI's wire format as kbqa speaks it: the requests it accepts (and what it refuses rather than ignores),
error bodies, usage, and the server-sent events of a streamed chat completion (the routes are in ``kbqa.api``).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator

from kbqa.errors import KBQAError
from kbqa.llm.base import GenerationParams, Usage
from kbqa.schema import Answer, AnswerEvent, Role

CHAT_MODEL = "kbqa"
KB_PREFIX = "kb:"
#: The embedding model's id (``/v1/embeddings`` answers to any model name with the configured model).
EMBEDDING_MODEL = "kbqa-embedding"
#: Content parts read as text: ``{"type": "text", "text": ...}`` and ``{"type": "refusal", "refusal": ...}``.
_TEXT_PARTS = {"text", "refusal"}
#: Roles kbqa reads; ``developer`` is the newer name of ``system``.
ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class Unsupported(KBQAError):
    """A request parameter kbqa cannot honour (refused rather than ignored)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class InvalidValue(Unsupported):
    """A request value kbqa cannot use as sent (an empty ``messages``, a blank question): ``invalid_value``."""


class ModelNotFound(KBQAError):
    """The request names a model kbqa does not serve."""

    status_code = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"Unknown model '{model}': use '{CHAT_MODEL}' or '{KB_PREFIX}<knowledge base>' "
                         "(GET /v1/models lists them).")
        self.param = "model"


def whole_characters(value: Any) -> Any:
    """``value`` (text, or lists and dicts holding text) unchanged, or ``ValueError`` for text holding half of a
    UTF-16 surrogate pair: JSON allows ``"\\ud83d"`` alone (a string cut in the middle of an emoji), but no
    model or tokenizer can read it."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    for item in texts:
        for text in [item] if isinstance(item, str) else item.values() if isinstance(item, dict) else []:
            half = _SURROGATE.search(text) if isinstance(text, str) else None
            if half:
                raise ValueError(f"the text holds half of a UTF-16 surrogate pair (\\u{ord(half.group()):04x}), as "
                                 "a string cut in the middle of an emoji does: send whole characters")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


class Message(BaseModel):
    """An OpenAI chat message (text content; other content parts are refused by ``check_supported``)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    _whole = field_validator("content")(whole_characters)

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        # Only an assistant's message may lack content (it called tools instead); a question cannot.
        if self.content is None and self.role not in ("assistant", "tool", "function"):
            raise ValueError(f"a {self.role} message needs content (text, or a list of text parts)")
        return self

    def text(self) -> str:
        """The message's text; content parts joined by line breaks ("What is" and "the code?" are two lines,
        not "What isthe code?")."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(str(part.get(part.get("type"), "")) for part in self.content  # type: ignore[arg-type]
                         if part.get("type") in _TEXT_PARTS)


class ChatRequest(BaseModel):
    """OpenAI's chat-completions request: what kbqa honours, and what it must refuse rather than ignore."""

    model: str = CHAT_MODEL
    messages: list[Message]
    stream: StrictBool | None = False  # "yes" or 1 is a mistake, not a request to stream; null is "no"
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tool_choice: str | dict[str, Any] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    _whole = field_validator("stop")(whole_characters)

    def check_supported(self) -> None:
        """Raise ``Unsupported`` for a parameter kbqa would otherwise have to ignore."""
        if self.stream_options is not None and not self.stream:
            raise Unsupported("stream_options", "stream_options is only allowed with stream: true.")
        if self.n not in (None, 1):
            raise Unsupported("n", "n > 1 is not supported: kbqa writes one answer per request.")
        if self.tools or self.functions:
            raise Unsupported("tools" if self.tools else "functions",
                              "Tool and function calling are not supported by kbqa's local model.")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise Unsupported("response_format", f"response_format {self.response_format.get('type')!r} is not "
                                                 "supported: kbqa cannot constrain the model's output to JSON.")
        if self.tool_choice not in (None, "none", "auto"):
            raise Unsupported("tool_choice", "tool_choice needs tools, and kbqa's local model has no tool calling.")
        if self.logprobs or self.top_logprobs:
            raise Unsupported("logprobs", "logprobs are not supported by kbqa.")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported by kbqa's backends: leave it unset or 0.")
        if self.logit_bias:
            raise Unsupported("logit_bias", "logit_bias is not supported by kbqa: leave it unset.")
        if self.audio or set(self.modalities or ()) - {"text"}:
            raise Unsupported("audio" if self.audio else "modalities",
                              "kbqa's local model writes text only: leave out audio output.")
        if self.web_search_options is not None:
            raise Unsupported("web_search_options", "kbqa never leaves this machine: it has no web search "
                                                    "(ask a knowledge base, kb:<name>, instead).")
        for m in self.messages:
            if m.role in ("tool", "function"):
                raise Unsupported("messages", f"'{m.role}' messages are not supported: kbqa has no tool calling.")
            if m.tool_calls or m.function_call:  # a history from another model's tool use: not read, so refused
                raise Unsupported("messages", "An assistant message with tool_calls is not supported: kbqa has no "
                                              "tool calling; leave those turns out of the history.")
            kinds = {str(p.get("type")) for p in m.content} - _TEXT_PARTS if isinstance(m.content, list) else set()
            if kinds:
                raise Unsupported("messages", f"Content of type {', '.join(sorted(kinds))} is not supported: "
                                              "kbqa's local model reads text only.")

    def params(self, base: GenerationParams) -> GenerationParams:
        """``base`` with the client's generation settings applied.

        As OpenAI does, sampling without a ``seed`` draws a new one per request (the same request may get
        another reply), and a ``seed`` asks for reproducible replies, so it also turns off llama.cpp's
        prompt cache (whose reuse makes a reply depend, in its last bits, on the request before).
        """
        # An empty stop string would match at once and empty every reply: some clients send "" for "none".
        stop = [s for s in ([self.stop] if isinstance(self.stop, str) else (self.stop or [])) if s]
        temperature = base.temperature if self.temperature is None else self.temperature
        # Any integer is a seed (OpenAI's are 64-bit): brought into llama.cpp's range, short of its 2**32 - 1,
        # which means "draw a random one" (as -1 does), so a negative seed is reproducible too.
        seed = self.seed % _SEEDS if self.seed is not None else secrets.randbelow(2**31) if temperature > 0 \
            else base.seed
        return replace(
            base, max_tokens=self.max_completion_tokens or self.max_tokens or base.max_tokens,
            temperature=temperature, top_p=base.top_p if self.top_p is None else max(self.top_p, 1e-6),
            stop=tuple(stop), seed=seed, reuse_prompt_cache=base.reuse_prompt_cache and self.seed is None)


#: Seeds the backends take: 0 .. 2**32 - 2 (llama.cpp reads 2**32 - 1 as "random").
_SEEDS = 2**32 - 1


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request (texts only)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str = EMBEDDING_MODEL
    encoding_format: Literal["float", "base64"] | None = "float"  # null: the default, float
    dimensions: int | None = None

    _whole = field_validator("input")(whole_characters)


def completion_id() -> str:
    """A new ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def error_code(exc: Exception) -> str:
    """``KnowledgeBaseNotFound`` -> ``knowledge_base_not_found``, ``KBQAError`` -> ``kbqa_error``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type(exc).__name__).lower()


def error_body(message: str, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    # OpenAI's types: an unknown model or URL is an invalid request too (code ``model_not_found``...).
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage_body(usage: Usage) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def answer_fields(answer: Answer | None) -> dict[str, Any]:
    """A knowledge-base answer's fields beside the reply: sources, refused, notice, query (none for plain chat)."""
    return {k: v for k, v in answer.to_dict().items() if k != "answer"} if answer is not None else {}


def sse_chunks(events: Iterator[AnswerEvent], cid: str, created: int, model: str, usage: Usage,
                include_usage: bool) -> Iterator[str]:
    """A chat completion's ``data:`` lines: a role chunk, content chunks, the finish chunk (with a knowledge-base
    answer's fields), the usage chunk when asked for, ``[DONE]``; an error mid-answer ends it with an error body.
    Closing it closes ``events``, which stops the generation.
    """

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        if include_usage:  # as OpenAI: every chunk but the last has "usage": null
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def end(**extra: Any) -> Iterator[str]:
        yield chunk({}, usage.finish_reason, **extra)
        if include_usage:  # OpenAI's last chunk: no choices, the usage
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage_body(usage)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    try:
        for event in events:
            if event.kind == "token":
                streamed = True
                yield chunk({"content": event.text})
            elif event.kind == "done" and event.answer is not None:
                if not streamed and event.answer.answer:  # e.g. the refusal sentence, not generated
                    yield chunk({"content": event.answer.answer})
                yield from end(**answer_fields(event.answer))
                return
    except KBQAError as exc:
        yield f"data: {json.dumps(error_body(str(exc), exc.status_code, error_code(exc)), ensure_ascii=False)}\n\n"
        return
    finally:
        getattr(events, "close", lambda: None)()  # stops the generation when the client went away
    yield from end()
