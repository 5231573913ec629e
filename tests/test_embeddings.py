"""The text2vec-backed embedder on a tiny random BERT folder: pooling, query fast path, token limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kbqa.embeddings import ModelProfile, Text2VecEmbedder, embedder_name, profile_from_folder
from kbqa.settings import EmbeddingSettings


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "query", ":", "passage"]
    (folder / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("pooling", ["MEAN", "CLS"])
def test_query_fast_path_matches_batched_encoding(tiny_bert: Path, pooling: str) -> None:
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(pooling=pooling, query_prefix="query: ", max_seq_length=32))
    for text in ["a b c", "hello world", "x " * 100]:
        fast = emb.embed_query(text)
        batched = emb._encode(["query: " + text])[0]
        assert fast.shape == (32,) and abs(float(np.linalg.norm(fast)) - 1) < 1e-5
        assert float(fast @ batched) > 0.99999


def test_documents_are_unit_vectors_and_too_long_counts_prefix_and_specials(tiny_bert: Path) -> None:
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(passage_prefix="passage: ", max_seq_length=10))
    vectors = emb.embed_documents(["a b c", "d e f g h"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # "passage: a b c" -> [CLS] passage : a b c [SEP] = 7 tokens; 8 letters -> 12 tokens
    assert emb.too_long(["a b c", "a b c d e f g h"]) == [False, True]
    assert emb.embed_documents([]).shape == (0, 32)


def test_int8_quantization_changes_the_name_a_knowledge_base_records(tiny_bert: Path) -> None:
    assert embedder_name(EmbeddingSettings(model="x")) == "x"
    assert embedder_name(EmbeddingSettings(model="x", quantize="int8")) == "x#int8"
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(max_seq_length=32))
    before = emb.embed_documents(["a b c"])[0]
    emb.quantize_int8()
    after = emb.embed_documents(["a b c"])[0]
    assert after.shape == before.shape and float(before @ after) > 0.9


def test_profile_is_read_from_sentence_transformers_files(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}', encoding="utf-8")
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}', encoding="utf-8")
    profile = profile_from_folder(tmp_path, "/models/some-model")
    assert (profile.pooling, profile.max_seq_length, profile.query_prefix) == ("CLS", 128, "")
    assert profile_from_folder(tmp_path, "intfloat/multilingual-e5-base").query_prefix == "query: "
