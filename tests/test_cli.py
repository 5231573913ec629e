"""The command line: exit codes, one line per file, errors on stderr, convert-chatglm (fake models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbqa import cli
from kbqa.bootstrap import build_service
from kbqa.service import KBQAService
from kbqa.settings import load_settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import make_settings


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KBQAService:
    built = build_service(make_settings(tmp_path), embedder=FakeEmbedder(),
                          llm=lambda: FakeLLM(replies=["Jupiter [1]."] * 3))
    monkeypatch.setattr(cli, "_service", lambda args: built)
    return built


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "planets.md").write_text("Jupiter is the largest planet.", encoding="utf-8")
    (docs / "sub" / "moons.txt").write_text("Ganymede is the largest moon.", encoding="utf-8")
    (docs / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4 nope")
    (docs / ".hidden.txt").write_text("skip me", encoding="utf-8")
    return docs


def test_ingest_walks_folders_prints_one_line_per_file_and_fails_on_a_bad_file(
        service: KBQAService, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["planets.md: added (1 chunk)",
                     lines[1],  # broken.pdf: failed (reason)
                     "moons.txt: added (1 chunk)"]
    assert lines[1].startswith("broken.pdf: failed (") and "damaged" in lines[1]
    assert {d.name for d in service.list_documents("space")} == {"planets.md", "moons.txt"}


def test_ingest_names_what_it_cannot_add_under_a_folder(service: KBQAService, folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import os

    (folder / "sub" / "broken.pdf").unlink()
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (folder / "loop-a.txt").symlink_to(folder / "loop-b.txt")
    (folder / "loop-b.txt").symlink_to(folder / "loop-a.txt")
    (folder / "elsewhere").symlink_to(tmp_path / "other", target_is_directory=True)
    (tmp_path / "other").mkdir()
    os.mkfifo(folder / "pipe.txt")
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 1
    out = capsys.readouterr().out
    for name, why in [("gone.txt", "a broken link: its target is missing"), ("elsewhere", "a link to a folder"),
                      ("pipe.txt", "not a regular"), ("loop-a.txt", "a link that leads back to itself")]:
        assert f"{folder / name}: failed ({why}" in out
    assert {d.name for d in service.list_documents("space")} == {"planets.md", "moons.txt"}
    # given by itself, a pipe is named as one too (as typed), not as a missing file
    assert cli.main(["ingest", "--kb", "space", str(folder / "pipe.txt")]) == 1
    assert f"{folder / 'pipe.txt'}: failed (not a regular file (a pipe, socket or device))" in capsys.readouterr().out


def test_ingest_names_a_missing_path_as_given_and_counts_skipped_hidden_files(
        service: KBQAService, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    (folder / "sub" / "broken.pdf").unlink()
    (folder / ".notes.txt").write_text("hidden", encoding="utf-8")
    (folder / "Thumbs.db").write_bytes(b"\0")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main", encoding="utf-8")
    missing = tmp_path / "nowhere" / "file.txt"
    assert cli.main(["ingest", "--kb", "space", str(missing), str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: failed (no such file or folder (check the path))" in captured.out
    assert "; 1 more could not be added (listed above); 4 hidden or system files or folders" in captured.err
    assert {d.name for d in service.list_documents("space")} == {"planets.md", "moons.txt"}
    # the folder given twice, and a folder inside it: each problem and each skipped name counted once
    os.mkfifo(folder / "sub" / "pipe.txt")
    assert cli.main(["ingest", "--kb", "space", str(folder), str(folder), str(folder / "sub")]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("pipe.txt: failed") == 1
    assert "; 1 more could not be added (listed above); 4 hidden or system files or folders" in captured.err


def test_ingest_of_a_folder_holding_the_knowledge_root_leaves_kbqas_own_files_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `kbqa ingest --kb notes .` in the working folder, whose ./knowledge is the default root: the second run read
    # kbqa's manifests and index as documents (failed, exit 1), and the copy of note.txt it keeps under the root
    # then stood in for the edited note.txt ("another file named note.txt is in this batch").
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KBQA_PATHS__KNOWLEDGE_ROOT", "knowledge")
    built = build_service(load_settings(paths={"cache_dir": tmp_path / "cache"}, ingest={"ocr": False}),
                          embedder=FakeEmbedder(), llm=lambda: FakeLLM())
    monkeypatch.setattr(cli, "_service", lambda args: built)
    (tmp_path / "note.txt").write_text("Koalas sleep 20 hours a day.", encoding="utf-8")
    assert cli.main(["ingest", "--kb", "notes", "."]) == 0
    assert cli.main(["ingest", "--kb", "notes", "."]) == 0
    (tmp_path / "note.txt").write_text("Koalas sleep 22 hours a day.", encoding="utf-8")
    assert cli.main(["ingest", "--kb", "notes", "."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["note.txt: added (1 chunk)", "note.txt: unchanged", "note.txt: updated (1 chunk)"]
    assert cli.main(["ingest", "--kb", "notes", "knowledge"]) == 1
    assert "knowledge: failed (kbqa's own data (paths.knowledge_root" in capsys.readouterr().out


def test_ingest_of_good_unchanged_files_exits_zero(service: KBQAService, folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "sub" / "broken.pdf").unlink()
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 0
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["planets.md: unchanged", "moons.txt: unchanged"]


def test_a_file_reached_twice_is_ingested_and_counted_once(service: KBQAService, folder: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "sub" / "broken.pdf").unlink()
    monkeypatch.chdir(folder.parent)
    given = [folder.name, str(folder), f"./{folder.name}/planets.md"]
    assert cli.main(["ingest", "--kb", "space", *given]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["planets.md: added (1 chunk)", "moons.txt: added (1 chunk)"]
    assert "2 of 2 files indexed" in captured.err


def test_ask_json_prints_answer_and_numbered_sources(service: KBQAService, folder: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["ingest", "--kb", "space", str(folder / "planets.md")])
    capsys.readouterr()
    assert cli.main(["ask", "--kb", "space", "--json", "Which planet is largest?"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer"] == "Jupiter [1]."
    assert data["sources"][0] == {"source": "planets.md", "page": None, "chunk": 0,
                                  "score": data["sources"][0]["score"], "text": "Jupiter is the largest planet."}
    assert cli.main(["ask", "--kb", "space", "Which planet is largest?"]) == 0
    out = capsys.readouterr().out
    assert "Jupiter [1]." in out and "[1] planets.md, chunk 0, score" in out
    # a failure is JSON on stdout too (and the usual error line on stderr)
    assert cli.main(["ask", "--kb", "nowhere", "--json", "Which planet is largest?"]) == 1
    captured = capsys.readouterr()
    assert "nowhere" in json.loads(captured.out)["error"] and captured.err.startswith("error: ")


def test_kb_and_docs_commands(service: KBQAService, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["ingest", "--kb", "太空", str(folder / "planets.md")])
    capsys.readouterr()
    assert cli.main(["kb", "list"]) == 0
    assert capsys.readouterr().out.startswith("太空\t1 file\t1 chunk\t")
    assert cli.main(["docs", "list", "--kb", "太空"]) == 0
    assert capsys.readouterr().out.startswith("planets.md\t1 chunk\t")
    # another folder's file of that name is not the one held: nothing is deleted
    assert cli.main(["docs", "delete", "--kb", "太空", str(folder / "sub" / "planets.md")]) == 1
    assert f"was added from {folder.resolve() / 'planets.md'}, not from" in capsys.readouterr().err
    assert [d.name for d in service.list_documents("太空")] == ["planets.md"]
    assert cli.main(["docs", "delete", "--kb", "太空", str(folder / "planets.md")]) == 0  # as it was added
    assert capsys.readouterr().out == "deleted planets.md from 太空\n"  # the file it held, not the path typed
    assert cli.main(["kb", "delete", "太空"]) == 0
    assert service.list_kbs() == []


def test_kb_delete_asks_first_at_a_terminal_only(service: KBQAService, folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import io

    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    cli.main(["ingest", "--kb", "space", str(folder)])
    capsys.readouterr()
    for answer, name in (("n\n", "space"), ("", "space"), ("\n", "space"), ("n\n", "space ")):  # no, Ctrl-D, Enter
        monkeypatch.setattr("sys.stdin", FakeTerminal(answer))
        assert cli.main(["kb", "delete", name]) == 1
        asked = capsys.readouterr()
        assert "Delete knowledge base space and its 2 files? This cannot be undone. [y/N]" in asked.err
        assert asked.out == ""  # `kbqa kb delete x > log` still shows the question
        assert [kb.name for kb in service.list_kbs()] == ["space"]
    monkeypatch.setattr("sys.stdin", FakeTerminal("y\n"))
    assert cli.main(["kb", "delete", "space"]) == 0 and service.list_kbs() == []
    cli.main(["ingest", "--kb", "space", str(folder)])
    monkeypatch.setattr("sys.stdin", FakeTerminal(""))
    assert cli.main(["kb", "delete", "space", "--yes"]) == 0 and service.list_kbs() == []
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a script: never asked
    cli.main(["ingest", "--kb", "space", str(folder)])
    assert cli.main(["kb", "delete", "space"]) == 0 and service.list_kbs() == []


def test_kb_delete_at_a_terminal_asks_about_a_damaged_knowledge_base_too(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    settings = make_settings(tmp_path)
    build_service(settings, embedder=FakeEmbedder(), llm=FakeLLM).add_files("space", [folder / "planets.md"])
    manifest = next((tmp_path / "kb").glob("space*/manifest.json"))
    manifest.write_text('{"generation": 3, "fil', encoding="utf-8")  # cut short
    monkeypatch.setattr(cli, "_service", lambda args: build_service(settings, embedder=FakeEmbedder(), llm=FakeLLM))
    assert cli.main(["docs", "list", "--kb", "space"]) == 1
    assert "is damaged" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", FakeTerminal("y\n"))
    assert cli.main(["kb", "delete", "space"]) == 0
    asked = capsys.readouterr()
    assert f"Delete knowledge base space and the files in {manifest.parent / 'content'} (it is damaged)?" in asked.err
    assert asked.out == "deleted knowledge base space\n" and not manifest.parent.exists()


def test_user_errors_are_one_line_on_stderr_with_exit_one(service: KBQAService,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "--kb", "nowhere", "hello?"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No knowledge base named 'nowhere'") and err.count("\n") == 1
    assert cli.main(["docs", "delete", "--kb", "nowhere", "x.txt"]) == 1


def test_missing_paths_are_reported(service: KBQAService, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ingest", "--kb", "k", str(tmp_path / "absent.txt")]) == 1
    assert "absent.txt: failed (" in capsys.readouterr().out


def test_convert_chatglm_command_writes_a_native_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.chatglm_fixtures import train_tokenizer, write_checkpoint

    src = tmp_path / "chatglm2-6b"
    write_checkpoint(src, train_tokenizer(tmp_path / "sp"))
    assert cli.main(["convert-chatglm", str(src), str(tmp_path / "native")]) == 0
    assert "converted" in capsys.readouterr().out
    config = json.loads((tmp_path / "native" / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "glm"
    assert cli.main(["convert-chatglm", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1


def test_refusal_is_printed_once(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    strict = build_service(make_settings(tmp_path, score_threshold=0.99, score_threshold_zh=0.99),
                           embedder=FakeEmbedder(), llm=FakeLLM)
    monkeypatch.setattr(cli, "_service", lambda args: strict)
    cli.main(["ingest", "--kb", "space", str(folder / "planets.md")])
    capsys.readouterr()
    assert cli.main(["ask", "--kb", "space", "Who won the cup?"]) == 0
    assert capsys.readouterr().out.count("I cannot answer this from the knowledge base.") == 1


def test_sigterm_stops_a_command_as_ctrl_c_does(service: KBQAService, folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import time

    def killed(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    monkeypatch.setattr(service, "add_files", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 143
    assert capsys.readouterr().err.strip().endswith(
        "terminated (no file got in, so knowledge base space was not created)")
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_stops_a_model_preparation_running_in_a_worker_thread(tmp_path: Path, folder: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # `kbqa ask` prepares the LLM at the first question (a first-use conversion: minutes for a 6B checkpoint),
    # inside LangChain's worker thread, which the signal does not reach: it must stop at its next progress step.
    import os
    import signal
    import threading
    import time

    from kbqa.bootstrap import lazy

    steps: list[int] = []

    def converting() -> FakeLLM:
        bar = cli._Bar("preparing models")  # as build_service's progress reaches the conversion
        for step in range(200):
            steps.append(step)
            bar.bytes(step, 200)
            time.sleep(0.05)
        return FakeLLM(replies=["Jupiter [1]."])

    built = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lazy(converting))
    monkeypatch.setattr(cli, "_service", lambda args: built)
    cli.main(["ingest", "--kb", "space", str(folder / "planets.md")])
    capsys.readouterr()
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.perf_counter()
    assert cli.main(["ask", "--kb", "space", "Which planet is the largest?"]) == 130
    assert time.perf_counter() - start < 3 and len(steps) < 40  # not the whole 10 s preparation
    assert capsys.readouterr().err.strip().endswith("interrupted")
    timer.join()


def test_a_reader_that_goes_away_stops_the_lines_not_the_ingest(service: KBQAService, folder: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # `kbqa ingest ... | head -1`: the lines are printed mid-ingest, so a closed pipe must not abort the batch.
    import builtins

    printed: list[str] = []

    def closed_after_one(*args: object, **kwargs: object) -> None:
        if kwargs.get("file") is None:
            if printed:
                raise BrokenPipeError(32, "Broken pipe")
            printed.append(str(args[0]))

    monkeypatch.setattr(builtins, "print", closed_after_one)
    cli.main(["ingest", "--kb", "space", str(folder)])
    monkeypatch.undo()
    assert len(printed) == 1
    assert {d.name for d in service.list_documents("space")} == {"planets.md", "moons.txt"}


def test_the_progress_bar_comes_back_for_models_prepared_after_the_service_is_built() -> None:
    # The LLM is prepared at the first question (a first-use conversion during `kbqa ask`), after the
    # "preparing models" bar of the service's construction was closed: its steps must still show.
    from kbqa.cli import _Bar

    bar = _Bar("preparing models")
    bar.bytes(1, 2)
    assert bar.bar is not None and bar.bar.n == 50
    bar.bytes(2, 2)  # a finished step closes it
    assert bar.bar is None
    bar.bytes(1, 4)  # the next step opens a new one
    assert bar.bar is not None and bar.bar.n == 25
    bar.close()


def test_models_prepared_with_stderr_in_a_log_file_show_each_tenth_of_each_model(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A first-use conversion of a 6B checkpoint takes minutes: where stderr is no terminal (a log file) there is no
    # bar to watch, so lines say it goes on, for the second model prepared as for the first.
    from kbqa.cli import _Bar

    bar = _Bar("preparing models", log_steps=True)
    for step in range(3):
        bar.bytes(step, 2)
    for step in range(5):
        bar.bytes(step, 4)
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preparing models: ")]
    assert logged == ["preparing models: 0%", "preparing models: 50%", "preparing models: 100%",
                      "preparing models: 0%", "preparing models: 20%", "preparing models: 50%",
                      "preparing models: 70%", "preparing models: 100%"]


def test_a_long_step_is_logged_whole_and_cut_at_a_word_on_the_bar(capsys: pytest.CaptureFixture[str]) -> None:
    # The log line was cut mid-word at 60 characters: "(embedding chunks of notes.txt: 1 of 1; the bar co)".
    from kbqa.cli import _Bar, _shortened

    step = "embedding chunks of lighthouse_facts.txt: 1 of 1; the bar counts all files"
    bar = _Bar("ingest q2", log_steps=True)
    bar(0.9, step)
    bar.close()
    assert f"ingest q2: 90% ({step})" in capsys.readouterr().err.splitlines()
    assert _shortened(step, 60) == "embedding chunks of lighthouse_facts.txt: 1 of 1; the bar…"
    assert _shortened("short", 60) == "short" and len(_shortened("x" * 100, 60)) == 60


@pytest.mark.parametrize(("host", "port", "message"), [
    ("127.0.0.1", 99999, "not a TCP port"),
    ("127.0.0.1", 0, "not a TCP port"),
    ("999.1.1.1", 7860, "Cannot listen on 999.1.1.1:7860"),
])
def test_an_address_the_server_cannot_listen_on_is_refused_before_starting(host: str, port: int,
                                                                            message: str) -> None:
    from kbqa.errors import ConfigError
    from kbqa.ui.app import check_listen

    with pytest.raises(ConfigError, match=message):
        check_listen(host, port)


def test_a_port_in_use_is_refused_before_starting() -> None:
    import socket

    from kbqa.errors import ConfigError
    from kbqa.ui.app import check_listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"Cannot listen on 127\.0\.0\.1:\d+ .*server.port"):
            check_listen("127.0.0.1", taken.getsockname()[1])


def test_an_interrupted_ingest_says_what_stays(service: KBQAService, folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    other = tmp_path / "other.txt"
    other.write_text("Saturn has rings.", encoding="utf-8")
    with monkeypatch.context() as patch:
        patch.setattr(service.qa.retriever.embedder, "embed_documents", interrupt)
        assert cli.main(["ingest", "--kb", "new one", str(other)]) == 130
    assert "no file got in, so knowledge base new one was not created" in capsys.readouterr().err
    assert "new one" not in [kb.name for kb in service.list_kbs()]
    cli.main(["ingest", "--kb", "space", str(folder / "planets.md")])
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(service.qa.retriever.embedder, "embed_documents", interrupt)
        assert cli.main(["ingest", "--kb", "space", str(other)]) == 130
    assert "files already added stay indexed: kbqa docs list --kb space" in capsys.readouterr().err


def test_config_and_verbose_go_before_or_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    parse = cli.build_parser().parse_args
    assert parse(["--config", "a.toml", "ask", "--kb", "k", "q"]).config == "a.toml"
    after = parse(["ask", "--config", "b.toml", "-v", "--kb", "k", "q"])
    assert (after.config, after.verbose, after.question) == ("b.toml", True, "q")
    assert parse(["-v", "kb", "list"]).verbose is True  # not reset by the command's own default
    assert parse(["docs", "delete", "--kb", "k", "--config", "c.toml", "x.txt"]).config == "c.toml"
    assert parse(["kb", "--config", "d.toml", "list"]).config == "d.toml"
    with pytest.raises(SystemExit) as done:
        parse(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("kbqa ")
    for argv, missing in (([], "COMMAND"), (["kb"], "{list,delete}")):  # not the parser's own names (kb_command)
        with pytest.raises(SystemExit) as done:
            parse(argv)
        assert done.value.code == 2 and f"the following arguments are required: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["docs", "list", "--kb", "space"], ["kb", "list"],
                                  ["ask", "--kb", "space", "Which planet is the largest?"]])
def test_a_reader_that_goes_away_ends_a_listing_quietly(service: KBQAService, folder: Path, argv: list[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # `kbqa docs list | head -0`: no traceback, the status a shell gives a command a closed pipe stopped.
    import builtins

    cli.main(["ingest", "--kb", "space", str(folder)])
    capsys.readouterr()

    def closed(*args: object, **kwargs: object) -> None:
        if kwargs.get("file") is None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(builtins, "print", closed)
    assert cli.main(argv) == 141
    monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err



def test_kb_delete_by_its_folder_name_says_which_knowledge_base_went(service: KBQAService, folder: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["ingest", "--kb", "法律 文件", str(folder / "planets.md")])
    slug = service.root.open("法律 文件").slug
    capsys.readouterr()
    assert cli.main(["kb", "delete", slug]) == 0
    assert capsys.readouterr().out == "deleted knowledge base 法律 文件\n"


def test_ingest_with_stderr_in_a_log_file_shows_each_tenth(service: KBQAService, folder: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # tqdm draws nothing where stderr is no terminal: a long ingest printed nothing until its first file settled.
    (folder / "sub" / "broken.pdf").unlink()
    assert cli.main(["ingest", "--kb", "space", str(folder)]) == 0
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ingest space: ")]
    assert steps[0].startswith("ingest space: 0% (reading ") and steps[-1].startswith("ingest space: 100%")
