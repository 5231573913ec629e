"""The Gradio web app: layout, then wiring to ``kbqa.ui.handlers``. Gradio is imported only here."""

from __future__ import annotations

import copy
import html
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kbqa.errors import ConfigError, KBQAError
from kbqa.service import KBQAService
from kbqa.settings import Settings
from kbqa.ui import handlers
from kbqa.ui.conversations import Conversations
from kbqa.ui.render import CSS, DOC_HEADERS, KB_ENTER_JS, RESULT_HEADERS, WAITING_JS, sources_html


def _gradio() -> Any:
    # Gradio looks up outside hosts at start-up unless analytics are off (MODELS.md).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    return gr


def build_app(service: KBQAService, max_file_mb: float = 100.0) -> Any:
    """The web app's ``gr.Blocks`` for a service."""
    gr = _gradio()

    def warn(exc: KBQAError) -> Any:
        # A toast, and every output left as it was (raising gr.Error would blank them with an error badge).
        gr.Warning(html.escape(str(exc)), title="kbqa")
        return gr.skip()

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Show a KBQAError as a warning toast, leaving the page as it was."""
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KBQAError as exc:
                return warn(exc)
        return wrapped

    def kb_dropdown(current: str | None, keep_typed: bool) -> Any:
        """The knowledge bases as they are now; the choice kept if it exists (or, ``keep_typed``, is a new name)."""
        names = handlers.kb_names(service)
        keep = current in names or (keep_typed and bool(current))
        return gr.update(choices=names, value=current if keep else (names[0] if names else None))

    def refresh_kbs(current: str | None) -> Any:
        if not (current or "").strip():  # none chosen stays none: not the first one listed, for the next upload
            return gr.update(choices=handlers.kb_names(service), value=None)
        return kb_dropdown(current, keep_typed=True)

    def on_load(current: str | None, chosen_before: str | None) -> Any:
        # The page was built when the server started: list the knowledge bases as they are now. The value is
        # replaced only when it must be (none chosen, or deleted since): a name the user typed while the
        # page loaded is not wiped out. After a reload, the knowledge base this browser chose last is
        # chosen again (kept in the browser's storage), so a question never goes to another one unnoticed.
        # A name typed but not yet created (no files added yet) is kept too: falling back to another knowledge
        # base would send the next upload there.
        names = handlers.kb_names(service)
        if current == initial and isinstance(chosen_before, str):
            if not chosen_before.strip():  # none chosen last (the one chosen was deleted): none again, not another
                return gr.update(choices=names, value=None)
            if chosen_before != current:
                return gr.update(choices=names, value=chosen_before)
        update = kb_dropdown(current, keep_typed=False)
        if update["value"] == current or not (update["value"] or current):
            del update["value"]
        return update

    def refresh_docs(kb: str | None) -> tuple[Any, Any]:
        rows = handlers.documents(service, kb)
        return (gr.update(value=rows, label=handlers.files_label(service, kb)),
                gr.update(choices=[r[0] for r in rows], value=None))

    def latest_upload(kb: str | None) -> Any:
        rows = handlers.latest_upload_rows(service, kb)
        return gr.update() if rows is None else gr.update(value=rows)

    def on_ingest(kb: str | None, files: Any, progress: Any = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008
        """Outputs: results, summary, upload, kb. Each file's line shows once it is settled."""
        skip = gr.skip()
        shown = [0.0, "reading"]  # the bar as last drawn

        def show(fraction: float, message: str) -> None:
            shown[:] = fraction, message
            progress(fraction, desc=message)

        try:
            for results, finished, summary in handlers.ingest_steps(service, kb, files, show):
                if not finished:
                    yield results, summary, skip, skip
                    # Drawn again: an update that reached the page before these rows was wiped by them.
                    progress(shown[0], desc=shown[1])
                    continue
                if any("failed" in str(r[1]) for r in results):
                    gr.Warning("Some files could not be indexed: see the reason column.")
                # The choices only: the user may have chosen another knowledge base meanwhile, and questions
                # go to the one on screen (the files table follows it, refreshed after this event).
                yield results, summary, None, gr.update(choices=handlers.kb_names(service))
        except KBQAError as exc:
            yield warn(exc)

    chats = Conversations()

    def session(request: Any) -> str:
        return getattr(request, "session_hash", None) or ""

    def start_conversation(request: Any) -> None:
        """A new conversation for this browser session: the answer still streaming lands in none."""
        chats.new(session(request))  # it stops at the model's next word, or before it starts if it waits

    def stop_answer(request: Any) -> None:
        """Stop the answer this browser session is being given, if any: what came stays in the chat."""
        chats.stop(session(request))

    stop_answer.__annotations__["request"] = gr.Request

    def on_ask(kb: str | None, question: str, history: list[dict[str, str]],
               request: Any) -> Iterator[tuple[Any, ...]]:
        """Outputs: chatbot, sources, question box, the "waiting" line under it (cleared once this runs)."""
        key = session(request)
        number = chats.current(key)
        skip = gr.skip()
        first = True
        with chats.answering(key) as stop:
            try:
                for chat, panel in handlers.ask(service, kb, question, history, stop):
                    if chats.current(key) != number:
                        break  # closing the answer's stream stops its generation
                    # The box is emptied once: what the user types meanwhile is the next question, kept.
                    yield (chat, panel, "", "") if first else (chat, panel, skip, skip)
                    first = False
            except KBQAError as exc:
                # Not answered after the box was emptied (e.g. too long for the model's context): the question
                # goes back into the box, so it can be shortened and sent again.
                warn(exc)
                yield skip, skip, skip if first else question, ""
        # Gradio shows an event's last output again when it ends: skips, so a chat started meanwhile (Clear
        # chat, another knowledge base) is never overwritten with this one.
        yield skip, skip, skip, skip

    on_ask.__annotations__["request"] = gr.Request  # how Gradio knows to pass the request (gradio is lazy here)

    # Both deletions ask first, in one confirmation row; what its question names is what "Yes" deletes
    # (a pending {"kb"} or {"kb", "file"}), even if the choices change meanwhile.
    @guard
    def on_ask_delete_doc(kb: str | None, name: str | None) -> tuple[Any, ...]:
        question = handlers.confirm_delete_document(service, kb, name)
        return gr.update(visible=True), question, {"kb": kb, "file": name}

    @guard
    def on_ask_delete_kb(kb: str | None) -> tuple[Any, ...]:
        question = handlers.confirm_delete_kb(service, kb)
        return gr.update(visible=True), question, {"kb": kb}

    def on_confirm_delete(pending: dict[str, str] | None, request: Any) -> tuple[Any, ...]:
        """Outputs: kb, docs, message, confirm row, chatbot, sources, results, summary, file choice."""
        hide = gr.update(visible=False)
        skip = gr.skip()
        pending = pending or {}
        if "file" in pending:
            try:
                rows, message = handlers.delete_document(service, pending.get("kb"), pending["file"])
            except KBQAError as exc:
                warn(exc)
                return skip, skip, skip, hide, skip, skip, skip, skip, skip
            return (skip, rows, message, hide, skip, skip, skip, skip,
                    gr.update(choices=[r[0] for r in rows], value=None))
        # A new conversation either way: the answer streaming stops at its next word, and follow-up questions
        # must not be read against the deleted knowledge base's chat or a cut-off answer.
        start_conversation(request)
        try:
            message = handlers.delete_kb(service, pending.get("kb"))
        except KBQAError as exc:
            warn(exc)
            return skip, skip, skip, hide, [], sources_html([]), skip, skip, skip
        # None chosen after it: falling back to another knowledge base would send the next question or upload
        # to one the user never chose.
        return (gr.update(choices=handlers.kb_names(service), value=None), [], message, hide, [], sources_html([]),
                [], "", gr.update(choices=[], value=None))

    on_confirm_delete.__annotations__["request"] = gr.Request

    names = handlers.kb_names(service)
    initial = names[0] if names else None
    with gr.Blocks(title="kbqa") as app:
        chosen = gr.BrowserState(None, storage_key="kbqa-knowledge-base")
        gr.Markdown("## kbqa · local knowledge-base question answering\n"
                    "Answers come only from your documents; the passages used are shown beside each answer.")
        with gr.Row():
            kb = gr.Dropdown(choices=names, value=initial, allow_custom_value=True,
                             label="Knowledge base (choose one, or type a new name and add files)",
                             elem_id="kb-select", scale=4)
            refresh = gr.Button("↻ Refresh", scale=0, elem_id="kb-refresh")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"), gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="Answers", height=520, elem_id="chatbot")
                    with gr.Row():
                        question = gr.Textbox(placeholder="Ask a question about your documents…",
                                              show_label=False, scale=5, elem_id="question")
                        ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-button")
                    waiting = gr.Markdown("", elem_id="question-waiting")
                    with gr.Row():
                        stop = gr.Button("Stop", size="sm", elem_id="stop-button")
                        clear = gr.Button("Clear chat", size="sm")
                with gr.Column(scale=2):
                    gr.Markdown("### Sources")
                    sources = gr.HTML(sources_html([]), elem_id="sources")
            with gr.Tab("Documents", id="documents"):
                upload = gr.File(file_count="multiple", label=f"Drop files here (up to {max_file_mb:g} MB each)",
                                 elem_id="upload")
                ingest = gr.Button("Add to knowledge base", variant="primary", elem_id="ingest-button")
                summary = gr.Markdown(elem_id="ingest-summary")
                results = gr.Dataframe(headers=RESULT_HEADERS, label="This upload", interactive=False,
                                       elem_id="ingest-results", wrap=True, column_widths=["32%", "12%", "8%", "48%"])
                docs = gr.Dataframe(headers=DOC_HEADERS, label=handlers.FILES_LABEL, interactive=False,
                                    elem_id="docs", wrap=True, column_widths=["38%", "10%", "11%", "13%", "28%"])
                with gr.Row():
                    doc_choice = gr.Dropdown(label="File", choices=[], elem_id="doc-choice", scale=3)
                    delete_doc = gr.Button("Delete file", variant="stop", elem_id="delete-doc", scale=1)
                    delete_kb = gr.Button("Delete knowledge base", variant="stop", elem_id="delete-kb", scale=1)
                with gr.Row(visible=False, elem_id="confirm-delete-kb") as confirm_row:
                    confirm_text = gr.Markdown()
                    confirm_yes = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete-yes", scale=0)
                    confirm_no = gr.Button("Cancel", elem_id="confirm-delete-no", scale=0)
                message = gr.Markdown()
                pending_delete = gr.State(None)

        def new_chat(request: Any) -> tuple[Any, ...]:
            start_conversation(request)
            return [], sources_html([])

        new_chat.__annotations__["request"] = gr.Request

        def hide_confirm() -> Any:
            return gr.update(visible=False)

        def pick_file(evt: Any) -> Any:
            """A click on a row of the files table chooses that file for deletion."""
            row = evt.row_value or []
            return row[0] if row and row[0] else gr.skip()

        pick_file.__annotations__["evt"] = gr.SelectData

        refresh.click(refresh_kbs, kb, kb).then(refresh_docs, kb, [docs, doc_choice]).then(
            latest_upload, kb, results)
        kb.change(refresh_docs, kb, [docs, doc_choice])
        # A page reloaded mid-upload shows the upload's outcomes again (its failed files' reasons too).
        app.load(on_load, [kb, chosen], kb).then(refresh_docs, kb, [docs, doc_choice]).then(latest_upload, kb, results)
        # Kept in the browser at once, not after the queue. None chosen (after a deletion) is kept as " ": the
        # browser state does not store an empty value, and the deleted name would come back at the next reload.
        kb.change(None, kb, chosen, js="(name) => name || ' '")
        # The bar shows once, over this upload's results, not copied onto every output.
        ingest.click(on_ingest, [kb, upload], [results, summary, upload, kb],
                     show_progress_on=[results]).then(refresh_docs, kb, [docs, doc_choice])
        # At once, in the browser: a question sent while an answer streams (or while the model still reads the
        # prompt of one just stopped) waits in the queue, and the page would otherwise not show that it was sent.
        # Set up before the question's own listener, whose first output clears it (set up after it, this line
        # came after that listener's outputs when they came at once, as a warning's do, and stayed).
        gr.on([ask.click, question.submit], None, [question, waiting], waiting, js=WAITING_JS)
        # "always_last": a question sent while an answer streams runs after it, with the chat as it is then.
        # One listener for the button and Enter: the browser holds back repeats of the same listener only.
        gr.on([ask.click, question.submit], on_ask, [kb, question, chatbot], [chatbot, sources, question, waiting],
              trigger_mode="always_last")
        # A new chat stops a streaming answer: Clear chat, the chat box's own clear icon, and another
        # knowledge base (a follow-up must not be read against the old chat). Not by Gradio's cancels=: a
        # question sent just after a cancel was dropped (the always_last trigger waited for an end that never
        # came); a new conversation number (start_conversation) makes on_ask stop at its next word instead.
        # new_chat waits for the answer's stream to end (its last words must reach the page before the empty
        # chat): the page empties the chat at once, so a question sent meanwhile is not read as a follow-up.
        gr.on([clear.click, kb.input], None, None, [chatbot, sources],
              js=f"() => [[], {json.dumps(sources_html([]))}]")
        clear.click(new_chat, None, [chatbot, sources])
        stop.click(stop_answer)  # the answer's own event shows it stopped
        chatbot.clear(new_chat, None, [chatbot, sources])  # the chat box's own icon empties it on the page
        kb.input(new_chat, None, [chatbot, sources]).then(
            lambda: (gr.update(visible=False), [], "", ""), None,
            [confirm_row, results, summary, message])  # another knowledge base's upload and deletions
        docs.select(pick_file, None, doc_choice)
        # The question appears at the foot of a long page: bring it into view, or the click seems to do nothing.
        show_question = "() => document.querySelector('#confirm-delete-kb')?.scrollIntoView({block: 'center'})"
        delete_doc.click(on_ask_delete_doc, [kb, doc_choice], [confirm_row, confirm_text, pending_delete]).then(
            None, None, None, js=show_question)
        delete_kb.click(on_ask_delete_kb, kb, [confirm_row, confirm_text, pending_delete]).then(
            None, None, None, js=show_question)
        confirm_no.click(hide_confirm, None, confirm_row)
        confirm_yes.click(on_confirm_delete, pending_delete,
                          [kb, docs, message, confirm_row, chatbot, sources, results, summary, doc_choice])
    return app


def build_server(service: KBQAService, settings: Settings, host: str | None = None) -> Any:
    """The whole server: the OpenAI-compatible API (``/v1``, ``/kb``) with the web app mounted at ``/``.

    ``host`` is the address it listens on (default ``server.host``): with a loopback one, requests for
    other host names are refused (see ``kbqa.hostguard``).
    """
    gr = _gradio()
    from kbqa.api import build_api
    from kbqa.hostguard import HostGuard, allowed_hosts

    api = build_api(service, settings.ingest.max_file_mb)
    blocks = build_app(service, settings.ingest.max_file_mb)
    blocks.queue(default_concurrency_limit=1)
    max_bytes = int(settings.ingest.max_file_mb * 2**20)  # in bytes: gradio reads "0.5mb" as an error
    app = gr.mount_gradio_app(api, blocks, path="/", max_file_size=max_bytes, css=CSS, js=KB_ENTER_JS,
                              theme=gr.themes.Soft(),
                              footer_links=["settings"], show_error=True)
    app.add_middleware(HostGuard, hosts=allowed_hosts(host or settings.server.host, settings.server.allowed_hosts))
    return app


def check_listen(host: str, port: int) -> None:
    """Refuse, before anything is announced, an address the server could not listen on.

    Raises:
        ConfigError: a port out of range, a port another program uses, or a host that is no address here.
    """
    import socket

    where = "--host / --port, or server.host / server.port (KBQA_SERVER__HOST / KBQA_SERVER__PORT)"
    if not 1 <= port <= 65535:
        raise ConfigError(f"Port {port} is not a TCP port (1-65535): set {where}.")
    try:
        host = host or "0.0.0.0"  # noqa: S104 - uvicorn reads "" as every interface; so does this check
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"Cannot listen on {host}:{port} ({reason}): another program may use the port, or the "
                          f"host is not an address of this machine. Set {where}.") from None


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Build the service and run the web app and API until interrupted.

    Raises:
        ConfigError: the address cannot be listened on, or settings this machine cannot honour.
    """
    import sys

    import uvicorn

    from kbqa.bootstrap import build_service, quiet_environment

    quiet_environment()
    from tqdm import tqdm

    host, port = host or settings.server.host, settings.server.port if port is None else port
    check_listen(host, port)
    bar = tqdm(total=0, unit="B", unit_scale=True, desc="preparing models", file=sys.stderr, leave=False,
               disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    service = build_service(settings, progress=progress)
    app = build_server(service, settings, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    service.root.announce(url)
    # This is the server's own skin, not library code: tell the user where to go and what is loading.
    print(f"kbqa: web app on {url} , OpenAI-compatible API on {url}v1 "
          "(loading the models in the background; the first answer waits for them)", file=sys.stderr, flush=True)
    threading.Thread(target=_warm_up, args=(service, bar), name="kbqa-warm-up", daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_config=log_config())


class ApiRequestsOnly(logging.Filter):
    """Passes uvicorn's access lines of API requests (``/v1``, ``/kb``), not the web page's own traffic."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return isinstance(args, tuple) and len(args) > 2 and str(args[2]).startswith(("/v1/", "/kb"))


def log_config() -> dict[str, Any]:
    """uvicorn's logging: warnings and errors, and one line per API request (method, path, status) on stderr."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn"]["level"] = config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    config["filters"] = {"api_only": {"()": ApiRequestsOnly}}
    config["handlers"]["access"].update(filters=["api_only"], stream="ext://sys.stderr")
    return config


def _warm_up(service: KBQAService, bar: Any) -> None:
    """Load (assemble, convert) the models before the first question needs them."""
    import sys

    try:
        service.embed(["warm-up"])
        service.get_llm()
        bar.close()
        print("kbqa: models ready", file=sys.stderr, flush=True)
    except KBQAError as exc:  # shown again, as a toast, when a user asks
        bar.close()
        print(f"kbqa: {exc}", file=sys.stderr, flush=True)
