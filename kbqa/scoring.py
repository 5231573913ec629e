"""Answer scores of ``kbqa eval``: exact match and F1 as CMRC2018's and SQuAD's own scorers compute them.

Answers are scored per question, by the question's language:
- Chinese, as CMRC2018's official scorer (``cmrc2018_evaluate.py``): text lower-cased and stripped, and the
  characters of its punctuation list ``sp_char`` (``_CMRC_PUNCT``; not '.', '%' or ',') removed. Exact match
  compares what is left. F1 is over the longest common substring of the mixed segmentation: each CJK
  character a token, other runs tokenised as ``nltk.word_tokenize`` does (approximated here: numbers such as
  3.5 or 1,500 stay whole; ``% $ , ( ) ? !`` and the like, and a final '.', become tokens of their own). No
  Unicode folding: the official scorer does none. So '3.5亿' vs '35亿' scores F1 0.5, '10%' vs '10' 0.667.
- Otherwise, as SQuAD's (v1.1): lower case, ASCII punctuation and the articles a/an/the removed, whitespace
  collapsed; exact match compares the results, F1 their words as bags. The CJK punctuation above is removed
  too, so that 'Paris。' scores as 'Paris'.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from kbqa.language import is_chinese

#: ``sp_char`` of cmrc2018_evaluate.py. It lists '……' as one two-character entry, which no single character
#: equals, so a lone '…' stays there, and here.
_CMRC_PUNCT = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_CJK_CHAR = re.compile(r"[\u4e00-\u9fa5]")
#: nltk.word_tokenize, approximately, on what is left once sp_char is gone: a number with separators (3.5,
#: 1,500) is one token, '...' is one, each of ; @ # $ % & ? ! , ( ) [ ] { } < > " is one, the rest of a
#: whitespace-separated piece is one.
_WORD_PIECE = re.compile(r'\d+(?:[.,]\d+)+|\.\.\.|[;@#$%&?!,()\[\]{}<>"]|(?:(?!\.\.\.)[^\s;@#$%&?!,()\[\]{}<>"])+')
_CLOSERS = frozenset(')]}>"')
#: SQuAD removes ASCII punctuation; CJK marks go too, so that an English answer followed by '。' is not
#: penalised ('…' and '‘' as the halves of CMRC's '……' and its '’').
_EN_PUNCT = frozenset(string.punctuation) | _CMRC_PUNCT | frozenset("…‘")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _word_tokenize(run: str) -> list[str]:
    tokens: list[str] = _WORD_PIECE.findall(run)
    # nltk splits off the period that ends the text (closing brackets or quotes may follow it), not one inside
    end = len(tokens)
    while end and tokens[end - 1] in _CLOSERS:
        end -= 1
    last = tokens[end - 1] if end else ""
    if len(last) > 1 and last[-1] == "." and last[-2] != ".":
        tokens[end - 1:end] = [last[:-1], "."]
    return tokens


def _cmrc_segments(text: str) -> list[str]:
    """CMRC2018's ``mixed_segmentation(text, rm_punc=True)``."""
    tokens: list[str] = []
    run: list[str] = []
    for char in text.lower().strip():
        if char in _CMRC_PUNCT:
            continue
        if _CJK_CHAR.match(char):
            tokens += _word_tokenize("".join(run))
            run = []
            tokens.append(char)
        else:
            run.append(char)
    return tokens + _word_tokenize("".join(run))


def _cmrc_normal(text: str) -> str:
    """CMRC2018's ``remove_punctuation``: whitespace inside the text is kept."""
    return "".join(c for c in text.lower().strip() if c not in _CMRC_PUNCT)


def _squad_normal(text: str) -> str:
    """SQuAD's ``normalize_answer`` (plus CJK punctuation)."""
    text = "".join(c for c in text.lower() if c not in _EN_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _f1(common: int, predicted: int, gold: int) -> float:
    if not common:
        return 0.0
    precision, recall = common / predicted, common / gold
    return 2 * precision * recall / (precision + recall)


def _chinese(prediction: str, gold: str, zh: bool | None) -> bool:
    # Without the question, guess from the texts; an all-digit answer then goes the English way
    return zh if zh is not None else is_chinese(gold) or is_chinese(prediction)


def f1_score(prediction: str, answers: Sequence[str], *, zh: bool | None = None) -> float:
    """Best F1 over the gold answers: CMRC2018's scorer for Chinese, SQuAD's otherwise.

    Args:
        prediction: The answer given.
        answers: The gold answers.
        zh: Whether the question is Chinese; None guesses per gold answer (it or the prediction is Chinese).
    """
    best = 0.0
    for gold in answers:
        if _chinese(prediction, gold, zh):
            p, g = _cmrc_segments(prediction), _cmrc_segments(gold)
            score = _f1(_longest_common_substring(p, g), len(p), len(g))
        else:
            pw, gw = _squad_normal(prediction).split(), _squad_normal(gold).split()
            score = _f1(sum((Counter(pw) & Counter(gw)).values()), len(pw), len(gw))
        best = max(best, score)
    return best


def exact_match(prediction: str, answers: Sequence[str], *, zh: bool | None = None) -> bool:
    """Prediction equals a gold answer once normalised as CMRC2018's scorer (Chinese) or SQuAD's does.

    Args:
        prediction: The answer given.
        answers: The gold answers.
        zh: Whether the question is Chinese; None guesses per gold answer (it or the prediction is Chinese).
    """
    for gold in answers:
        norm = _cmrc_normal if _chinese(prediction, gold, zh) else _squad_normal
        if norm(prediction) == norm(gold):
            return True
    return False
