"""The ``kbqa`` command line: ingest, ask, kb, docs, serve, convert-chatglm, eval.

Errors a user can fix print one line on stderr and exit 1; progress bars go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kbqa.errors import IndexDamaged, KBQAError
from kbqa.schema import FileResult, counted

log = logging.getLogger(__name__)

#: Files a folder walk skips: hidden files and operating-system clutter.
_JUNK = {"thumbs.db", "desktop.ini"}


def expand_paths(paths: Sequence[str], own: Sequence[Path] = ()) -> tuple[list[Path], list[FileResult], int]:
    """Files as given, and the files under folders (recursively, sorted, skipping hidden ones and ``own``:
    kbqa's own folders, such as the knowledge root, which ``kbqa ingest .`` in the working folder reaches).

    A file reached twice (a folder given twice, or a file given and also under a given folder) is listed
    once, where it is first reached. Returns the files; a ``failed`` result for each path that does not
    exist and each thing under a folder that cannot be added (an unreadable folder, a broken link, a link
    to a folder, a pipe or device), so nothing is left out silently; and how many hidden or system files and
    folders (``.name``, Thumbs.db) were skipped.
    """
    files: list[Path] = []
    # Keyed by the normalised path: a folder given twice (or a folder and one inside it) reports each problem
    # and counts each skipped name once.
    problems: dict[str, FileResult] = {}
    skipped: set[str] = set()

    def problem(where: str | Path, reason: str) -> None:
        problems.setdefault(_key(where), FileResult(str(where), "failed", reason=reason))

    kbqas = {_key(folder): name for folder, name in zip(own, _OWN_FOLDERS, strict=False)}

    def kbqas_own(path: str | Path) -> str | None:
        key = _key(path)
        return next((name for folder, name in kbqas.items() if key == folder or key.startswith(folder + os.sep)),
                    None)

    for raw in paths:
        path = Path(raw)
        if (setting := kbqas_own(path)) is not None:
            problem(raw, f"kbqa's own data ({setting}), not a document: leave it out")
            continue
        if not path.exists():
            what = _dangling(path) if path.is_symlink() else "no such file or folder"
            problem(raw, f"{what} (check the path)")
            continue
        if not path.is_dir():
            if path.is_file():
                files.append(path)
            else:  # a pipe, socket or device: reading it could block or never end
                problem(raw, _NOT_A_FILE)
            continue

        def unreadable(exc: OSError) -> None:
            problem(str(exc.filename), f"folder cannot be read ({exc.strerror or exc}): check its permissions")

        found = []
        for folder, subfolders, names in os.walk(path, onerror=unreadable):
            # .git, .venv: counted, not walked
            skipped.update(_key(os.path.join(folder, d)) for d in subfolders if d.startswith("."))
            subfolders[:] = sorted(d for d in subfolders
                                   if not d.startswith(".") and kbqas_own(os.path.join(folder, d)) is None)
            for d in subfolders:
                if os.path.islink(os.path.join(folder, d)):
                    problem(os.path.join(folder, d), "a link to a folder, not followed: give the folder it "
                            "points to")
            for name in names:
                sub = Path(folder) / name
                if name.startswith(".") or name.lower() in _JUNK:
                    skipped.add(_key(sub))
                    continue
                if sub.is_file():
                    found.append(sub)
                elif not sub.exists():
                    problem(sub, _dangling(sub))
                else:
                    problem(sub, _NOT_A_FILE)
        files += sorted(found)
    return _once(files), list(problems.values()), len(skipped)


#: What ``expand_paths``'s ``own`` folders are, in order.
_OWN_FOLDERS = ("paths.knowledge_root, where kbqa keeps its knowledge bases", "paths.cache_dir, kbqa's model cache")


def _dangling(link: Path) -> str:
    """Why a link leads to nothing: a missing target, or links that lead back to themselves."""
    try:
        os.stat(link)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that leads back to itself (a loop of links)"
    return "a broken link: its target is missing"


def _key(path: str | Path) -> str:
    """One spelling of a path (``d/a.txt``, ``./d/a.txt`` and absolute are the same)."""
    return os.path.normpath(os.path.abspath(path))


def _once(files: list[Path]) -> list[Path]:
    """The files without repeats of the same path."""
    seen: set[str] = set()
    kept = []
    for file in files:
        key = _key(file)
        if key not in seen:
            seen.add(key)
            kept.append(file)
    return kept


_NOT_A_FILE = "not a regular file (a pipe, socket or device)"


def _shortened(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters at a word's end, marked with "…"."""
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:(") + "…"


class _Bar:
    """A tqdm bar on stderr driven by ``progress(fraction, message)`` callbacks.

    The bar appears with the first callback and goes when closed; a later callback opens a new one, so
    the models a service prepares lazily (a first-use conversion during ``ask``) show a bar too.
    """

    def __init__(self, desc: str, unit_scale: float = 100.0, log_steps: bool = False) -> None:
        self.desc = desc
        self.scale = unit_scale
        self.bar: Any = None
        self.mute = False
        #: Where stderr is no terminal (a log file, CI), tqdm draws nothing: ``log_steps`` writes a line at
        #: every tenth instead, so a run of many minutes shows that it goes on.
        self.log_steps = log_steps and not sys.stderr.isatty()
        self.logged = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        if _STOPPING.stop:  # Ctrl-C or kill: stop a model preparation running in a worker thread too
            raise Terminated if _STOPPING.terminated else KeyboardInterrupt
        if self.log_steps:
            step = int(min(max(fraction, 0.0), 1.0) * 10)
            if step > self.logged:
                self.logged = step
                print(f"{self.desc}: {step * 10}%" + (f" ({message})" if message else ""), file=sys.stderr,
                      flush=True)  # a log line: whole (the bar's line is cut to fit a terminal)
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.scale, desc=self.desc, unit="%", file=sys.stderr, leave=False,
                            bar_format="{desc} {bar} {percentage:3.0f}% {elapsed}<{remaining} {postfix}",
                            disable=None)
        self.bar.n = min(self.scale, fraction * self.scale)
        if message:
            self.bar.set_postfix_str(_shortened(message, 60), refresh=False)
        self.bar.refresh()

    def bytes(self, done: int, total: int) -> None:
        """Adapter for ``progress(done, total)`` callbacks; a finished step closes the bar."""
        self(done / total if total else 1.0)
        if done >= total:
            self.close()

    def print(self, line: str) -> None:
        """A line on stdout, above the bar (which is redrawn under it). A reader that went away (``| head``)
        stops the lines, not the work: this runs in the middle of an ingest."""
        if self.bar is not None:
            self.bar.clear()
        if not self.mute:
            try:
                print(line, flush=True)
            except OSError:  # BrokenPipeError
                self.mute = True
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.logged = -1  # a later step (the next model prepared) logs from its start


def _service(args: argparse.Namespace) -> Any:
    from kbqa.bootstrap import build_service
    from kbqa.settings import load_settings

    settings = load_settings(args.config)
    bar = _Bar("preparing models (once: a model is converted or assembled)", log_steps=True)
    try:
        return build_service(settings, progress=bar.bytes)
    finally:
        bar.close()


def cmd_ingest(args: argparse.Namespace) -> int:
    from kbqa.settings import load_settings

    paths = load_settings(args.config).paths
    files, problems, skipped = expand_paths(args.paths, own=(paths.knowledge_root, paths.cache_dir))
    for problem in problems:
        print(problem.line())
    hidden = f"; {skipped} hidden or system file{'s' * (skipped != 1)} or folder{'s' * (skipped != 1)} " \
        "(.name, Thumbs.db) skipped" if skipped else ""
    if not files:
        raise KBQAError(f"No files to add under the given paths{hidden}.")
    service = _service(args)
    bar = _Bar(f"ingest {args.kb}", log_steps=True)
    try:
        report = service.add_files(args.kb, files, progress=bar, on_file=lambda result: bar.print(result.line()))
    except (Terminated, KeyboardInterrupt):
        # For the message: a new knowledge base that no file got into is removed, and has nothing to list.
        args.kb_kept = any(kb.name == args.kb for kb in service.list_kbs())
        raise
    finally:
        bar.close()
    failed = sum(f.status == "failed" for f in report.files)
    print(f"{len(report.files) - failed} of {counted(len(report.files), 'file')} indexed, "
          f"{counted(report.chunks_added, 'chunk')} added "
          f"in {report.seconds:.1f}s" + (f"; {len(problems)} more could not be added (listed above)"
                                         if problems else "")
          + hidden, file=sys.stderr)
    return 0 if report.ok and not problems else 1


def cmd_ask(args: argparse.Namespace) -> int:
    service = _service(args)
    answer = None
    printed = False
    for event in service.ask_stream(args.kb, args.question):
        if event.kind == "token" and not args.json:
            print(event.text, end="", flush=True)
            printed = printed or bool(event.text)
        elif event.kind == "done":
            answer = event.answer
    assert answer is not None
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
        return 0
    if not printed:
        print(answer.answer, end="")
    print()
    if answer.notice:
        print(f"({answer.notice})")
    if answer.sources:
        print("\nSources (in retrieval order, keywords and meaning combined; score = cosine similarity to the "
              "question):")
    for n, src in enumerate(answer.sources, 1):
        page = f", {src.location}" if src.location else ""
        snippet = " ".join(src.text.split())
        print(f"[{n}] {src.source}{page}, chunk {src.chunk}, score {src.score:.3f}\n    {snippet[:300]}")
    return 0


def cmd_kb(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.kb_command == "list":
        kbs = service.list_kbs()
        for kb in kbs:
            print(f"{kb.name}\t{counted(kb.documents, 'file')}\t{counted(kb.chunks, 'chunk')}\t{kb.embedding or '-'}")
        if not kbs:
            print("No knowledge bases yet: `kbqa ingest --kb NAME FILES...` creates one.", file=sys.stderr)
    elif args.kb_command == "delete":
        if sys.stdin.isatty() and not args.yes:  # a person at a terminal: ask first
            try:
                kb = service.root.open(args.name)  # as the deletion finds it (another spelling, the slug)
                name, files = kb.name, f"its {len(kb.manifest.files)} file{'s' * (len(kb.manifest.files) != 1)}"
            except IndexDamaged:  # its files cannot be counted; deleting it is the way out its error gives
                folder = service.root.folder_for(args.name)
                name, files = args.name, f"the files in {folder / 'content' if folder else 'it'} (it is damaged)"
            print(f"Delete knowledge base {name} and {files}? This cannot be undone. [y/N] ", end="",
                  file=sys.stderr, flush=True)  # not stdout: `kbqa kb delete x > log` still asks
            answer = sys.stdin.readline()
            if answer.strip().lower() not in ("y", "yes"):
                print(f"kept knowledge base {name}", file=sys.stderr)
                return 1
        print(f"deleted knowledge base {service.delete_kb(args.name)}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.docs_command == "list":
        documents = service.list_documents(args.kb)
        for doc in documents:
            pages = f"{counted(doc.pages, 'page')}\t" if doc.pages else ""
            print(f"{doc.name}\t{pages}{counted(doc.chunks, 'chunk')}\t{counted(doc.size, 'byte')}\t{doc.added_at}")
        if not documents:
            print(f"{args.kb} holds no files yet: kbqa ingest --kb {shlex.quote(args.kb)} PATH...", file=sys.stderr)
    elif args.docs_command == "delete":
        held = service.delete_document(args.kb, args.file)
        print(f"deleted {held} from {args.kb}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kbqa.settings import load_settings
    from kbqa.ui.app import serve

    settings = load_settings(args.config)
    serve(settings, host=args.host, port=args.port)
    return 0


def cmd_convert_chatglm(args: argparse.Namespace) -> int:
    from kbqa.llm.chatglm.convert import convert_chatglm

    bar = _Bar("convert")
    try:
        out = convert_chatglm(Path(args.src), Path(args.dst), progress=bar.bytes, version=args.version)
    finally:
        bar.close()
    print(f"converted {args.src} -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from kbqa import evaluation as ev
    from kbqa.bootstrap import build_service
    from kbqa.settings import load_settings

    dataset = ev.load_dataset(Path(args.dataset), Path(args.docs) if args.docs else None)
    items = ev.sample(dataset.items, args.limit)
    with tempfile.TemporaryDirectory(prefix="kbqa-eval-") as tmp:
        settings = load_settings(args.config)
        settings.paths.knowledge_root = Path(tmp)
        service = build_service(settings)
        if not args.retrieval_only:  # a model that cannot load fails now, not after the ingest and retrieval
            service.get_llm()
        bar = _Bar(f"ingest {dataset.name}", log_steps=True)
        try:
            ingest_s = ev.build_knowledge_base(service, dataset, "eval", bar)
            bar(1.0, "done")
        finally:
            bar.close()
        # What the knowledge base recorded: the model, marked "#int8" when an int8 copy encoded the chunks
        recorded = next((kb.embedding for kb in service.list_kbs() if kb.name == "eval"), "")
        result: dict[str, Any] = {
            "dataset": dataset.name, "questions": len(items),
            "embedding": ev.embedding_label(recorded or settings.embedding.model),
            "retrieval_mode": settings.retrieval.mode, "chunk_size": settings.splitter.chunk_size,
            "documents": len(dataset.texts) + len(dataset.files), "ingest_seconds": round(ingest_s, 1)}
        bar = _Bar("retrieval", log_steps=True)
        try:
            result.update(ev.evaluate_retrieval(service, "eval", items, progress=bar))
            bar(1.0, "done")
        finally:
            bar.close()
        if not args.retrieval_only:
            result["llm"] = settings.llm.model
            bar = _Bar("answers", log_steps=True)
            try:
                result.update(ev.evaluate_answers(service, "eval", items, progress=bar))
                bar(1.0, "done")
            finally:
                bar.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print(ev.format_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from kbqa import __version__

    parser = argparse.ArgumentParser(prog="kbqa", description="Local knowledge-base question answering.")
    parser.add_argument("--version", action="version", version=f"kbqa {__version__}")
    parser.add_argument("--config", help="settings file (default: $KBQA_CONFIG or ./kbqa.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    # --config and -v are taken after the command too (`kbqa ask --config my.toml ...`); left out there,
    # they keep what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="settings file (as before the command)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, text: str | None = None) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=text, description=text, parents=[common])  # type: ignore[no-any-return]

    p = command(sub, "ingest", "add files or folders (recursively) to a knowledge base")
    p.add_argument("--kb", required=True, help="knowledge base name (created if missing)")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.set_defaults(func=cmd_ingest)

    p = command(sub, "ask", "ask a question of a knowledge base: the answer and its numbered sources")
    p.add_argument("--kb", required=True, help="knowledge base name")
    p.add_argument("question", help="the question (quote it)")
    p.add_argument("--json", action="store_true", help="print one JSON object: answer and sources")
    p.set_defaults(func=cmd_ask)

    p = command(sub, "kb", "list or delete knowledge bases")
    kb_sub = p.add_subparsers(dest="kb_command", required=True, metavar="{list,delete}")
    command(kb_sub, "list", "the knowledge bases: name, files, chunks, embedding model")
    d = command(kb_sub, "delete", "delete a knowledge base and all its files (no undo); asks first at a terminal")
    d.add_argument("name", help="knowledge base name")
    d.add_argument("-y", "--yes", action="store_true", help="do not ask (scripts, whose input is no terminal, "
                                                              "are never asked)")
    p.set_defaults(func=cmd_kb)

    p = command(sub, "docs", "list or delete the files of a knowledge base")
    docs_sub = p.add_subparsers(dest="docs_command", required=True, metavar="{list,delete}")
    d = command(docs_sub, "list", "the files of a knowledge base: name, pages, chunks, size, when added")
    d.add_argument("--kb", required=True, help="knowledge base name")
    d = command(docs_sub, "delete", "delete one file and all its chunks from a knowledge base")
    d.add_argument("--kb", required=True, help="knowledge base name")
    d.add_argument("file", help="the file's name as `docs list` shows it, or the path it was added from")
    p.set_defaults(func=cmd_docs)

    p = command(sub, "serve", "run the web app and the OpenAI-compatible HTTP API")
    p.add_argument("--host", default=None, help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port, 1-65535 (default: server.port, 7860)")
    p.set_defaults(func=cmd_serve)

    p = command(sub, "eval", "measure retrieval and answer quality on a QA dataset")
    p.add_argument("--dataset", required=True, help="SQuAD-style .json, or .jsonl of {question, answer, doc}")
    p.add_argument("--docs", help="folder of documents for a .jsonl dataset (default: its folder)")
    p.add_argument("--limit", type=int, help="a fixed random sample of N questions")
    p.add_argument("--retrieval-only", action="store_true", help="skip answering (no LLM)")
    p.add_argument("--json", action="store_true",
                   help="print the metrics as JSON, with each question's retrieval and answer")
    p.set_defaults(func=cmd_eval)

    p = command(sub, "convert-chatglm", "convert a ChatGLM2/3-6B checkpoint to a native transformers folder")
    p.add_argument("src", help="the checkpoint folder as published (config.json, weight shards, tokenizer.model)")
    p.add_argument("dst", help="a new (or empty) folder for the converted model; set llm.model to it")
    p.add_argument("--version", choices=["chatglm2", "chatglm3"],
                   help="the prompt format (detected from the checkpoint's names and tokenizer files when left out)")
    p.set_defaults(func=cmd_convert_chatglm)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``): the command stops as on Ctrl-C, its cleanup run."""


class _Stopping:
    """Set by Ctrl-C or SIGTERM. The signal reaches the main thread only; a model preparation running in a
    worker thread (a first-use conversion during ``ask``, driven by LangChain) sees this at its next progress
    step, so the command does not wait minutes for a conversion nobody will use. Plain flags: a signal
    handler must not take a lock (a second signal inside the first handler would wait for it forever)."""

    stop = False
    terminated = False


_STOPPING = _Stopping()


def _terminate(signum: int, frame: Any) -> None:
    _STOPPING.terminated = _STOPPING.stop = True
    raise Terminated


def _interrupt(signum: int, frame: Any) -> None:
    _STOPPING.stop = True
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kbqa`` and ``python -m kbqa``."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`kbqa docs list | head -3`): stop quietly, as other tools do, not with a traceback.
        # stdout is pointed at /dev/null, so that Python's own flush at exit does not fail on the closed pipe too.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):  # stdout is no file (a caller's capture)
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command that a closed pipe stopped


def _main(argv: Sequence[str] | None) -> int:
    from kbqa.bootstrap import quiet_environment

    quiet_environment()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handle = args.func is not cmd_serve and threading.current_thread() is threading.main_thread()
    _STOPPING.terminated = _STOPPING.stop = False
    # serve: uvicorn's own shutdown. Ctrl-C only where it is not ignored (a background job of a script).
    ctrl_c = _interrupt if signal.getsignal(signal.SIGINT) is signal.default_int_handler else signal.getsignal(
        signal.SIGINT)
    previous = (signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, ctrl_c)) if handle else None
    try:
        return int(args.func(args))
    except KBQAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # a program reading stdout gets JSON too, not empty input
            print(json.dumps({"error": str(exc)}, ensure_ascii=False))
        return 1
    except (Terminated, KeyboardInterrupt) as exc:
        word, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        kept = ""
        if args.func is cmd_ingest and getattr(args, "kb_kept", True):
            kept = (f" (files already added stay indexed: kbqa docs list --kb {shlex.quote(args.kb)}; add the rest "
                    "again)")
        elif args.func is cmd_ingest:
            kept = f" (no file got in, so knowledge base {args.kb} was not created)"
        print(word + kept, file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
        _STOPPING.stop = False  # a caller that goes on (tests, a program calling main) is not stopped by this one


if __name__ == "__main__":
    sys.exit(main())
