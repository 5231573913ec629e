"""Prompt codecs (chat messages to prompt ids, generated ids to text) and trimming a prompt to a budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from transformers import AutoTokenizer

from kbqa.errors import ContextLengthExceeded
from kbqa.llm import chatglm
from kbqa.schema import ChatMessage

log = logging.getLogger(__name__)


class PromptCodec(Protocol):
    """Turns chat messages into prompt ids and generated ids into text, for one model family."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...
    @property
    def pad_token_id(self) -> int | None: ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]: ...
    def encode_text(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def visible_reply(self, text: str, finished: bool) -> str | None: ...


class TemplateCodec:
    """A transformers tokenizer and its chat template (a plain role-prefixed format when it has none)."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int], pad_token_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_token_id = pad_token_id

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except Exception:  # some templates refuse a system role: fold it into the first user turn
                system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
                turns = [t for t in turns if t["role"] != "system"]
                if system and turns:
                    turns[0] = {**turns[0], "content": f"{system}\n\n{turns[0]['content']}"}
                text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        else:
            text = (self.tokenizer.bos_token or "") + "".join(
                f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns) + "Assistant:"
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def visible_reply(self, text: str, finished: bool) -> str | None:
        return text


def load_codec(folder: Path, model: Any) -> PromptCodec:
    """ChatGLM's tokenizer and prompt format for a converted ChatGLM folder, else the folder's tokenizer."""
    if chatglm.is_converted_chatglm(folder):
        marker = chatglm.read_marker(folder)
        glm_tokenizer = chatglm.ChatGLMTokenizer.from_folder(folder, marker["version"])
        return chatglm.ChatGLMCodec(glm_tokenizer, marker["eos_token_ids"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    # Padding: the model's choice, else the tokenizer's, else the first stop token.
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None and eos_ids:
        pad = eos_ids[0]
    return TemplateCodec(tokenizer, eos_ids, pad)


def fit_prompt(messages: Sequence[ChatMessage], codec: PromptCodec, budget: int) -> list[int]:
    """Prompt ids of at most ``budget`` tokens.

    The system messages and the last user turn are kept; the oldest history turns are dropped first
    (a user turn with the replies that follow it). If that is not enough, the middle of the last user
    message is cut out (it usually holds retrieved context; its instructions open it and the question
    closes it), marked with an ellipsis.

    Raises:
        ConfigError: even the system messages and a short last user message do not fit.
    """
    messages = list(messages)
    if not messages:
        raise ValueError("fit_prompt needs at least one message")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    last = users[-1] if users else len(messages) - 1
    system = [m for m in messages[:last] if m.role == "system"]
    history = [m for m in messages[:last] if m.role != "system"]
    tail = messages[last:]
    ids = codec.encode_chat(system + history + tail)
    while len(ids) > budget and history:
        history = history[1:]
        while history and history[0].role != "user":
            history = history[1:]
        ids = codec.encode_chat(system + history + tail)
    for _ in range(4):  # history is gone: cut the middle of the last user message
        if len(ids) <= budget:
            return ids
        content = codec.encode_text(tail[0].content)
        keep = len(content) - (len(ids) - budget) - 8
        if keep < 32:
            break
        text = (codec.decode(content[:keep // 2]).rstrip("\ufffd") + "\n…\n"
                + codec.decode(content[-(keep - keep // 2):]).lstrip("\ufffd"))
        log.warning("prompt over %d tokens: cut %d tokens out of the last user message",
                    budget, len(content) - keep)
        tail = [ChatMessage(tail[0].role, text), *tail[1:]]
        ids = codec.encode_chat(system + tail)
    raise ContextLengthExceeded(
        f"The prompt does not fit in {budget} tokens (llm.context_window minus llm.max_tokens), even "
        f"without history. Raise llm.context_window (up to the model's limit), lower llm.max_tokens, "
        f"or shorten the system prompt.")
