"""Keyword tokenizer for BM25: jieba words for Chinese, word tokens for English and numbers.

The text is NFKC-normalised (full-width letters, digits and commas become ASCII) and lower-cased,
then split into runs:

* Chinese (Han) runs are segmented by jieba's dictionary, in search mode: long words also yield
  the dictionary words inside them (``中华人民共和国`` also gives ``人民``, ``共和国``...), so a
  query word matches inside a longer document word. jieba's HMM (which guesses new words from
  context) is off by default: the same unknown name is then split the same way in a question and
  in a passage. On CMRC2018 that scored better and tokenizes ~30% faster (benchmarks/RESULTS.md).
* Latin/other-script words and numbers are single tokens. Thousands separators are dropped, so
  ``4,000`` and ``4000`` are the same token ``4000``; decimals and versions keep their dots
  (``3.5``, ``v2.0``). Hyphens, apostrophes and other punctuation split words.
* Punctuation and whitespace are dropped, as are (by default) a small list of English and Chinese
  function words and question words, which carry no topic (measured in benchmarks/RESULTS.md).

jieba's dictionary (about 60 MB) is loaded once, lazily and quietly, into a private ``jieba.Tokenizer``, so
words other code adds to the global jieba instance do not change what our index stores.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata

import jieba

from kbqa.language import HAN_CHARS as _HAN

_TOKEN_RE = re.compile(
    rf"(?P<han>[{_HAN}]+)"
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d))"  # 4,000 / 1,234.5 (commas then dropped)
    rf"|(?P<word>[^\W_{_HAN}]+(?:\.\d+)*)"  # words, numbers, 3.5, v2.0
)

#: English function words; short on purpose, as BM25's idf already discounts common words.
ENGLISH_STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "if", "then", "than", "so", "of", "to", "in", "on", "at",
    "by", "for", "with", "from", "as", "into", "about", "over", "is", "are", "was", "were", "be",
    "been", "being", "am", "do", "does", "did", "have", "has", "had", "having", "would",
    "shall", "should", "could", "might", "must", "it", "its", "this", "that", "these",
    "those", "there", "here", "he", "she", "they", "we", "you", "i", "me", "him", "her", "his",
    "hers", "them", "their", "theirs", "our", "ours", "your", "yours", "my", "mine", "what",
    "which", "who", "whom", "whose", "when", "where", "why", "how", "s", "t",
})
#: Chinese function words and question words (questions use them, passages rarely do).
CHINESE_STOPWORDS = frozenset({
    "的", "了", "着", "过", "是", "在", "和", "与", "及", "或", "等", "也",
    "都", "就", "而", "又", "被", "把", "让", "对", "从", "以", "之", "其",
    "于", "由", "为", "将", "这", "那", "这个", "那个", "这些", "那些", "该",
    "此", "并", "且", "吗", "呢", "吧", "啊", "呀", "么", "什么", "哪", "哪个",
    "哪些", "哪里", "哪儿", "哪一", "谁", "多少", "几", "怎么", "怎样", "怎么样",
    "如何", "为什么", "为何", "何", "何时", "是否", "是不是", "请问",
})
STOPWORDS = ENGLISH_STOPWORDS | CHINESE_STOPWORDS

#: Identifies the tokenization an index stores, so an index made by other rules is rebuilt instead of
#: silently mismatching queries. The jieba version and the stopwords are included automatically;
#: bump the leading number whenever the code of ``tokenize`` changes what it returns.
TOKENIZER_ID = (f"kbqa-tok-1:jieba-{jieba.__version__}-search-nohmm:stop-"
                f"{hashlib.sha256(' '.join(sorted(STOPWORDS)).encode()).hexdigest()[:12]}")

_jieba: jieba.Tokenizer | None = None
_jieba_lock = threading.Lock()


def _segmenter() -> jieba.Tokenizer:
    """Return the private jieba tokenizer, loading its dictionary on first use without log noise."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                jieba.setLogLevel(logging.WARNING)
                segmenter = jieba.Tokenizer()
                segmenter.initialize()
                _jieba = segmenter
    return _jieba


def tokenize(text: str, *, search_mode: bool = True, hmm: bool = False, stopwords: bool = True) -> list[str]:
    """Split text into lower-cased keyword tokens for BM25.

    Documents and queries must be tokenized with the same options; the defaults are what
    ``BM25Index`` uses (recorded as ``TOKENIZER_ID``). The other options exist for benchmarks.

    Args:
        text: Any text, Chinese, English or mixed.
        search_mode: Segment Chinese with ``jieba.cut_for_search`` (long words also yield the
            dictionary words inside them) rather than ``jieba.cut``.
        hmm: Let jieba's HMM join characters outside its dictionary into guessed new words.
        stopwords: Drop the tokens in ``STOPWORDS``.

    Returns:
        The tokens in text order, with repeats; punctuation and whitespace are never tokens.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    segmenter = None
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "han":
            if segmenter is None:
                segmenter = _segmenter()
            cut = segmenter.cut_for_search if search_mode else segmenter.cut
            tokens.extend(cut(piece, HMM=hmm))
        elif kind == "num":
            tokens.append(piece.replace(",", ""))
        else:
            tokens.append(piece)
    if stopwords:
        return [t for t in tokens if t not in STOPWORDS]
    return tokens


def warm_up() -> None:
    """Load jieba's dictionary now (about a second) instead of on the first Chinese text."""
    _segmenter()
