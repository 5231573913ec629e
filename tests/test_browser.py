"""The web app in headless Chromium: upload with progress, ask, see the answer and its sources.

Runs the real server (web app mounted on the API, in this process, fake models) on 127.0.0.1 and drives
it with Playwright and Debian's Chromium (``make browser`` installs it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kbqa.bootstrap import build_service
from kbqa.errors import ConfigError
from kbqa.service import KBQAService
from kbqa.settings import load_settings
from kbqa.ui.app import build_server
from tests.fakes import FakeEmbedder, FakeLLM
from tests.live_server import live_server
from tests.test_service import make_settings

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


def wait_text(locator: Any, text: str, seconds: float) -> None:
    """Wait until ``text`` shows in the element (Gradio re-renders tables, so poll the text)."""
    deadline = time.time() + seconds
    while text not in locator.inner_text():
        assert time.time() < deadline, f"{text!r} did not appear in: {locator.inner_text()[:500]}"
        time.sleep(0.2)


def settled_text(locator: Any, seconds: float) -> str:
    """The element's text once Gradio's pending-message marker ("Loading content") has gone."""
    deadline = time.time() + seconds
    while "Loading content" in (text := locator.inner_text()):
        assert time.time() < deadline, f"still loading after {seconds} s: {text[-300:]}"
        time.sleep(0.2)
    return text


def add_files(page: Any, kb_name: str, files: list[Path]) -> None:
    """Type a knowledge-base name, drop files on the Documents tab and press Add."""
    kb = page.locator("#kb-select input")
    kb.fill(kb_name)
    kb.press("Enter")
    page.get_by_role("tab", name="Documents").click()
    page.locator("#upload input[type=file]").set_input_files([str(f) for f in files])
    for f in files:  # uploaded (listed by the file box) before Add is pressed
        wait_text(page.locator("#upload"), f.stem, 30)  # shown as stem and suffix on two lines
    page.locator("#ingest-button").click()


def add_text_file(page: Any, kb_name: str, path: Path, text: str) -> None:
    """Write a text file, add it to a knowledge base and wait until the files table lists it."""
    path.write_text(text, encoding="utf-8")
    add_files(page, kb_name, [path])
    wait_text(page.locator("#docs"), path.name, 30)


@pytest.fixture(scope="module")
def llm() -> FakeLLM:
    return FakeLLM(replies=["The Yangtze is the longest river in Asia [1]."] * 5)


class FakeGatedEmbedder(FakeEmbedder):
    """Holds back any text holding ``HOLD`` until ``gate`` opens (open unless a test closes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if any("HOLD" in t for t in texts):
            assert self.gate.wait(60), "the test never opened the gate"
        return super().embed_documents(texts)


@contextlib.contextmanager
def upload_held(page: Any, embedder: FakeGatedEmbedder, kb_name: str, path: Path) -> Iterator[None]:
    """Add a file whose embedding waits until the block ends: the upload is running inside it."""
    path.write_text(f"HOLD: {path.name} is still being added.", encoding="utf-8")
    embedder.gate.clear()
    try:
        add_files(page, kb_name, [path])
        wait_text(page.locator("#ingest-results"), path.name, 30)  # the progress bar names it
        yield
    finally:
        embedder.gate.set()


@pytest.fixture(scope="module")
def embedder() -> FakeGatedEmbedder:
    return FakeGatedEmbedder()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM, embedder: FakeGatedEmbedder) -> KBQAService:
    return build_service(make_settings(tmp_path_factory.mktemp("web")), embedder=embedder, llm=lambda: llm)


@pytest.fixture(scope="module")
def server(service: KBQAService) -> Iterator[str]:
    with live_server(build_server(service, load_settings())) as url:
        yield url


@pytest.fixture
def alpha(service: KBQAService, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Knowledge base 甲 holding 甲.txt, so a chat test does not rely on a test before it."""
    doc = tmp_path_factory.mktemp("alpha") / "甲.txt"
    doc.write_text("Alpha is first.", encoding="utf-8")
    report = service.add_files("甲", [doc])
    assert report.ok, report.files
    return "甲"


def choose_kb(page: Any, name: str) -> None:
    """Pick a knowledge base as a user can: type its name in the box and press Enter."""
    box = page.locator("#kb-select input")
    box.fill(name)
    box.press("Enter")
    page.wait_for_timeout(500)


def ask(page: Any, question: str) -> None:
    page.get_by_role("tab", name="Chat").click()
    page.locator("#question textarea").fill(question)
    page.locator("#ask-button").click()


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "Chromium is missing: run `make browser`"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        pg.goto(server)
        yield pg
        browser.close()


def test_upload_then_ask_shows_answer_and_sources(page: Any, tmp_path: Path) -> None:
    doc = tmp_path / "rivers.txt"
    gauge = "-".join(f"{n}%" for n in range(0, 400, 20))  # a long unbroken run, as a chart's labels are
    doc.write_text(f"The Yangtze is the longest river in Asia. Its gauges read {gauge}.\n\nThe Nile flows north.",
                   encoding="utf-8")
    bad = tmp_path / "notes.xyz"
    bad.write_text("unknown format", encoding="utf-8")

    add_files(page, "河流 rivers", [doc, bad])
    results = page.locator("#ingest-results")
    wait_text(page.locator("#ingest-summary"), "1 of 2 files", 30)  # the progress names files: wait for the end
    assert "rivers.txt" in results.inner_text() and "added" in results.inner_text()
    assert "failed" in results.inner_text() and "notes.xyz" in results.inner_text()
    # the whole reason is on screen (it lists the formats to convert to), none of it clipped in its cell
    overflow = results.evaluate("t => [...t.querySelectorAll('.virtual-table-viewport')]"
                                ".map(v => v.scrollWidth - v.clientWidth)")
    assert overflow and max(overflow) <= 1, overflow
    wait_text(page.locator("#docs"), "rivers.txt", 10)

    page.get_by_role("tab", name="Chat").click()
    page.locator("#question textarea").fill("Which is the longest river in Asia?")
    page.locator("#ask-button").click()
    wait_text(page.locator("#chatbot"), "longest river in Asia [1]", 30)
    sources = page.locator("#sources")
    wait_text(sources, "rivers.txt", 10)
    text = sources.inner_text()
    assert "score" in text and "The Yangtze is the longest river in Asia." in text
    # a long unbroken run wraps inside its card instead of running past its edge
    overflow = sources.evaluate("s => [...s.querySelectorAll('.kbqa-source-text')]"
                                ".map(t => t.scrollWidth - t.clientWidth)")
    assert overflow and max(overflow) <= 1, overflow
    # the answer keeps its sources beside it in the chat, collapsed: opened, they show file, chunk, score, text
    kept = page.locator("#chatbot").get_by_text("Sources: rivers.txt")
    kept.wait_for(timeout=10_000)
    kept.click()
    wait_text(page.locator("#chatbot"), "[1] rivers.txt · chunk 0 · score", 10)
    assert "The Yangtze is the longest river in Asia." in page.locator("#chatbot").inner_text()


def test_each_file_of_an_upload_shows_its_outcome_once_settled(page: Any, embedder: FakeGatedEmbedder,
                                                                tmp_path: Path) -> None:
    bad = tmp_path / "first.xyz"
    bad.write_text("unknown format", encoding="utf-8")
    slow = tmp_path / "second.txt"
    slow.write_text("HOLD: a file whose embedding takes a while.", encoding="utf-8")
    embedder.gate.clear()
    try:
        add_files(page, "逐个", [bad, slow])
        results = page.locator("#ingest-results")
        table = results.locator(".table-wrap")
        wait_text(table, "first.xyz", 30)  # settled while the second file is still being indexed
        assert "failed" in table.inner_text() and "second.txt" not in table.inner_text()
        wait_text(results, "of second.txt", 10)  # the progress bar goes on over the table, naming the file
        wait_text(page.locator("#ingest-summary"), "1 of 2 files done", 10)
    finally:
        embedder.gate.set()
    wait_text(page.locator("#ingest-summary"), "1 of 2 files indexed", 30)
    assert "second.txt" in results.inner_text() and "added" in results.inner_text()
    wait_text(page.locator("#docs"), "second.txt", 10)


def test_a_knowledge_base_chosen_during_an_upload_stays_chosen(page: Any, embedder: FakeGatedEmbedder,
                                                                tmp_path: Path) -> None:
    add_text_file(page, "别处", tmp_path / "other.txt", "A file of the other knowledge base.")
    with upload_held(page, embedder, "上传中", tmp_path / "slow.txt"):
        choose_kb(page, "别处")  # and the user goes on with another knowledge base
    wait_text(page.locator("#ingest-summary"), "indexed into 上传中", 30)
    page.wait_for_timeout(1000)
    assert page.locator("#kb-select input").input_value() == "别处"  # not switched back under the user
    wait_text(page.locator("#docs"), "other.txt", 10)
    assert "slow.txt" not in page.locator("#docs").inner_text()


def test_a_reload_during_an_upload_says_files_are_still_being_added(page: Any, embedder: FakeGatedEmbedder,
                                                                    tmp_path: Path) -> None:
    with upload_held(page, embedder, "重新加载", tmp_path / "held.txt"):
        page.reload()
        page.get_by_role("tab", name="Documents").click()
        wait_text(page.locator("#docs"), "still adding 1 of 1 file", 20)
    page.wait_for_timeout(1000)
    page.locator("#kb-refresh").click()
    wait_text(page.locator("#docs"), "held.txt", 20)
    assert "still adding" not in page.locator("#docs").inner_text()


def test_a_reload_during_an_upload_shows_its_outcomes_again(page: Any, embedder: FakeGatedEmbedder,
                                                            tmp_path: Path) -> None:
    # The README says a reload mid-upload loses nothing; the failed files' reasons were lost with the page.
    bad, held = tmp_path / "notes.xyz", tmp_path / "slow2.txt"
    bad.write_text("not a format kbqa reads", encoding="utf-8")
    held.write_text("HOLD: slow2.txt is still being added.", encoding="utf-8")
    embedder.gate.clear()
    try:
        add_files(page, "重新加载二", [bad, held])
        wait_text(page.locator("#ingest-results"), "not supported", 30)
        page.reload()
        page.get_by_role("tab", name="Documents").click()
        wait_text(page.locator("#ingest-results"), "notes.xyz", 20)
        assert "not supported" in page.locator("#ingest-results").inner_text()
    finally:
        embedder.gate.set()
    page.wait_for_timeout(1000)
    page.locator("#kb-refresh").click()
    wait_text(page.locator("#ingest-results"), "slow2.txt", 20)
    assert "notes.xyz" in page.locator("#ingest-results").inner_text()


def test_enter_keeps_a_new_name_that_begins_like_an_existing_one(page: Any, server: str, tmp_path: Path) -> None:
    import httpx

    add_text_file(page, "Manuals Archive", tmp_path / "manual.txt", "The manual of the machine.")
    new = tmp_path / "draft.txt"
    new.write_text("A draft for the new knowledge base.", encoding="utf-8")
    add_files(page, "Manuals", [new])  # typed, then Enter: "Manuals Archive" is the first name that matches
    wait_text(page.locator("#ingest-summary"), "indexed into Manuals", 30)
    assert page.locator("#kb-select input").input_value() == "Manuals"
    held = {kb["name"]: kb["documents"] for kb in httpx.get(f"{server}/kb").json()}
    assert held.get("Manuals") == 1 and held["Manuals Archive"] == 1  # nothing went into the existing one
    choose_kb(page, "Manuals Archive")  # a name typed whole still picks it
    wait_text(page.locator("#docs"), "manual.txt", 10)
    box = page.locator("#kb-select input")
    box.fill("Manuals A")
    box.press("ArrowDown")  # chosen with the arrow keys: Enter takes the option
    box.press("Enter")
    page.wait_for_timeout(500)
    assert box.input_value() == "Manuals Archive"


def test_the_files_table_fits_a_narrow_window(page: Any, tmp_path: Path) -> None:
    doc = tmp_path / "en_langchain_llm_apps_primer_second_edition.txt"
    doc.write_text("A primer on building applications with language models.", encoding="utf-8")
    add_files(page, "窄", [doc])
    wait_text(page.locator("#docs"), doc.name, 30)
    page.set_viewport_size({"width": 800, "height": 900})
    try:
        page.wait_for_timeout(500)
        overflow = page.locator("#docs").evaluate("t => [...t.querySelectorAll('.virtual-table-viewport')]"
                                                  ".map(v => v.scrollWidth - v.clientWidth)")
        assert overflow and max(overflow) <= 1, overflow  # nothing cut off at the right (the "added" time)
    finally:
        page.set_viewport_size({"width": 1280, "height": 720})


def test_asking_before_choosing_files_shows_an_error_not_a_traceback(page: Any) -> None:
    page.get_by_role("tab", name="Chat").click()
    kb = page.locator("#kb-select input")
    kb.fill("nothing here yet")
    kb.press("Enter")
    page.locator("#question textarea").fill("anything?")
    page.locator("#ask-button").click()
    deadline = time.time() + 15
    while time.time() < deadline and "No knowledge base named" not in page.content():
        page.wait_for_timeout(200)
    assert "No knowledge base named" in page.content()
    assert "Traceback" not in page.content()
    page.wait_for_timeout(1000)
    assert page.locator("#question-waiting").inner_text().strip() == ""  # not "Sent…" for a question refused


def test_deleting_a_knowledge_base_asks_first(page: Any, tmp_path: Path) -> None:
    add_text_file(page, "保留", tmp_path / "moons.md", "Ganymede is the largest moon.")  # another to fall back to
    doc = tmp_path / "planets.md"
    doc.write_text("Mars is the red planet.", encoding="utf-8")
    add_files(page, "待删除", [doc])
    wait_text(page.locator("#docs"), "planets.md", 30)

    page.locator("#delete-kb").click()
    confirm = page.locator("#confirm-delete-kb")
    wait_text(confirm, "Delete knowledge base 待删除 and its 1 file?", 10)
    page.locator("#confirm-delete-no").click()
    page.wait_for_timeout(500)
    assert not confirm.is_visible()
    assert "planets.md" in page.locator("#docs").inner_text()  # nothing was deleted

    page.locator("#delete-kb").click()
    wait_text(confirm, "cannot be undone", 10)
    page.locator("#confirm-delete-yes").click()
    deadline = time.time() + 15
    while time.time() < deadline and "Deleted knowledge base" not in page.content():
        page.wait_for_timeout(200)
    assert "Deleted knowledge base" in page.content()
    # None is chosen then, not another one: the next question or upload must go where the user says.
    assert page.locator("#kb-select input").input_value() == ""
    page.wait_for_timeout(500)
    page.reload()  # and the browser remembers that none is chosen: neither the deleted one nor another
    page.wait_for_timeout(3000)
    assert page.locator("#kb-select input").input_value() == ""
    page.locator("#kb-refresh").click()  # ↻ Refresh chose the first one listed
    page.wait_for_timeout(1500)
    assert page.locator("#kb-select input").input_value() == ""
    page.locator("#kb-select input").click()
    assert "保留" in page.locator("body").inner_text()  # listed, to be chosen


def test_deleting_a_file_asks_first(page: Any, tmp_path: Path) -> None:
    for name in ("keep.txt", "drop.txt"):
        (tmp_path / name).write_text(f"The text of {name}.", encoding="utf-8")
    add_files(page, "文件删除", [tmp_path / "keep.txt", tmp_path / "drop.txt"])
    wait_text(page.locator("#docs"), "drop.txt", 30)
    choice = page.locator("#doc-choice input")
    for answer in ("#confirm-delete-no", "#confirm-delete-yes"):
        choice.click()
        page.get_by_role("option", name="drop.txt", exact=True).click()
        page.locator("#delete-doc").click()
        wait_text(page.locator("#confirm-delete-kb"), "Delete drop.txt (1 chunk) from 文件删除?", 10)
        assert "drop.txt" in page.locator("#docs").inner_text()  # nothing is deleted before the answer
        page.locator(answer).click()
        page.wait_for_timeout(1000)
        assert not page.locator("#confirm-delete-kb").is_visible()
    wait_text(page.locator("body"), "Deleted drop.txt from 文件删除", 15)
    assert "drop.txt" not in page.locator("#docs").inner_text()
    assert "keep.txt" in page.locator("#docs").inner_text()


def test_a_click_on_a_row_of_the_files_table_chooses_that_file(page: Any, tmp_path: Path) -> None:
    for name in ("first.txt", "second.txt"):
        (tmp_path / name).write_text(f"The text of {name}.", encoding="utf-8")
    add_files(page, "选择文件", [tmp_path / "first.txt", tmp_path / "second.txt"])
    wait_text(page.locator("#docs"), "second.txt", 30)
    page.locator("#docs span").get_by_text("second.txt", exact=True).click()
    page.wait_for_timeout(1000)
    assert page.locator("#doc-choice input").input_value() == "second.txt"
    page.set_viewport_size({"width": 1280, "height": 400})  # a short window: the question opens below the fold
    page.locator("#delete-doc").scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, -120)")  # the buttons at the window's foot, as after scrolling down to them
    page.locator("#delete-doc").click()
    wait_text(page.locator("#confirm-delete-kb"), "Delete second.txt (1 chunk) from 选择文件?", 10)
    page.wait_for_timeout(500)
    box = page.locator("#confirm-delete-yes").bounding_box()
    viewport = page.viewport_size
    assert box is not None and viewport is not None and 0 <= box["y"] <= viewport["height"] - box["height"]  # in view
    page.locator("#confirm-delete-no").click()
    page.set_viewport_size({"width": 1280, "height": 720})


def test_the_knowledge_base_named_in_the_question_is_the_one_deleted(page: Any, tmp_path: Path) -> None:
    for name, text in (("甲", "Alpha is first."), ("乙", "Beta is second.")):
        doc = tmp_path / f"{name}.txt"
        doc.write_text(text, encoding="utf-8")
        add_files(page, name, [doc])
        wait_text(page.locator("#docs"), f"{name}.txt", 30)
    choose_kb(page, "甲")
    page.locator("#delete-kb").click()
    wait_text(page.locator("#confirm-delete-kb"), "Delete knowledge base 甲", 10)
    choose_kb(page, "乙")  # a switch hides the question: nothing can be deleted by mistake
    assert not page.locator("#confirm-delete-kb").is_visible()
    page.locator("#delete-kb").click()
    wait_text(page.locator("#confirm-delete-kb"), "Delete knowledge base 乙", 10)
    page.locator("#confirm-delete-yes").click()
    wait_text(page.locator("body"), "Deleted knowledge base 乙", 15)
    page.reload()  # a fresh page lists the knowledge bases as they are now
    page.locator("#kb-select input").click()
    assert page.get_by_role("option", name="甲", exact=True).is_visible()
    assert page.get_by_role("option", name="乙", exact=True).count() == 0
    page.keyboard.press("Escape")


def test_a_mistake_leaves_the_chat_as_it_was(page: Any, alpha: str, tmp_path: Path) -> None:
    choose_kb(page, "甲")
    ask(page, "What is first?")
    wait_text(page.locator("#chatbot"), "longest river", 30)
    ask(page, "   ")  # an empty question: a warning, and the chat stays
    wait_text(page.locator("body"), "Type a question first", 10)
    page.wait_for_timeout(500)
    assert "What is first?" in page.locator("#chatbot").inner_text()
    assert "Alpha is first." in page.locator("#sources").inner_text()


def test_a_question_not_answered_goes_back_into_the_box(page: Any, alpha: str, llm: FakeLLM) -> None:
    choose_kb(page, "甲")
    question = "What is first? " * 40
    llm.error = ConfigError("The prompt does not fit the model's context; send less text.")
    try:
        ask(page, question.strip())
        wait_text(page.locator("#sources"), "Not answered: The prompt does not fit", 15)
        page.wait_for_timeout(500)
        assert page.locator("#question textarea").input_value() == question.strip()  # to shorten and resend
        assert "What is first? What is first?" not in page.locator("#chatbot").inner_text()
    finally:
        llm.error = None


def test_clear_chat_stops_a_streaming_answer(page: Any, alpha: str, llm: FakeLLM) -> None:
    choose_kb(page, "甲")
    llm.replies, llm.delay = ["word " * 60], 0.1
    try:
        ask(page, "What is first?")
        wait_text(page.locator("#chatbot"), "word word", 15)
        page.get_by_role("button", name="Clear chat").click()
        page.wait_for_timeout(2500)
        assert "word" not in page.locator("#chatbot").inner_text()
    finally:
        llm.delay = 0.0


def test_stop_keeps_what_came_and_the_next_question_is_answered(page: Any, alpha: str, llm: FakeLLM) -> None:
    choose_kb(page, "甲")
    page.get_by_role("button", name="Clear chat").click()
    llm.replies, llm.delay = ["word " * 60, "What is second?", "Zebra answer."], 0.1
    chat = page.locator("#chatbot")
    try:
        ask(page, "What is first?")
        wait_text(chat, "word word", 15)
        page.locator("#stop-button").click()
        wait_text(chat, "(stopped)", 10)
        shown = settled_text(chat, 10)
        page.wait_for_timeout(1500)
        assert chat.inner_text() == shown and 2 <= shown.count("word") < 60  # what came stays; no more comes
        llm.delay = 0.0
        ask(page, "What is second?")
        wait_text(chat, "Zebra answer.", 30)
        assert "(stopped)" in chat.inner_text()
    finally:
        llm.delay = 0.0


@pytest.mark.parametrize("when", ["streaming", "before the first word"])
def test_a_question_asked_right_after_clear_chat_is_answered(page: Any, alpha: str, llm: FakeLLM, when: str) -> None:
    choose_kb(page, "甲")
    llm.replies, llm.delay = ["word " * 20, "Zebra answer."], (0.1 if when == "streaming" else 1.5)
    try:
        ask(page, "What is first?")
        if when == "streaming":
            wait_text(page.locator("#chatbot"), "word word", 15)
        else:
            wait_text(page.locator("#chatbot"), "What is first?", 15)
        page.get_by_role("button", name="Clear chat").click()
        page.wait_for_timeout(1000)
        ask(page, "What is second?")
        llm.delay = 0.1
        wait_text(page.locator("#chatbot"), "Zebra answer.", 30)
        assert "word" not in page.locator("#chatbot").inner_text()
        assert page.locator("#question textarea").input_value() == ""
    finally:
        llm.delay = 0.0


def test_a_question_sent_while_an_answer_streams_says_it_waits(page: Any, alpha: str, llm: FakeLLM) -> None:
    choose_kb(page, "甲")
    # The second question follows up on the first: the model reads it first (the rewrite), then answers.
    llm.replies, llm.delay = ["word " * 30, "What is second?", "Zebra answer."], 0.1
    waiting = page.locator("#question-waiting")
    try:
        ask(page, "What is first?")
        wait_text(page.locator("#chatbot"), "word word", 15)
        ask(page, "What is second?")
        wait_text(waiting, "asked as soon as the model is free", 5)
        assert "replaces" not in waiting.inner_text()
        assert page.locator("#question textarea").input_value() == "What is second?"  # queued, not yet asked
        ask(page, "What is second, really?")  # sent again meanwhile: this one runs instead, and the line says so
        wait_text(waiting, "replaces the question sent before it", 5)
        wait_text(page.locator("#chatbot"), "Zebra answer.", 30)
        assert "What is second, really?" in page.locator("#chatbot").inner_text()
        assert waiting.inner_text().strip() == ""
    finally:
        llm.delay = 0.0


def test_a_reload_keeps_the_knowledge_base_chosen(page: Any, server: str, tmp_path: Path) -> None:
    import httpx

    for kb, name in [("书架", "shelf.txt"), ("书桌", "desk.txt")]:
        doc = tmp_path / name
        doc.write_text(f"The {name} text.", encoding="utf-8")
        add_files(page, kb, [doc])
        wait_text(page.locator("#docs"), name, 30)
    names = [kb["name"] for kb in httpx.get(f"{server}/kb").json()]
    last = names[-1]  # not the one a fresh page shows first
    assert len(names) > 1 and last != names[0]
    choose_kb(page, last)
    page.reload()
    deadline = time.time() + 20
    while page.locator("#kb-select input").input_value() != last:
        assert time.time() < deadline, page.locator("#kb-select input").input_value()
        time.sleep(0.2)
    page.wait_for_timeout(1000)  # and it stays so
    assert page.locator("#kb-select input").input_value() == last


def test_a_reload_keeps_a_new_name_typed_before_any_file_was_added(page: Any) -> None:
    choose_kb(page, "还没有文件")
    page.wait_for_timeout(500)
    page.reload()
    deadline = time.time() + 20
    while page.locator("#kb-select input").input_value() != "还没有文件":
        assert time.time() < deadline, page.locator("#kb-select input").input_value()
        time.sleep(0.2)


def slow_answer_streaming(page: Any, llm: FakeLLM, kb: str, folder: Path) -> None:
    """Add a file to ``kb``, ask in it and return once a long, slow answer is streaming."""
    doc = folder / "first.txt"
    doc.write_text("Alpha is first.", encoding="utf-8")
    add_files(page, kb, [doc])
    wait_text(page.locator("#docs"), "first.txt", 30)
    llm.replies, llm.delay = ["word " * 60], 0.1
    ask(page, "What is first?")
    wait_text(page.locator("#chatbot"), "word word", 15)


@pytest.mark.parametrize("how", ["chat box clear icon", "another knowledge base"])
def test_a_new_chat_mid_answer_stops_it_and_stays_empty(page: Any, llm: FakeLLM, tmp_path: Path, how: str) -> None:
    try:
        slow_answer_streaming(page, llm, "丁", tmp_path)
        if how == "chat box clear icon":
            page.locator('#chatbot button[aria-label="Clear"]').click()
        else:
            doc = tmp_path / "other.txt"
            doc.write_text("Gamma is third.", encoding="utf-8")
            add_files(page, "丙", [doc])  # typing another name is a switch
            wait_text(page.locator("#docs"), "other.txt", 30)
            page.get_by_role("tab", name="Chat").click()
        page.wait_for_timeout(3000)  # the old answer would have come back by now
        assert "word" not in page.locator("#chatbot").inner_text()
        assert "Alpha is first." not in page.locator("#sources").inner_text()
    finally:
        llm.delay = 0.0


def test_deleting_the_knowledge_base_mid_answer_stops_it(page: Any, llm: FakeLLM, tmp_path: Path) -> None:
    try:
        slow_answer_streaming(page, llm, "卫星", tmp_path)
        page.get_by_role("tab", name="Documents").click()
        page.locator("#delete-kb").click()
        wait_text(page.locator("#confirm-delete-kb"), "Delete knowledge base 卫星", 10)
        page.locator("#confirm-delete-yes").click()
        wait_text(page.locator("body"), "Deleted knowledge base 卫星", 15)
        page.wait_for_timeout(3000)
        assert "word" not in page.locator("#chatbot").inner_text()
    finally:
        llm.delay = 0.0
