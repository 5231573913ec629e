"""The text2vec-backed embedder on a tiny random BERT folder: pooling, query fast path, token limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kbqa.embeddings import ModelProfile, Text2VecEmbedder, embedder_name, profile_from_folder
from kbqa.errors import ModelUnavailable
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
    assert emb.token_counts(["a b c", "a b c d e f g h"]) == [7, 10]  # the model reads 10 of the 12
    assert emb.embed_documents([]).shape == (0, 32)


def test_int8_quantization_changes_the_name_a_knowledge_base_records() -> None:
    assert embedder_name(EmbeddingSettings(model="x", quantize="none")) == "x"
    assert embedder_name(EmbeddingSettings(model="x", quantize="int8")) == "x#int8"
    assert embedder_name(EmbeddingSettings(model="x")) == "x#int8"  # the default on a CPU
    # Dynamic quantization runs on the CPU only: elsewhere the float model encodes, and the name says so.
    assert embedder_name(EmbeddingSettings(model="x", quantize="int8", device="cuda")) == "x"


def test_int8_encodes_chunks_with_a_quantized_copy_and_questions_with_the_float_encoder(tiny_bert: Path) -> None:
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(max_seq_length=32))
    texts = ["a b c", "hello world a"]
    before_docs, before_query = emb.embed_documents(texts), emb.embed_query("a b c")
    emb.quantize_int8()
    after_docs, after_query = emb.embed_documents(texts), emb.embed_query("a b c")
    assert np.array_equal(before_query, after_query)
    assert after_docs.shape == before_docs.shape and np.allclose(np.linalg.norm(after_docs, axis=1), 1, atol=1e-5)
    cosines = (before_docs * after_docs).sum(1)
    assert cosines.min() > 0.9 and not np.allclose(before_docs, after_docs, atol=1e-6)
    float_bert, int8_bert = emb._model.bert, emb._passages.bert
    assert int8_bert.get_input_embeddings() is float_bert.get_input_embeddings()  # shared, not copied
    assert type(int8_bert.encoder.layer[0].output.dense) is not torch.nn.Linear
    assert type(float_bert.encoder.layer[0].output.dense) is torch.nn.Linear


def test_an_int8_chunk_vector_does_not_depend_on_what_it_is_encoded_with(tiny_bert: Path) -> None:
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(max_seq_length=32), batch_size=8)
    emb.quantize_int8()
    alone = emb.embed_documents(["a b c"])[0]
    mates = ["hello world a " * 3, "z y x w v u t", "b"]
    assert np.array_equal(emb.embed_documents(["a b c", *mates])[0], alone)
    assert np.array_equal(emb.embed_documents([*mates, "a b c"])[-1], alone)


def test_int8_that_torch_cannot_run_names_the_setting_to_change(tiny_bert: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Didn't find engine for operation quantized::linear_prepack NoQEngine")

    monkeypatch.setattr("torch.ao.quantization.quantize_dynamic", broken)
    emb = Text2VecEmbedder(tiny_bert, "tiny", ModelProfile(max_seq_length=32))
    with pytest.raises(ModelUnavailable, match=r'embedding\.quantize = "none"'):
        emb.quantize_int8()
    assert emb.embed_documents(["a b c"]).shape == (1, 32)  # still usable in float


def test_profile_is_read_from_sentence_transformers_files(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}', encoding="utf-8")
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}', encoding="utf-8")
    profile = profile_from_folder(tmp_path, "/models/some-model")
    assert (profile.pooling, profile.max_seq_length, profile.query_prefix) == ("CLS", 128, "")
    assert profile_from_folder(tmp_path, "intfloat/multilingual-e5-base").query_prefix == "query: "


def test_a_model_folder_of_git_lfs_pointers_says_to_pull_its_files(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    from kbqa.embeddings import build_embedder

    folder = tmp_path / "text2vec-base-chinese"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 409\n")
    with pytest.raises(ModelUnavailable, match=r"embedding.model .*: model.safetensors in .* is a Git LFS pointer"):
        build_embedder(EmbeddingSettings(model=str(folder)), tmp_path / "cache")


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_damaged_weights_are_one_error_naming_the_setting(tiny_bert: Path, tmp_path: Path, weights: str) -> None:
    # Random bytes as weights were a 100-line safetensors / torch unpickling traceback (and no --json error).
    import os
    import shutil

    from kbqa.embeddings import build_embedder

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    (folder / weights).write_bytes(os.urandom(4096))
    with pytest.raises(ModelUnavailable, match=r"a weights file is damaged or not a model's .*check embedding.model"):
        build_embedder(EmbeddingSettings(model=str(folder)), tmp_path / "cache")


def test_a_token_limit_over_the_models_positions_is_refused_or_lowered(tiny_bert: Path, tmp_path: Path) -> None:
    # Accepted, it failed every long chunk inside the model ("The expanded size of the tensor (2550) must match
    # the existing size (512)"), with a traceback, in every ingest.
    import json
    import shutil

    from kbqa.embeddings import build_embedder
    from kbqa.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedding.max_seq_length = 100 is over the limit .* \(64 tokens\)"):
        build_embedder(EmbeddingSettings(model=str(tiny_bert), max_seq_length=100), tmp_path)
    folder = tmp_path / "says-more"  # a folder whose own sentence-transformers file claims more
    shutil.copytree(tiny_bert, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}), encoding="utf-8")
    embedder = build_embedder(EmbeddingSettings(model=str(folder)), tmp_path)
    assert embedder.profile.max_seq_length == 64
    assert embedder.embed_documents(["a " * 300])[0].shape == (32,)
