"""ChatGLM2's and ChatGLM3's own chat prompt formats, as token ids.

ChatGLM2 numbers question/answer rounds in one text::

    [gMASK]sop [Round 1]\\n\\n问：{q1}\\n\\n答：{a1}\\n\\n[Round 2]\\n\\n问：{q2}\\n\\n答：

ChatGLM3 marks each message with a role token, then a metadata line (empty here), then the content::

    [gMASK]sop <|system|>\\n{system}<|user|>\\n{q}<|assistant|>\\n{a}<|user|>\\n{q2}<|assistant|>

ChatGLM2 has no system role: a system message becomes a paragraph before the first round.
"""

from __future__ import annotations

from collections.abc import Sequence

from kbqa.llm.chatglm.tokenizer import ChatGLMTokenizer
from kbqa.schema import ChatMessage


def chatglm2_text(messages: Sequence[ChatMessage]) -> str:
    """The ChatGLM2 prompt text (without ``[gMASK] sop``) for a conversation ending with a user turn."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    rounds: list[list[str]] = []  # [question, answer]
    for message in messages:
        if message.role == "user":
            if rounds and len(rounds[-1]) == 1:  # two user turns in a row: one question
                rounds[-1][0] += "\n" + message.content
            else:
                rounds.append([message.content])
        elif message.role == "assistant":
            if not rounds or len(rounds[-1]) == 2:
                rounds.append([""])
            rounds[-1].append(message.content)
    text = f"{system}\n\n" if system else ""
    for number, turn in enumerate(rounds, start=1):
        text += f"[Round {number}]\n\n问：{turn[0]}\n\n答："
        if len(turn) == 2:
            text += f"{turn[1]}\n\n"
    return text


def chatglm3_ids(tokenizer: ChatGLMTokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """ChatGLM3 prompt ids: ``[gMASK] sop``, each message with its role token, then ``<|assistant|>``."""
    ids = tokenizer.prefix_ids
    for message in messages:
        ids.append(tokenizer.token_id(f"<|{message.role}|>"))
        ids += tokenizer.encode("\n") + tokenizer.encode(message.content)
    if not messages or messages[-1].role != "assistant":
        ids.append(tokenizer.token_id("<|assistant|>"))
    return ids


class ChatGLMCodec:
    """Prompt encoding and reply decoding for a converted ChatGLM2/3 model (kbqa's ``PromptCodec``)."""

    def __init__(self, tokenizer: ChatGLMTokenizer, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.version = tokenizer.version
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.pad_token_id = tokenizer.pad_id

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt ids in the model's own chat format."""
        if self.version == "chatglm3":
            return chatglm3_ids(self.tokenizer, messages)
        return self.tokenizer.encode_prompt(chatglm2_text(messages))

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text (no prompt prefix)."""
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens skipped."""
        return self.tokenizer.decode(ids)

    def visible_reply(self, text: str, finished: bool) -> str | None:
        """The part of the decoded reply shown to users; None while that is not known yet.

        ChatGLM3 starts each reply with a metadata line (empty for plain chat), which is dropped.
        """
        if self.version == "chatglm2":
            return text.lstrip()
        head, newline, rest = text.partition("\n")
        if newline and not head.strip():
            return rest.lstrip()
        if newline or finished or len(text) > 64:  # a first line with content: no metadata line
            return text.lstrip()
        return None
