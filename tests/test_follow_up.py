"""Follow-up questions in a chat: rewritten, concatenated or taken alone, through the service (fake models)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.errors import ConfigError
from kbqa.prompts import PromptBook, load_prompt
from kbqa.qa import chat_turns, clean_rewrite
from kbqa.schema import ChatMessage
from kbqa.service import KBQAService
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import ROOT, files_in, make_settings

NILE = [ChatMessage("user", "Which river flows through Egypt?"), ChatMessage("assistant", "The Nile.")]


@pytest.fixture
def service_for(tmp_path: Path, docs: Path, llm: FakeLLM) -> Callable[..., KBQAService]:
    def build(**retrieval: object) -> KBQAService:
        service = build_service(make_settings(tmp_path, **retrieval), embedder=FakeEmbedder(), llm=lambda: llm)
        service.add_files("kb", files_in(docs))
        return service
    return build


def test_follow_up_is_rewritten_searched_for_and_answered_as_a_standalone_question(
        service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = ["Standalone question: “Which way does the Nile flow?”", "North [1]."]
    answer = service.ask("kb", "Which way does it flow?", NILE)
    rewrite_prompt, answer_prompt = llm.prompts
    assert "Which river flows through Egypt?" in rewrite_prompt[-1].content
    assert "The Nile." in rewrite_prompt[-1].content
    assert "Follow-up question: Which way does it flow?" in rewrite_prompt[-1].content
    assert answer.query == "Which way does the Nile flow?"
    assert answer.sources[0].source == "rivers.txt" and "Nile flows north" in answer.sources[0].text
    assert "Question: Which way does the Nile flow?" in answer_prompt[-1].content
    assert "read as: “Which way does the Nile flow?”" in answer.notice
    assert "?”." not in answer.notice  # no full stop after the question's own mark
    assert answer.to_dict()["query"] == "Which way does the Nile flow?"


def test_first_question_of_a_chat_is_not_rewritten(service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite")
    answer = service.ask("kb", "Which is the largest planet?", [ChatMessage("system", "be brief")])
    assert len(llm.prompts) == 1
    assert answer.query == "Which is the largest planet?" and answer.notice == ""


def test_a_rewrite_that_is_no_question_falls_back_to_the_earlier_questions(
        service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = ["   \n", "North."]
    answer = service.ask("kb", "Which way does it flow?", NILE)
    assert answer.query == "Which river flows through Egypt?\nWhich way does it flow?"
    # The model then sees the earlier turn as chat messages before the question.
    assert [m.content for m in llm.prompts[-1][1:3]] == ["Which river flows through Egypt?", "The Nile."]
    assert "Question: Which way does it flow?" in llm.prompts[-1][-1].content


def test_concat_searches_with_the_earlier_questions_without_asking_the_model_to_rewrite(
        service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="concat")
    answer = service.ask("kb", "Which way does it flow?", NILE)
    assert len(llm.prompts) == 1
    assert answer.query == "Which river flows through Egypt?\nWhich way does it flow?"
    assert [m.role for m in llm.prompts[0]] == ["system", "user", "assistant", "user"]
    # The page says what was searched for (a rewritten follow-up's notice did; this one said nothing).
    assert answer.notice.startswith("Follow-up question searched for together with the earlier questions: "
                                    "“Which river flows through Egypt? / Which way does it flow?”")


def test_off_takes_the_question_alone(service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="off")
    answer = service.ask("kb", "Which way does it flow?", NILE)
    assert answer.query == "Which way does it flow?"
    assert len(llm.prompts) == 1 and len(llm.prompts[0]) == 2


def test_only_the_last_turns_are_read(service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite", history_turns=1)
    history = [ChatMessage("user", "Tell me about Jupiter."), ChatMessage("assistant", "It is the largest."), *NILE]
    llm.replies = ["Which way does the Nile flow?", "North."]
    service.ask("kb", "Which way does it flow?", history)
    assert "Jupiter" not in llm.prompts[0][-1].content and "Egypt" in llm.prompts[0][-1].content


def test_search_reads_a_follow_up_too(service_for: Callable[..., KBQAService], llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = ["Which way does the Nile flow?"]
    found = service.search("kb", "Which way does it flow?", 2, NILE)
    assert found[0].source == "rivers.txt"
    assert len(llm.prompts) == 1


def test_chinese_follow_up_gets_the_chinese_rewrite_prompt(service_for: Callable[..., KBQAService],
                                                           llm: FakeLLM) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = ["完整问题：木星是最大的行星吗？", "是。"]
    history = [ChatMessage("user", "木星是什么？"), ChatMessage("assistant", "行星。")]
    answer = service.ask("kb", "它是最大的吗？", history)
    assert "用户：木星是什么？" in llm.prompts[0][-1].content
    assert answer.query == "木星是最大的行星吗？"


@pytest.mark.parametrize("copy", ["完整问题：埃菲尔铁塔有多高？", "埃菲尔铁塔是哪一年建成的"])
def test_a_rewrite_that_copies_the_prompts_example_is_not_searched_for(service_for: Callable[..., KBQAService],
                                                                         llm: FakeLLM, copy: str) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = [copy, "不知道。"]
    history = [ChatMessage("user", "木星是什么？"), ChatMessage("assistant", "行星。")]
    answer = service.ask("kb", "2022年预计营业总收入是多少？", history)
    assert answer.query == "木星是什么？\n2022年预计营业总收入是多少？"  # the earlier questions, not the example
    llm.replies = ["完整问题：埃菲尔铁塔有多高？", "324米。"]  # where the chat is about it, the same words are right
    history = [ChatMessage("user", "埃菲尔铁塔是哪一年建成的？"), ChatMessage("assistant", "1889年。")]
    assert service.ask("kb", "那它有多高？", history).query == "埃菲尔铁塔有多高？"


@pytest.mark.parametrize(("reply", "question"), [
    ("Standalone question: How tall is it?", "How tall is it?"),
    ("**Standalone question:** \"How tall is it?\"\nIt is 330 m.", "How tall is it?"),
    ("\n\n完整问题：埃菲尔铁塔有多高？", "埃菲尔铁塔有多高？"),
    ("「它有多高？」", "它有多高？"),
    ("", ""),
])
def test_rewrite_reply_is_cleaned_to_the_question(reply: str, question: str) -> None:
    assert clean_rewrite(reply) == question


def test_chat_turns_pair_questions_with_answers() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", "q1"), ChatMessage("assistant", "a1"),
                ChatMessage("user", "unanswered"), ChatMessage("user", "q2"), ChatMessage("assistant", "a2")]
    assert chat_turns(messages) == [("q1", "a1"), ("q2", "a2")]


def test_templates_without_a_rewrite_prompt_load_but_rewrite_mode_refuses_them(tmp_path: Path,
                                                                              llm: FakeLLM) -> None:
    for name in ("qa_zh", "qa_en"):
        text = (ROOT / "prompts" / f"{name}.toml").read_text(encoding="utf-8")
        (tmp_path / f"{name}.toml").write_text(text[:text.index("\n# Follow-up")] if "Follow-up" in text
                                               else text[:text.index("\n# 聊天中的后续问题")], encoding="utf-8")
    assert PromptBook.load(tmp_path).en.rewrite == ""
    settings = make_settings(tmp_path).model_copy(deep=True)
    settings.paths.prompts_dir = tmp_path
    with pytest.raises(ConfigError, match="follow_up"):
        build_service(settings, embedder=FakeEmbedder(), llm=lambda: llm)
    settings.retrieval.follow_up = "concat"
    with pytest.raises(ConfigError, match="no 'translate' prompt.*retrieval.translate = false"):
        build_service(settings, embedder=FakeEmbedder(), llm=lambda: llm)
    settings.retrieval.translate = False
    build_service(settings, embedder=FakeEmbedder(), llm=lambda: llm)


def test_rewrite_prompt_needs_its_placeholders(tmp_path: Path) -> None:
    text = (ROOT / "prompts" / "qa_en.toml").read_text(encoding="utf-8")
    (tmp_path / "bad.toml").write_text(text.replace("{history}", "the conversation"), encoding="utf-8")
    with pytest.raises(ConfigError, match="rewrite.*history"):
        load_prompt(tmp_path, "bad")


def test_jsonl_history_makes_a_follow_up(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("x", encoding="utf-8")
    row = {"history": [{"question": "q1", "answer": "a1"}], "question": "and?", "answer": "x", "doc": "doc.txt",
           "kind": "follow-up"}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    item = ev.load_dataset(tmp_path / "d.jsonl").items[0]
    assert item.history == (("q1", "a1"),) and item.kind == "follow-up"
    assert [(m.role, m.content) for m in item.chat()] == [("user", "q1"), ("assistant", "a1")]
    (tmp_path / "d.jsonl").write_text(json.dumps({**row, "history": ["q1"]}) + "\n", encoding="utf-8")
    with pytest.raises(ev.KBQAError, match="history"):
        ev.load_dataset(tmp_path / "d.jsonl")


@pytest.mark.parametrize("name", ["sotu_followup.jsonl", "zh_followup.jsonl"])
def test_follow_up_datasets_hold_gold_answers_verbatim(name: str, corpus: Path) -> None:
    rows = [json.loads(line) for line in (ROOT / "benchmarks/datasets/followup" / name).read_text("utf-8").splitlines()]
    assert [r["kind"] for r in rows].count("follow-up") == 15 and len(rows) == 20
    for row in rows:
        doc = ev.squash((corpus / row["doc"]).read_text(encoding="utf-8"))
        assert ev.squash(row["answer"]) in doc, row
        assert row["history"] and all(t["question"] and t["answer"] for t in row["history"])


@pytest.mark.parametrize("mode", ["rewrite", "concat"])
def test_a_long_earlier_turn_is_clipped_not_sent_whole(service_for: Callable[..., KBQAService], llm: FakeLLM,
                                                      mode: str) -> None:
    # A document pasted into the chat must not overflow the model's context when a follow-up is read with it.
    pasted = "Which river flows through Egypt? " + "Some pasted text. " * 3000
    service = service_for(follow_up=mode)
    llm.replies = ["Which way does the Nile flow?", "North."] if mode == "rewrite" else ["North."]
    answer = service.ask("kb", "Which way does it flow?", [ChatMessage("user", pasted), NILE[1]])
    assert answer.answer.startswith("North")
    for prompt in llm.prompts:
        assert sum(len(m.content) for m in prompt) < 6000, [len(m.content) for m in prompt]
    assert "Which river flows through Egypt?" in " ".join(m.content for m in llm.prompts[0])  # its start is kept
    assert len(answer.query) < 1200


@pytest.mark.parametrize(("follow_up", "reply", "read_as"), [
    ("Which way does it flow?", "The Nile flows north.", "concat"),  # answered, not rewritten
    ("那提请抗诉呢？", "人民检察院提出抗诉，应当在决定之日起十五日内移送法院。", "concat"),
    ("Which way does it flow?", "Which way does the Nile flow", "rewritten"),  # a question without its mark
    ("Tell me more about it", "Tell me more about the Nile", "rewritten"),  # no question to begin with
    ("那第二个元素呢？", "提示工程的第三个主要元素是什么？", "concat"),  # an ordinal the chat never had
    ("And the second one?", "Which river flows through Egypt?", "concat"),  # the earlier question again
    ("What about the second one?", "What is the second river of Egypt?", "rewritten"),
    ("What about the second one?", "Which way does the Nile flow?", "rewritten"),  # replaced by what it is
    ("那最后一种呢？", "尼罗河的最后一种用途是什么？", "rewritten"),
])
def test_a_rewrite_that_answers_the_question_or_changes_its_numbers_is_not_searched_for(
        service_for: Callable[..., KBQAService], llm: FakeLLM, follow_up: str, reply: str, read_as: str) -> None:
    service = service_for(follow_up="rewrite")
    llm.replies = [reply, "North."]
    answer = service.ask("kb", follow_up, NILE)
    assert answer.query == (reply if read_as == "rewritten" else f"{NILE[0].content}\n{follow_up}")
