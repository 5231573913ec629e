"""ChatGLM2/3's tokenizer, rebuilt without remote code: SentencePiece plus a few special ids.

The published ``tokenizer.model`` is a plain SentencePiece model (64789 pieces for the 6B models).
ChatGLM's own tokenizer code puts its special tokens right after the SentencePiece pieces:
``[MASK] [gMASK] [sMASK] sop eop`` and, for ChatGLM3, ``<|system|> <|user|> <|assistant|> <|observation|>``.
Every prompt starts with ``[gMASK] sop``. Padding is id 0 (``<unk>``), end of text is ``</s>`` (id 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from kbqa.errors import ModelUnavailable

Version = Literal["chatglm2", "chatglm3"]

GLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
TOKENIZER_FILE = "tokenizer.model"


class ChatGLMTokenizer:
    """Encodes and decodes text exactly as ChatGLM2/3's tokenizer does, from its ``tokenizer.model``.

    Args:
        model_file: The SentencePiece model published with the checkpoint.
        version: ``chatglm3`` adds the role tokens after the GLM special tokens.

    Raises:
        ModelUnavailable: the file is not a SentencePiece model (GLM-4's tiktoken file, for instance).
    """

    def __init__(self, model_file: Path, version: Version = "chatglm2") -> None:
        self.model_file = Path(model_file)
        self.version: Version = version
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"{self.model_file} is not a SentencePiece tokenizer model: kbqa reads ChatGLM2-6B and "
                f"ChatGLM3-6B checkpoints (GLM-4 ships a different tokenizer; use its '-hf' release as a "
                f"plain model folder).") from exc
        names = GLM_SPECIALS + (ROLE_TOKENS if version == "chatglm3" else ())
        base = self.sp.get_piece_size()
        #: Special token name -> id, numbered after the SentencePiece pieces.
        self.special_ids: dict[str, int] = {name: base + i for i, name in enumerate(names)}
        self.eos_id = self.sp.eos_id()
        self.pad_id = max(self.sp.unk_id(), 0)

    @classmethod
    def from_folder(cls, folder: Path, version: Version = "chatglm2") -> ChatGLMTokenizer:
        """The tokenizer of a checkpoint folder (published or converted)."""
        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise ModelUnavailable(f"{folder} has no {TOKENIZER_FILE}; copy it from the ChatGLM checkpoint.")
        return cls(path, version)

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces plus special tokens (the model's embedding table may be larger)."""
        return self.sp.get_piece_size() + len(self.special_ids)

    @property
    def prefix_ids(self) -> list[int]:
        """``[gMASK] sop``: the start of every ChatGLM2/3 prompt."""
        return [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    def token_id(self, name: str) -> int:
        """The id of a special token such as ``<|user|>``."""
        try:
            return self.special_ids[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a special token of {self.version}") from None

    def encode(self, text: str) -> list[int]:
        """Plain SentencePiece ids of ``text``, without the prompt prefix."""
        return list(self.sp.encode(text)) if text else []

    def encode_prompt(self, text: str) -> list[int]:
        """``[gMASK] sop`` followed by the ids of ``text``, as ChatGLM's ``tokenizer.encode`` does."""
        return self.prefix_ids + self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens, ``<unk>`` (pad, id 0) and ids past the vocabulary (padded rows) are
        skipped, as ChatGLM's own tokenizer decodes them to nothing (SentencePiece would write `` ⁇ ``)."""
        limit = self.sp.get_piece_size()
        return self.sp.decode([i for i in (int(t) for t in ids) if 0 <= i < limit and not self.sp.is_unknown(i)])
