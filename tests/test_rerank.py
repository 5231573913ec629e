"""The reranker seam: a cross-encoder folder loads and re-orders the fused candidates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from kbqa.bootstrap import build_service
from kbqa.errors import ModelUnavailable
from kbqa.rerank import CrossEncoderReranker
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import make_settings


class FakeReranker:
    """Prefers passages containing a keyword."""

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword
        self.calls = 0

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [1.0 if self.keyword in t else 0.0 for t in texts]


def tiny_cross_encoder(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "river"]
    (folder / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_reranker_reorders_candidates(tmp_path: Path) -> None:
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: FakeLLM())
    doc = tmp_path / "d.md"
    doc.write_text("alpha river one.\n\nbeta river two.\n\ngamma river three.", encoding="utf-8")
    service.add_files("kb", [doc])
    service.qa.retriever.reranker = FakeReranker("gamma")
    hits = service.search("kb", "alpha river", 3)
    assert "gamma" in hits[0].text and hits[0].rank == 1


def test_cross_encoder_folder_scores_every_pair(tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder(tmp_path))
    scores = reranker.score("the river", ["the river", "abc", "xyz the"] * 7)
    assert len(scores) == 21 and all(isinstance(s, float) for s in scores)
    assert scores[0] == pytest.approx(scores[3])  # same pair, same score across batches


def test_reranker_setting_enables_it_at_its_first_use(tmp_path: Path) -> None:
    folder = tiny_cross_encoder(tmp_path / "ce" if (tmp_path / "ce").mkdir() is None else tmp_path)
    settings = make_settings(tmp_path, reranker=str(folder))
    service = build_service(settings, embedder=FakeEmbedder(), llm=lambda: FakeLLM())
    reranker = service.qa.retriever.reranker
    assert reranker is not None
    assert reranker.score("the river", ["the river", "abc"]) == CrossEncoderReranker(folder).score(
        "the river", ["the river", "abc"])


def test_missing_reranker_names_the_setting_when_it_is_used_and_none_turns_it_off(tmp_path: Path) -> None:
    # Loaded as the service was built, a reranker that could not load stopped every command, `kb list` too (and
    # made each one wait for the model).
    service = build_service(make_settings(tmp_path, reranker=str(tmp_path / "nope")), embedder=FakeEmbedder(),
                            llm=lambda: FakeLLM())
    assert service.list_kbs() == []
    with pytest.raises(ModelUnavailable, match="retrieval.reranker"):
        service.qa.retriever.reranker.score("q", ["a"])  # type: ignore[union-attr]
    for off in ("none", "None", "off", ""):
        assert make_settings(tmp_path, reranker=off).retrieval.reranker is None


def test_an_embedded_reranker_name_says_none_is_embedded(tmp_path: Path) -> None:
    # It was "neither an existing path nor a hub id", as if a typo.
    service = build_service(make_settings(tmp_path, reranker="embedded:multilingual-e5-small"),
                            embedder=FakeEmbedder(), llm=lambda: FakeLLM())
    with pytest.raises(ModelUnavailable, match=r"KBQA_RETRIEVAL__RERANKER.*no reranker model is embedded"):
        service.qa.retriever.reranker.score("q", ["a"])  # type: ignore[union-attr]

