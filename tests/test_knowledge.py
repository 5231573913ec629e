"""Knowledge-base names, file names and the on-disk manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.errors import ConfigError, DocumentNotFound, IndexDamaged, InvalidName, KnowledgeBaseNotFound
from kbqa.knowledge import KnowledgeRoot
from kbqa.names import safe_file_name, slugify


@pytest.mark.parametrize("name", ["法律法规", "My Docs", "a", "検索 テスト", "x" * 90, "con"])
def test_any_name_maps_to_a_chroma_safe_slug(name: str) -> None:
    import re

    slug = slugify(name)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]", slug)


def test_different_chinese_names_get_different_slugs() -> None:
    assert slugify("法律 文件") != slugify("法律-文件")
    assert slugify("docs") == "docs"


@pytest.mark.parametrize(("given", "expected"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("/abs/path/报告.pdf", "报告.pdf"),
    ("ok\x00name.txt", "okname.txt"),
])
def test_uploaded_file_names_lose_their_path(given: str, expected: str) -> None:
    assert safe_file_name(given) == expected


@pytest.mark.parametrize("given", ["", "..", "../", "a/..", "   "])
def test_unusable_file_names_are_refused(given: str) -> None:
    with pytest.raises(InvalidName):
        safe_file_name(given)


def test_knowledge_base_keeps_display_name_and_survives_reopen(tmp_path: Path) -> None:
    root = KnowledgeRoot(tmp_path)
    kb = root.create("法律法规")
    kb.commit_file("a.txt", "abc", chunks=3, pages=None, size=10)
    again = KnowledgeRoot(tmp_path).open("法律法规")
    assert again.name == "法律法规"
    assert again.manifest.files["a.txt"]["chunks"] == 3
    assert KnowledgeRoot(tmp_path).open(kb.slug).name == "法律法规"


def test_opening_an_unknown_knowledge_base_names_the_existing_ones(tmp_path: Path) -> None:
    root = KnowledgeRoot(tmp_path)
    root.create("alpha")
    with pytest.raises(KnowledgeBaseNotFound, match="alpha"):
        root.open("beta")


def test_forgetting_an_unknown_file_is_a_named_error(tmp_path: Path) -> None:
    kb = KnowledgeRoot(tmp_path).create("kb1")
    with pytest.raises(DocumentNotFound, match="has no file 'missing.txt'"):
        kb.forget_file("missing.txt")


def test_long_names_never_reach_the_file_system_raw(tmp_path: Path) -> None:
    root = KnowledgeRoot(tmp_path)
    with pytest.raises(KnowledgeBaseNotFound):
        root.open("长" * 100)
    kb = root.create("长" * 100)  # 300 bytes: the folder is its slug
    assert root.open("长" * 100).slug == kb.slug and len(kb.slug) < 64


@pytest.mark.parametrize("name", ["a/b", "..\\x", "reports/2024"])
def test_names_with_slashes_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName, match="leave out"):
        KnowledgeRoot(tmp_path).create(name)


@pytest.mark.parametrize("name", [".", "..", " ... "])
def test_names_of_only_dots_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName, match="other than a dot"):
        KnowledgeRoot(tmp_path).create(name)
    assert KnowledgeRoot(tmp_path).create("v1.2").name == "v1.2"


def test_a_new_name_differing_only_in_case_from_an_existing_one_is_refused(tmp_path: Path) -> None:
    root = KnowledgeRoot(tmp_path)
    root.create("Manuals")
    with pytest.raises(InvalidName, match="'Manuals' exists: use that name"):
        root.create("manuals")
    assert root.create("Manuals").name == "Manuals"  # the same name opens it
    assert [kb.name for kb in root.list()] == ["Manuals"]


def test_a_second_process_is_refused_the_knowledge_root_this_one_holds(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = KnowledgeRoot(tmp_path)
    KnowledgeRoot(tmp_path).create("kb1")  # a second root object in the same process shares the hold
    root.announce("http://127.0.0.1:7871/")  # as `kbqa serve` does: the refusal names where to go instead
    code = "import sys; from kbqa.knowledge import KnowledgeRoot; KnowledgeRoot(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert other.returncode != 0
    assert "in use by another kbqa process" in other.stderr and f"pid {os.getpid()}" in other.stderr
    assert "curl -F files=@report.pdf http://127.0.0.1:7871/kb/NAME/files" in other.stderr
    del root


def test_a_root_held_by_a_command_says_to_wait_for_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from kbqa.errors import KnowledgeRootInUse

    code = ("import sys, time; sys.argv = ['kbqa', 'ingest', '--kb', 'x', 'a.txt']; "
            "from kbqa.knowledge import KnowledgeRoot; r = KnowledgeRoot(sys.stdin.readline().strip()); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"{tmp_path}\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KnowledgeRootInUse, match="kbqa ingest --kb x a.txt") as refused:
            KnowledgeRoot(tmp_path)
        assert "Wait for that command to finish" in str(refused.value) and "web app" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_knowledge_root_that_cannot_be_a_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="paths.knowledge_root"):
        KnowledgeRoot(tmp_path / "file" / "kb")


def test_a_damaged_knowledge_base_does_not_hide_the_others(tmp_path: Path) -> None:
    root = KnowledgeRoot(tmp_path)
    root.create("good")
    broken = root.create("broken")
    (broken.folder / "manifest.json").write_text('{"generation": 3, "fil', encoding="utf-8")  # cut short
    fresh = KnowledgeRoot(tmp_path)
    assert [kb.name for kb in fresh.list()] == ["good"]
    with pytest.raises(IndexDamaged, match="is damaged .*copy its files out of .*content, delete the knowledge base"):
        fresh.open("broken")


def test_a_knowledge_root_under_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot be a folder here: .*notes.txt is a file; set paths.knowledge_root"):
        KnowledgeRoot(tmp_path / "notes.txt" / "kb")  # it said "(File exists)" or "(Not a directory)"

