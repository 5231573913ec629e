"""Prompt templates: placeholder checks, language choice, refusal detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.errors import ConfigError
from kbqa.language import is_chinese
from kbqa.prompts import PromptBook, load_prompt
from kbqa.schema import SourceChunk

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"

GOOD = '''refusal = "No."
system = "sys"
user = "{context} {question} {refusal}"
context_item = "[{n}] {source}{page} {text}"
'''


def test_shipped_templates_load_in_both_languages() -> None:
    book = PromptBook.load(PROMPTS)
    assert "根据已知信息无法回答该问题" in book.zh.refusal
    assert book.en.refusal


@pytest.mark.parametrize(("question", "lang"), [
    ("How many projects were announced?", "en"),
    ("第十条规定了什么？", "zh"),
    ("ChatGLM2-6B 的上下文长度是多少？", "zh"),
    ("What does 我 mean in the sentence above?", "en"),
    ("What does “增持” mean?", "en"),
    ("报错 No module named 'configs.model_config' 是哪个 issue", "zh"),  # the quoted error is no English question
    ("运行 pip install -r requirements.txt 时报错 No matching distribution found？", "zh"),
    ("Why doesn't `pip install` work?", "en"),
])
def test_template_is_picked_by_question_language(question: str, lang: str) -> None:
    _, picked = PromptBook.load(PROMPTS).for_question(question)
    assert picked == lang
    assert is_chinese(question) == (lang == "zh")


def test_missing_placeholder_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(GOOD.replace("{context} ", ""), encoding="utf-8")
    with pytest.raises(ConfigError, match="missing.*context"):
        load_prompt(tmp_path, "bad")


def test_unknown_placeholder_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(GOOD.replace("{refusal}", "{answer}"), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown.*answer"):
        load_prompt(tmp_path, "bad")


def test_missing_template_names_the_setting_and_the_templates_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prompts"):
        load_prompt(tmp_path, "absent")
    with pytest.raises(ConfigError, match=r"templates there: qa_en, qa_zh\); set prompts.qa_zh to one of them"):
        PromptBook.load(PROMPTS, zh_name="nope")


def test_a_prompts_folder_that_is_missing_or_empty_is_named_as_such(tmp_path: Path) -> None:
    # It said "set prompts.qa_zh to one of them", with nothing to choose from.
    with pytest.raises(ConfigError, match=r"prompts folder .*nope does not exist: set paths.prompts_dir"):
        load_prompt(tmp_path / "nope", "qa_zh", "prompts.qa_zh")
    with pytest.raises(ConfigError, match=r"holds no templates \(\*.toml\): set paths.prompts_dir"):
        load_prompt(tmp_path, "qa_zh", "prompts.qa_zh")


def test_context_lists_numbered_sources_with_pages() -> None:
    en = PromptBook.load(PROMPTS).en
    ctx = en.format_context([SourceChunk("a.pdf", 3, 0, 0.9, "alpha"), SourceChunk("b.txt", None, 1, 0.8, "beta")],
                            zh=False)
    assert ctx.index("[1] (a.pdf, page 3)") < ctx.index("alpha") < ctx.index("[2] (b.txt)") < ctx.index("beta")


def test_refusal_is_recognised_despite_punctuation() -> None:
    zh = PromptBook.load(PROMPTS).zh
    assert zh.is_refusal("根据已知信息无法回答该问题")
    assert not zh.is_refusal("根据第十条，答案是三十日。")
