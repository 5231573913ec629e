"""Cross-encoder reranking (off by default: no reranker model ships in an installable package).

Set ``retrieval.reranker`` to a hub id (e.g. ``BAAI/bge-reranker-base``) or a local folder of a
sequence-classification model; the fused candidates are then re-ordered by its scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kbqa.errors import ModelUnavailable
from kbqa.models import load_failure, weights_errors


class CrossEncoderReranker:
    """Scores (question, passage) pairs with a transformers sequence-classification model.

    Args:
        folder: The model folder.
        batch_size: Pairs per forward pass.
        max_length: Token limit per pair.
        device: torch device.
    """

    def __init__(self, folder: Path, batch_size: int = 16, max_length: int = 512, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self._model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device).eval()
        except weights_errors() as exc:
            raise ModelUnavailable(f"Could not load the reranker from {folder} ({load_failure(exc)}); "
                                   "check retrieval.reranker (KBQA_RETRIEVAL__RERANKER).") from exc
        self._torch = torch
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text (the positive-class logit)."""
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            enc = self._tokenizer([question] * len(batch), batch, padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                logits = self._model(**enc).logits
            column = logits[:, -1] if logits.shape[-1] > 1 else logits[:, 0]
            scores.extend(float(x) for x in column)
        return scores
