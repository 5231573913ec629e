"""ChatGLM2/3's tokenizer and prompt formats, rebuilt on SentencePiece without remote code."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from kbqa.errors import ModelUnavailable
from kbqa.llm.chatglm import ChatGLMCodec, ChatGLMTokenizer, chatglm2_text, chatglm3_ids
from kbqa.schema import ChatMessage
from tests.chatglm_fixtures import train_tokenizer

MIXED = "ChatGLM2 是一个开源的中英双语对话模型 (open bilingual chat model), 42 个参数?\n下一行"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("sp") / "tokenizer.model")


@pytest.fixture(scope="module")
def sp(sp_model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(sp_model))


def test_ids_of_mixed_text_are_sentencepiece_ids_after_gmask_sop(sp_model: Path,
                                                                 sp: spm.SentencePieceProcessor) -> None:
    tokenizer = ChatGLMTokenizer(sp_model)
    n = sp.get_piece_size()
    assert tokenizer.encode_prompt(MIXED) == [n + 1, n + 3] + sp.encode(MIXED)
    assert tokenizer.encode(MIXED) == sp.encode(MIXED)


def test_special_tokens_follow_the_sentencepiece_pieces(sp_model: Path,
                                                       sp: spm.SentencePieceProcessor) -> None:
    n = sp.get_piece_size()
    v2 = ChatGLMTokenizer(sp_model, "chatglm2")
    v3 = ChatGLMTokenizer(sp_model, "chatglm3")
    assert v2.special_ids == {"[MASK]": n, "[gMASK]": n + 1, "[sMASK]": n + 2, "sop": n + 3, "eop": n + 4}
    assert [v3.token_id(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")] == \
        [n + 5, n + 6, n + 7, n + 8]
    assert (v2.vocab_size, v3.vocab_size) == (n + 5, n + 9)
    assert (v2.eos_id, v2.pad_id) == (2, 0)
    with pytest.raises(ValueError):
        v2.token_id("<|user|>")


def test_decode_round_trips_and_skips_special_and_padded_ids(sp_model: Path) -> None:
    tokenizer = ChatGLMTokenizer(sp_model, "chatglm3")
    ids = tokenizer.encode(MIXED)
    assert tokenizer.decode(ids) == MIXED
    specials = [tokenizer.token_id("<|user|>"), tokenizer.vocab_size + 2]
    noisy = tokenizer.prefix_ids + ids[:5] + specials + ids[5:]
    assert tokenizer.decode(noisy) == MIXED
    # Pad / <unk> (id 0), bos and eos read as nothing, as ChatGLM's own tokenizer has them (a model whose fp16
    # logits overflowed picks id 0 again and again: SentencePiece alone writes " ⁇ " for each).
    controls = [tokenizer.pad_id, 1, tokenizer.eos_id]
    assert tokenizer.decode(ids[:5] + controls + ids[5:] + controls) == MIXED


def test_a_file_that_is_not_sentencepiece_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # GLM-4's tiktoken format
    with pytest.raises(ModelUnavailable, match="SentencePiece"):
        ChatGLMTokenizer.from_folder(tmp_path)


CHAT = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "你好"),
        ChatMessage("assistant", "你好！"), ChatMessage("user", "What is 2+2?")]


def test_chatglm2_prompt_numbers_rounds_from_one() -> None:
    assert chatglm2_text(CHAT) == ("Answer briefly.\n\n[Round 1]\n\n问：你好\n\n答：你好！\n\n"
                                   "[Round 2]\n\n问：What is 2+2?\n\n答：")
    assert chatglm2_text([ChatMessage("user", "hi")]) == "[Round 1]\n\n问：hi\n\n答："


def test_chatglm3_prompt_marks_each_message_with_its_role(sp_model: Path) -> None:
    tok = ChatGLMTokenizer(sp_model, "chatglm3")
    nl = tok.encode("\n")
    expected = tok.prefix_ids
    for role, text in (("system", "Answer briefly."), ("user", "你好"), ("assistant", "你好！"),
                       ("user", "What is 2+2?")):
        expected += [tok.token_id(f"<|{role}|>")] + nl + tok.encode(text)
    assert chatglm3_ids(tok, CHAT) == expected + [tok.token_id("<|assistant|>")]


def test_chatglm2_codec_encodes_the_round_text_after_gmask_sop(sp_model: Path) -> None:
    tok = ChatGLMTokenizer(sp_model, "chatglm2")
    codec = ChatGLMCodec(tok, [2])
    assert codec.encode_chat(CHAT) == tok.prefix_ids + tok.encode(chatglm2_text(CHAT))


def test_chatglm3_reply_drops_its_metadata_line(sp_model: Path) -> None:
    codec = ChatGLMCodec(ChatGLMTokenizer(sp_model, "chatglm3"), [2])
    assert codec.visible_reply("\n 北京。", finished=False) == "北京。"
    assert codec.visible_reply("", finished=False) is None
    assert codec.visible_reply("no metadata", finished=True) == "no metadata"
