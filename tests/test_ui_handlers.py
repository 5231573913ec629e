"""Web-app handlers called as plain functions, with fake models."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kbqa.bootstrap import build_service
from kbqa.errors import ConfigError, ContextLengthExceeded, KBQAError
from kbqa.qa import chat_turns
from kbqa.schema import ChatMessage
from kbqa.service import KBQAService
from kbqa.ui import handlers
from kbqa.ui.conversations import Conversations
from kbqa.ui.render import sources_html
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import make_settings


@pytest.fixture
def service(tmp_path: Path) -> KBQAService:
    return build_service(make_settings(tmp_path), embedder=FakeEmbedder(),
                         llm=lambda: FakeLLM(replies=["Mars [1]."]))


def upload(tmp_path: Path, name: str, text: str) -> SimpleNamespace:
    path = tmp_path / f"gradio-tmp-{abs(hash((name, text)))}"
    path.write_text(text, encoding="utf-8")
    return SimpleNamespace(name=str(path), orig_name=name)


def test_upload_keeps_original_names_and_reports_each_file(service: KBQAService, tmp_path: Path) -> None:
    progress: list[float] = []
    files = [upload(tmp_path, "planets.md", "Mars is the red planet."), upload(tmp_path, "empty.txt", "")]
    results, docs, summary = handlers.ingest(service, "太空", files, lambda f, m: progress.append(f))
    assert [r[0] for r in results] == ["planets.md", "empty.txt"]
    assert "added" in str(results[0][1]) and "failed" in str(results[1][1])
    assert results[1][3]  # the reason is shown
    assert [d[0] for d in docs] == ["planets.md"]
    assert "1 of 2 files" in summary and "failed" in summary
    assert progress and progress[-1] == pytest.approx(1.0)
    assert handlers.kb_names(service) == ["太空"]


def test_a_batch_where_every_file_fails_says_whether_a_knowledge_base_was_left_uncreated(
        service: KBQAService, tmp_path: Path) -> None:
    *_, summary = handlers.ingest(service, "新库", [upload(tmp_path, "empty.txt", "")])
    assert "No file was indexed" in summary and "a new knowledge base is created only when" in summary
    handlers.ingest(service, "新库", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    *_, summary = handlers.ingest(service, "新库", [upload(tmp_path, "empty.txt", "")])
    assert "No file was indexed" in summary and "created" not in summary  # it exists: nothing to explain


def test_ingest_without_a_knowledge_base_name_is_explained(service: KBQAService, tmp_path: Path) -> None:
    with pytest.raises(KBQAError, match="knowledge base"):
        handlers.ingest(service, "", [upload(tmp_path, "a.txt", "x")])
    with pytest.raises(KBQAError, match="file"):
        handlers.ingest(service, "kb", [])


def test_ask_streams_into_the_chat_and_fills_the_sources_panel(service: KBQAService, tmp_path: Path) -> None:
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    steps = [([dict(m) for m in h], p) for h, p in handlers.ask(service, "kb", "Which planet is red?", [])]
    history, panel = steps[-1]
    assert history[:2] == [{"role": "user", "content": "Which planet is red?"},
                           {"role": "assistant", "content": "Mars [1]."}]
    assert "planets.md" in panel and "Mars is the red planet." in panel and "score" in panel
    # the answer's sources stay beside it in the chat (collapsed), after the panel shows a later answer's
    kept = history[2]
    assert kept["metadata"]["title"] == "Sources: planets.md" and len(history) == 3
    assert kept["content"].startswith("**[1] planets.md** · chunk 0 · score ")
    assert kept["content"].endswith("Mars is the red planet.")
    assert len(steps) >= 3  # sources, tokens, done
    # until the first word, the bubble says what is happening
    assert [h[-1]["content"] for h, _ in steps[:2]] == ["_Searching the documents…_", "_Reading 1 passage…_"]


def test_a_chinese_questions_answer_is_framed_in_chinese(tmp_path: Path) -> None:
    # Its answer, refusal sentence and notice are Chinese; "Searching the documents…", "chunk", "score" and
    # "No sources (click to see why)" around them were English.
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(),
                            llm=lambda: FakeLLM(replies=["三十日 [1]。"]))
    handlers.ingest(service, "kb", [upload(tmp_path, "规则.txt", "第十条 当事人应当在三十日内提出申请。")])
    steps = [([dict(m) for m in h], p) for h, p in handlers.ask(service, "kb", "当事人应当在多少日内提出申请？", [])]
    assert [h[-1]["content"] for h, _ in steps[:2]] == ["_正在检索文档…_", "_正在阅读找到的 1 个段落…_"]
    history, panel = steps[-1]
    assert history[2]["metadata"]["title"] == "来源：规则.txt"
    assert history[2]["content"].startswith("**[1] 规则.txt** · 块 0 · 得分 ")
    assert "按检索顺序排列" in panel and " · 得分 <span" in panel and "chunk" not in panel
    refused = build_service(make_settings(tmp_path / "r", score_threshold_zh=0.99), embedder=FakeEmbedder(),
                            llm=lambda: FakeLLM())
    handlers.ingest(refused, "kb", [upload(tmp_path, "规则.txt", "第十条 当事人应当在三十日内提出申请。")])
    history, panel = list(handlers.ask(refused, "kb", "珠穆朗玛峰有多高？", []))[-1]
    assert history[2]["metadata"]["title"] == "没有来源（点击查看原因）" and "此回答没有来源。" in panel


def test_follow_up_in_the_chat_is_read_with_the_earlier_turns(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars [1].", "Which planet is red and small?", "Yes."])
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    history, _ = list(handlers.ask(service, "kb", "Which planet is red?", []))[-1]
    # Gradio hands the chat back with each message's content as a list of parts.
    as_gradio = [{"role": m["role"], "metadata": m.get("metadata"), "content": [{"text": m["content"], "type": "text"}]}
                 for m in history]
    history, panel = list(handlers.ask(service, "kb", "Is it small?", as_gradio))[-1]
    assert "User: Which planet is red?\nAssistant: Mars [1]." in llm.prompts[1][-1].content
    assert history[-2] == {"role": "assistant", "content": "Yes."}
    assert "read as" in panel and "Which planet is red and small?" in panel


def test_why_an_answer_was_refused_stays_beside_it_in_the_chat(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars [1].", "Is Mars red?", "Yes [1]."])
    service = build_service(make_settings(tmp_path, score_threshold=0.7), embedder=FakeEmbedder(), llm=lambda: llm)
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    history, _ = list(handlers.ask(service, "kb", "Who won the football world cup in 1990?", []))[-1]
    assert history[1]["content"] == "I cannot answer this from the knowledge base."
    why = history[2]
    assert why["metadata"]["title"] == "No sources (click to see why)" and handlers.is_sources_message(why)
    assert "No passage reached the relevance threshold 0.700" in why["content"]
    # an answer's notice is kept with its sources too (the panel shows only the latest one's)
    history, _ = list(handlers.ask(service, "kb", "Which planet is red?", []))[-1]  # a new chat
    history, _ = list(handlers.ask(service, "kb", "Is it red?", history))[-1]
    assert history[-1]["metadata"]["title"] == "Sources: planets.md"
    assert history[-1]["content"].startswith("_Follow-up question read as: “Is Mars red?”_")


def test_the_sources_kept_in_the_chat_are_not_read_as_part_of_the_conversation(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars [1].", "Yes."])
    service = build_service(make_settings(tmp_path, follow_up="concat"), embedder=FakeEmbedder(), llm=lambda: llm)
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    history, _ = list(handlers.ask(service, "kb", "Which planet is red?", []))[-1]
    assert handlers.is_sources_message(history[-1])
    as_gradio = [{**m, "content": [{"text": m["content"], "type": "text"}]} for m in history]
    list(handlers.ask(service, "kb", "Is it small?", as_gradio))
    shown = [m.content for m in llm.prompts[-1]]
    assert "Mars [1]." in shown  # the earlier turn is in the model's prompt (concat)...
    assert not any("score" in text for text in shown)  # ...but not the sources kept beside it


def test_sources_panel_escapes_document_text() -> None:
    from kbqa.schema import SourceChunk

    panel = sources_html([SourceChunk("<b>x</b>.html", 2, 0, 0.5, "<script>alert(1)</script>")])
    assert "<script>" not in panel and "&lt;script&gt;" in panel and "page 2" in panel


def test_delete_document_updates_the_table(service: KBQAService, tmp_path: Path) -> None:
    handlers.ingest(service, "kb", [upload(tmp_path, "a.md", "alpha text"), upload(tmp_path, "b.md", "beta text")])
    assert handlers.confirm_delete_document(service, "kb", "a.md") == ("Delete **a.md** (1 chunk) from **kb**? "
                                                                      "Add the file again to get it back.")
    with pytest.raises(KBQAError, match="no longer in kb"):
        handlers.confirm_delete_document(service, "kb", "gone.md")
    rows, message = handlers.delete_document(service, "kb", "a.md")
    assert [r[0] for r in rows] == ["b.md"] and "a.md" in message
    assert "Deleted" in handlers.delete_kb(service, "kb")
    assert handlers.kb_names(service) == []


def test_asking_without_a_knowledge_base_is_explained(service: KBQAService) -> None:
    with pytest.raises(KBQAError, match="Choose a knowledge base"):
        list(handlers.ask(service, None, "hi", []))


def test_deleting_a_knowledge_base_is_confirmed_with_what_it_holds(service: KBQAService, tmp_path: Path) -> None:
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    assert handlers.confirm_delete_kb(service, "kb") == ("Delete knowledge base **kb** and its 1 file? "
                                                         "This cannot be undone.")
    assert handlers.kb_names(service) == ["kb"]
    with pytest.raises(KBQAError, match="Choose"):
        handlers.confirm_delete_kb(service, None)


def test_a_damaged_knowledge_base_typed_by_name_can_be_deleted_from_the_page(tmp_path: Path) -> None:
    first = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=FakeLLM)
    handlers.ingest(first, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    folder = first.root.open("kb").folder
    (folder / "manifest.json").write_text('{"generation": 3, "fil', encoding="utf-8")  # cut short
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=FakeLLM)  # the next start
    assert handlers.kb_names(service) == []  # not listed, but its name can be typed
    question = handlers.confirm_delete_kb(service, "kb")
    assert question.startswith("Delete knowledge base **kb**? It is damaged, so its files cannot be listed")
    assert str(folder / "content") in question
    handlers.delete_kb(service, "kb")
    assert not folder.exists()


def test_question_shows_at_once_but_an_empty_knowledge_base_leaves_the_chat_alone(service: KBQAService,
                                                                                 tmp_path: Path) -> None:
    service.create_kb("empty")
    with pytest.raises(KBQAError, match="no documents yet"):
        next(handlers.ask(service, "empty", "anything?", []))
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    history, panel = next(handlers.ask(service, "kb", "Which planet is red?", []))
    assert history[-2:] == [{"role": "user", "content": "Which planet is red?"},
                            {"role": "assistant", "content": "_Searching the documents…_"}]  # not an empty bubble
    assert "Searching" in panel


class FakeOverflowingLLM(FakeLLM):
    """A model whose context every question after the first overflows (as a very long question does)."""

    def stream(self, messages, params=None, usage=None):  # type: ignore[no-untyped-def, override]
        if self.prompts:
            raise ContextLengthExceeded("The prompt does not fit the model's context; send less text.")
        return super().stream(messages, params, usage)


def test_a_question_that_fails_leaves_the_chat_and_is_not_read_with_the_next(tmp_path: Path) -> None:
    llm = FakeOverflowingLLM(replies=["Mars [1]."])
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    before, _ = list(handlers.ask(service, "kb", "Which planet is red?", []))[-1]
    steps = []
    with pytest.raises(ConfigError, match="too long for the model: shorten it") as info:
        for step in handlers.ask(service, "kb", "Which planet is red? " * 50, before):
            steps.append(step)
    assert "does not fit" in str(info.value)  # the details stay
    history, panel = steps[-1]
    assert history == before and "Not answered: The question is too long for the model: shorten it" in panel
    assert "The question was: Which planet is red? Which" in panel and panel.count("Which planet") < 50
    # a reply left empty (a client's, or one cut off) is no earlier turn either
    assert chat_turns([ChatMessage("user", "a?"), ChatMessage("assistant", " "), ChatMessage("user", "b?"),
                       ChatMessage("assistant", "B.")]) == [("b?", "B.")]


def test_a_changed_upload_is_updated_without_naming_the_servers_temporary_folder(service: KBQAService,
                                                                                  tmp_path: Path) -> None:
    results = []
    for n, text in enumerate(("Mars is red.", "Mars is the red planet.")):
        temp = tmp_path / f"gradio-{n}" / "notes.txt"  # Gradio keeps the file's name in a new folder each time
        temp.parent.mkdir()
        temp.write_text(text, encoding="utf-8")
        results, _, _ = handlers.ingest(service, "kb", [SimpleNamespace(name=str(temp), orig_name="notes.txt")])
    assert "updated" in str(results[0][1])
    assert "gradio-" not in str(results[0]) and "replaces" not in str(results[0])
    assert service.list_documents("kb")[0].name == "notes.txt"
    twins = []
    for n, text in enumerate(("Venus is hot.", "Venus is bright.")):  # two different notes.txt in one batch
        temp = tmp_path / f"gradio-twin-{n}" / "notes.txt"
        temp.parent.mkdir()
        temp.write_text(text, encoding="utf-8")
        twins.append(SimpleNamespace(name=str(temp), orig_name="notes.txt"))
    results, _, _ = handlers.ingest(service, "kb", twins)
    assert "another file named notes.txt is in this batch" in str(results[1][3])  # not "notes.txt (notes.txt)"
    assert "gradio-" not in str(results)
    # The same file chosen twice (left in the box by a refused upload, then dropped again) counts once.
    again = tmp_path / "gradio-again" / "notes.txt"
    again.parent.mkdir()
    again.write_text("Venus is hot.", encoding="utf-8")
    results, _, summary = handlers.ingest(service, "kb", [twins[0], SimpleNamespace(name=str(again),
                                                                                     orig_name="notes.txt")])
    assert len(results) == 1 and "2 files" not in summary


def test_the_files_table_shows_when_in_words_and_the_summary_counts_unchanged_files(service: KBQAService,
                                                                                     tmp_path: Path) -> None:
    from kbqa.ui.render import time_text

    assert time_text("2026-11-26T15:27:48+00:00") == "2026-11-26 15:27 UTC"
    assert time_text("2026-11-26T23:27:48+08:00") == "2026-11-26 15:27 UTC"
    assert time_text("not a time") == "not a time"
    first = upload(tmp_path, "planets.md", "Mars is the red planet.")
    handlers.ingest(service, "kb", [first])
    _, docs, summary = handlers.ingest(service, "kb", [first, upload(tmp_path, "moons.md", "Io is a moon.")])
    assert "2 of 2 files** indexed into **kb** (1 of them unchanged), 1 chunk added" in summary
    *_, again = handlers.ingest(service, "kb", [first, first, upload(tmp_path, "moons.md", "Io is a moon.")])
    assert again == "**Nothing new**: all 2 files are already in **kb**, unchanged."  # one chosen twice counts once
    copy = upload(tmp_path, "planets copy.md", "Mars is the red planet.")
    *_, renamed = handlers.ingest(service, "kb", [first, copy])
    # "all 2 files are already in kb" said of a file never added under that name
    assert renamed == "**Nothing new**: the content of all 2 files is already in **kb**: see the reason column."
    rows, _, bad = handlers.ingest(service, "kb", [first, upload(tmp_path, "x.xyz", "?")])
    assert bad.startswith("**Nothing new**: the file is already in **kb**, unchanged. 1 failed")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", docs[0][4])


def test_the_files_table_says_while_files_are_still_being_added(service: KBQAService, tmp_path: Path) -> None:
    seen: list[tuple[object, str]] = []

    def told(_: object) -> None:  # called inside the batch, as each file is settled
        seen.append((service.adding("kb"), handlers.files_label(service, "kb")))
        if len(seen) == 1:  # deleting it meanwhile names the files that will not get in
            assert "(and the 1 file still being added, which will not be added)?" in handlers.confirm_delete_kb(
                service, "kb")

    files = [tmp_path / "a.md", tmp_path / "b.md"]
    for f in files:
        f.write_text(f"text of {f.name}", encoding="utf-8")
    service.add_files("kb", files, on_file=told)
    assert seen[0] == ((1, 2), "Files in this knowledge base · still adding 1 of 2 files: press ↻ Refresh to see "
                               "them once done")
    assert seen[1] == ((2, 2), "Files in this knowledge base · finishing an upload: press ↻ Refresh to see them "
                               "once done")
    assert service.adding("kb") is None and handlers.files_label(service, "kb") == handlers.FILES_LABEL
    assert handlers.files_label(service, "nothing") == handlers.FILES_LABEL


def planets(tmp_path: Path, llm: FakeLLM) -> KBQAService:
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    handlers.ingest(service, "kb", [upload(tmp_path, "planets.md", "Mars is the red planet.")])
    return service


def test_stop_ends_the_answer_where_it_is_beside_its_sources(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars is red and small and far away [1].", "Is Mars small?", "Yes."])
    service = planets(tmp_path, llm)
    stop = threading.Event()
    steps = []
    for step in handlers.ask(service, "kb", "Which planet is red?", [], stop):
        steps.append(step[0][1]["content"])
        if step[0][1]["content"] == "Mars ":
            stop.set()  # the button, pressed after the first word
    history, panel = step
    assert steps[-1] == "Mars _(stopped)_" and len(steps) == 4  # searching, reading, "Mars ", stopped
    # the passages it was read from stay beside it
    assert len(history) == 3 and history[-1]["metadata"]["title"] == "Sources: planets.md"
    assert "Mars is the red planet." in panel
    assert llm.streaming == 0  # the model's stream was closed, not left running
    # A follow-up reads what had come, without the mark.
    history, _ = list(handlers.ask(service, "kb", "Is it small?", history))[-1]
    assert "User: Which planet is red?\nAssistant: Mars\n" in llm.prompts[1][-1].content + "\n"
    assert "stopped" not in llm.prompts[1][-1].content and history[-2]["content"] == "Yes."


def test_an_answer_stopped_before_its_first_word_asks_nothing_and_is_not_read_with_the_next(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars [1]."])
    service = planets(tmp_path, llm)
    stop = threading.Event()
    steps = []
    for history, _ in handlers.ask(service, "kb", "Which planet is red?", [], stop):
        steps.append(history[-1]["content"])
        stop.set()  # while it searches
    assert steps == ["_Searching the documents…_", "_(stopped)_"] and not llm.prompts
    assert [m["role"] for m in history] == ["user", "assistant"]  # no sources were found yet
    # the stopped question is no earlier turn: the next one is asked as it is, not read with the chat first
    _, panel = list(handlers.ask(service, "kb", "Which planet is red?", history))[-1]
    assert len(llm.prompts) == 1 and "read as" not in panel
    assert "User:" not in llm.prompts[0][-1].content


def test_stop_while_the_model_answers_someone_else_never_starts_it(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Mars [1]."])
    service = planets(tmp_path, llm)
    stop = threading.Event()
    steps: list[tuple[list[dict[str, Any]], str]] = []
    with llm.busy:  # another request holds the model
        asking = threading.Thread(target=lambda: steps.extend(handlers.ask(service, "kb", "Which planet is red?",
                                                                            [], stop)))
        asking.start()
        deadline = time.time() + 10
        while len(steps) < 2:  # passages found: it now waits for the model
            assert time.time() < deadline
            time.sleep(0.01)
        stop.set()
    asking.join(10)
    assert llm.skipped == 1 and not llm.prompts
    history = steps[-1][0]
    assert history[1] == {"role": "assistant", "content": "_(stopped)_"}
    assert history[2]["metadata"]["title"] == "Sources: planets.md"


def test_a_stopped_chinese_answer_is_marked_in_chinese() -> None:
    assert handlers.stopped_answer("三十日", zh=True) == "三十日 _（已停止）_"
    assert handlers.stopped_answer("  ", zh=True) == "_（已停止）_"


def test_a_new_chat_returns_only_once_the_running_answer_has_ended() -> None:
    """The new chat's empty output must follow the old answer's last words, never precede them."""
    chats = Conversations(settle_seconds=10)
    started, events = threading.Event(), []

    def answer() -> None:
        number = chats.current("s")
        with chats.answering("s") as stop:
            started.set()
            assert stop.wait(5)
            time.sleep(0.3)  # a word still on its way to the page when the stop came
            events.append("last words sent" if chats.current("s") == number else "stale words dropped")
        events.append("answer ended")

    worker = threading.Thread(target=answer)
    worker.start()
    assert started.wait(5)
    chats.new("s")
    events.append("new chat shown")
    worker.join()
    assert events == ["stale words dropped", "answer ended", "new chat shown"]


def test_a_new_chat_waits_no_longer_than_its_limit_for_a_silent_model() -> None:
    chats = Conversations(settle_seconds=0.2)
    with chats.answering("s") as stop:  # the model still reads its prompt: no word comes to notice the stop
        began = time.monotonic()
        chats.new("s")
        assert stop.is_set() and time.monotonic() - began < 2
    chats.new("s")  # none running: at once
    assert chats.current("s") == 2 and chats.current("other") == 0


def test_stop_keeps_the_conversation() -> None:
    chats = Conversations()
    with chats.answering("s") as stop:
        chats.stop("s")
        assert stop.is_set() and chats.current("s") == 0
    assert chats.stop("s") is None
