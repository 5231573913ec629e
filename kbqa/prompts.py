"""Prompt templates: TOML files in ``prompts/``, placeholders checked when loaded.

Each template has ``system``, ``user`` (with ``{context}`` and ``{question}``, optionally
``{refusal}``), ``refusal`` (the sentence used when the context lacks the answer) and ``context_item``
(how one retrieved chunk is shown). Optionally, for follow-up questions in a chat, ``rewrite`` (with
``{history}`` and ``{question}``: asks the model for a standalone question) and ``history_turn`` (with
``{question}`` and ``{answer}``: how one earlier turn is shown in ``{history}``). Optionally ``translate``
(with ``{question}``: asks the model to translate a question into the other language, Chinese for the
English template and English for the Chinese one, when the documents are in it). A missing or unknown
placeholder fails at load, not mid-answer.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kbqa.errors import ConfigError
from kbqa.language import is_chinese
from kbqa.schema import ChatMessage, SourceChunk

_REQUIRED = {"user": {"context", "question"}, "context_item": {"text"}, "rewrite": {"history", "question"},
             "history_turn": {"question", "answer"}, "translate": {"question"}}
_ALLOWED = {"system": set(), "user": {"context", "question", "refusal"},
            "context_item": {"n", "source", "page", "text"}, "refusal": set(),
            "rewrite": {"history", "question"}, "history_turn": {"question", "answer"},
            "translate": {"question"}}
_OPTIONAL = {"rewrite", "history_turn", "translate"}
#: Characters of an earlier answer shown to the model when rewriting a follow-up question.
_ANSWER_CHARS = 300


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


@dataclass(frozen=True)
class PromptTemplate:
    """A question-answering prompt in one language."""

    name: str
    system: str
    user: str
    refusal: str
    context_item: str
    #: Asks for a standalone version of a follow-up question (``{history}``, ``{question}``); "" = none.
    rewrite: str = ""
    history_turn: str = ""
    #: Asks for the question in the other language (``{question}``); "" = none.
    translate: str = ""

    def format_context(self, sources: Sequence[SourceChunk], zh: bool) -> str:
        """The numbered passages, in retrieval order."""
        items = []
        for n, src in enumerate(sources, 1):
            page = "" if src.page is None else (f"，第{src.page}页" if zh else f", page {src.page}")
            items.append(self.context_item.format(n=n, source=src.source, page=page, text=src.text.strip()))
        return "\n\n".join(items)

    def messages(self, question: str, context: str) -> list[ChatMessage]:
        """System and user messages for the LLM."""
        msgs = [ChatMessage("system", self.system)] if self.system.strip() else []
        msgs.append(ChatMessage("user", self.user.format(context=context, question=question.strip(),
                                                         refusal=self.refusal)))
        return msgs

    def rewrite_messages(self, history: Sequence[tuple[str, str]], question: str) -> list[ChatMessage]:
        """The request for a standalone question, given earlier ``(question, answer)`` turns.

        Raises:
            ConfigError: the template has no ``rewrite`` prompt.
        """
        if not self.rewrite or not self.history_turn:
            raise ConfigError(f"Prompt template '{self.name}' has no 'rewrite' and 'history_turn' prompts, which "
                              "retrieval.follow_up = \"rewrite\" needs; add them or choose another follow_up mode.")
        turns = "\n".join(self.history_turn.format(question=q.strip(), answer=_shorten(a.strip()))
                          for q, a in history)
        return [ChatMessage("user", self.rewrite.format(history=turns, question=question.strip()))]

    def translate_messages(self, question: str) -> list[ChatMessage]:
        """The request for ``question`` in the other language.

        Raises:
            ConfigError: the template has no ``translate`` prompt.
        """
        if not self.translate:
            raise ConfigError(f"Prompt template '{self.name}' has no 'translate' prompt, which retrieval.translate "
                              "needs; add it or set retrieval.translate = false.")
        return [ChatMessage("user", self.translate.format(question=question.strip()))]

    def is_refusal(self, answer: str) -> bool:
        """True when the model answered with (essentially) the refusal sentence."""
        def norm(s: str) -> str:
            return re.sub(r"[\W_]+", "", s.lower())
        target = norm(self.refusal)
        return bool(target) and target in norm(answer)


def _shorten(text: str) -> str:
    return text if len(text) <= _ANSWER_CHARS else text[:_ANSWER_CHARS].rstrip() + "…"


def load_prompt(folder: Path, name: str, setting: str = "prompts.*") -> PromptTemplate:
    """Load ``<folder>/<name>.toml`` and check its placeholders; ``setting`` names where ``name`` came from.

    Raises:
        ConfigError: the file is missing, not TOML, lacks a key, or uses a wrong placeholder.
    """
    path = Path(folder) / f"{name}.toml"
    if not path.is_file():
        if not Path(folder).is_dir():
            raise ConfigError(f"The prompts folder {folder} does not exist: set paths.prompts_dir "
                              "(KBQA_PATHS__PROMPTS_DIR) to a folder of templates, such as the project's prompts/.")
        there = sorted(p.stem for p in Path(folder).glob("*.toml"))
        if not there:
            raise ConfigError(f"The prompts folder {folder} holds no templates (*.toml): set paths.prompts_dir "
                              "(KBQA_PATHS__PROMPTS_DIR) to a folder of templates, such as the project's prompts/.")
        raise ConfigError(f"Prompt template {path} not found (the templates there: {', '.join(there)}); set "
                          f"{setting} to one of them, or paths.prompts_dir to the folder of yours.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Prompt template {path} is not valid TOML: {exc}") from exc
    for key, allowed in _ALLOWED.items():
        if key in _OPTIONAL and key not in data:
            continue
        if key not in data or not isinstance(data[key], str):
            raise ConfigError(f"Prompt template {path} needs a text value '{key}'.")
        try:
            found = _placeholders(data[key])
        except ValueError as exc:
            raise ConfigError(f"Prompt template {path}, '{key}': {exc} (write literal braces as {{{{ }}}}).") from exc
        missing = _REQUIRED.get(key, set()) - found
        unknown = found - allowed
        if missing or unknown:
            raise ConfigError(f"Prompt template {path}, '{key}': "
                              + (f"missing {sorted(missing)} " if missing else "")
                              + (f"unknown {sorted(unknown)}" if unknown else "")
                              + f"; allowed placeholders: {sorted(allowed)}.")
    if ("rewrite" in data) != ("history_turn" in data):
        raise ConfigError(f"Prompt template {path}: 'rewrite' and 'history_turn' go together; give both or neither.")
    return PromptTemplate(name=name, system=data["system"], user=data["user"], refusal=data["refusal"].strip(),
                          context_item=data["context_item"], rewrite=data.get("rewrite", ""),
                          history_turn=data.get("history_turn", ""), translate=data.get("translate", ""))


class PromptBook:
    """The Chinese and English templates, picked by the question's language."""

    def __init__(self, zh: PromptTemplate, en: PromptTemplate) -> None:
        self.zh = zh
        self.en = en

    @classmethod
    def load(cls, folder: Path, zh_name: str = "qa_zh", en_name: str = "qa_en") -> PromptBook:
        """Load both templates from ``folder``."""
        return cls(load_prompt(folder, zh_name, "prompts.qa_zh"), load_prompt(folder, en_name, "prompts.qa_en"))

    def for_question(self, question: str) -> tuple[PromptTemplate, str]:
        """The template for this question and its language code (``zh`` or ``en``)."""
        return (self.zh, "zh") if is_chinese(question) else (self.en, "en")
