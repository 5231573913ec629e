"""The BM25 tokenizer: jieba words for Chinese, word tokens for English and numbers."""

from __future__ import annotations

import subprocess
import sys

from kbqa.tokenize import STOPWORDS, tokenize


def test_english_words_are_lower_cased_and_punctuation_is_dropped() -> None:
    assert tokenize("Ketanji Brown-Jackson, (Judge)!  Ukraine…") == ["ketanji", "brown", "jackson", "judge",
                                                                     "ukraine"]


def test_thousands_separators_are_dropped_so_both_spellings_match() -> None:
    assert tokenize("4,000 projects") == ["4000", "projects"]
    assert tokenize("4000 projects") == ["4000", "projects"]
    assert tokenize("creating 4,000, in 1,234,567.5") == ["creating", "4000", "1234567.5"]


def test_comma_lists_of_numbers_stay_separate_numbers() -> None:
    assert tokenize("1,2,3 and 12,34") == ["1", "2", "3", "12", "34"]


def test_decimals_and_versions_keep_their_dots() -> None:
    assert tokenize("python3.11 v2.0 costs 3.5% more.") == ["python3.11", "v2.0", "costs", "3.5", "more"]


def test_chinese_is_segmented_into_words_with_the_words_inside_long_ones() -> None:
    tokens = tokenize("中华人民共和国成立于1949年")
    assert {"中华人民共和国", "人民", "共和国", "成立", "1949", "年"} <= set(tokens)
    assert not any(len(t) == 1 and t in "中华人民共和国" for t in tokens)  # words, not characters


def test_full_width_letters_digits_and_commas_are_normalised() -> None:
    assert tokenize("ＧＤＰ增长４，０００亿") == tokenize("GDP增长4,000亿") == ["gdp", "增长", "4000", "亿"]


def test_mixed_chinese_and_english_tokenize_both() -> None:
    tokens = tokenize("ChatGLM2-6B 的上下文长度为 32K")
    assert {"chatglm2", "6b", "上下文", "长度", "32k"} <= set(tokens)


def test_stopwords_are_dropped_by_default_and_kept_on_request() -> None:
    assert tokenize("什么是 the 战国无双") == ["战国", "无双"]
    assert tokenize("什么是 the 战国无双", stopwords=False) == ["什么", "是", "the", "战国", "无双"]
    assert {"的", "什么", "哪", "the", "of"} <= STOPWORDS


def test_precise_mode_gives_only_whole_words() -> None:
    assert tokenize("中华人民共和国", search_mode=False) == ["中华人民共和国"]


def test_empty_and_punctuation_only_text_gives_no_tokens() -> None:
    assert tokenize("") == []
    assert tokenize("。，！？——…  \n\t()[]") == []


def test_first_use_of_jieba_prints_nothing() -> None:
    code = "from kbqa.tokenize import tokenize; assert tokenize('战国无双') == ['战国', '无双']"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
