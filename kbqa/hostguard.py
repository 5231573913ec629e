"""Keep web pages of other sites away from the local server (DNS rebinding and cross-site requests).

Binding to 127.0.0.1 stops other machines, not the user's own browser: a page on ``evil.example`` can
post a form to ``http://127.0.0.1:7860/kb/...`` (a "simple" request runs without a CORS preflight), and a
page whose name is re-pointed at 127.0.0.1 (DNS rebinding) can read the answers too. So the server takes
a request only when

- its ``Host`` names this server: for a loopback bind, ``localhost``, ``127.0.0.1`` or ``[::1]`` (any
  port), plus ``server.allowed_hosts``; for any other bind, any name unless ``server.allowed_hosts`` is
  set; and
- a request that changes something (any method but GET, HEAD, OPTIONS) carrying an ``Origin`` comes from
  the server's own pages (the Origin's host and port are the request's ``Host``); so does a CORS preflight
  (OPTIONS asking for such a request), which would otherwise be approved for a change then refused.
  Programs (OpenAI clients, LangChain, curl) send no Origin and are not affected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from kbqa.openai_format import error_body

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_SETTING = "server.allowed_hosts (KBQA_SERVER__ALLOWED_HOSTS)"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: Sequence[str]) -> frozenset[str] | None:
    """The host names a server bound to ``bind`` answers to; None for any (a non-loopback bind, no list)."""
    names = {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if "*" in names:
        return None
    if is_loopback(bind):
        return frozenset(names | set(_LOOPBACK_NAMES) | {bind.lower().strip("[]")})
    return frozenset(names) if names else None


def _host_name(host: str) -> str:
    """``127.0.0.1:7860`` -> ``127.0.0.1``; ``[::1]:7860`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostGuard:
    """ASGI middleware refusing requests for other host names and cross-site changes (403, OpenAI's error shape)."""

    def __init__(self, app: Any, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = headers.get("host", "")
        # A CORS preflight asks, before a request, whether it will be taken: judged as that request would be.
        method = str(scope.get("method", "GET"))
        if method == "OPTIONS":
            method = headers.get("access-control-request-method", method).upper()
        refusal = self._refusal(method, host, headers.get("origin"))
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await JSONResponse(error_body(*refusal), status_code=refusal[1])(scope, receive, send)

    def _refusal(self, method: str, host: str, origin: str | None) -> tuple[str, int, str] | None:
        """Why a request is refused (message, status, code), or None."""
        if self.hosts is not None and _host_name(host) not in self.hosts:
            known = ", ".join(sorted(self.hosts))
            return (f"Requests for host '{host}' are refused: this kbqa server answers to {known}, so a web page of "
                    f"another site cannot reach it. To serve it under that name, add the name to {_SETTING}.",
                    403, "forbidden_host")
        if origin is not None and method not in _SAFE_METHODS:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.strip().lower():
                return (f"A request from the web page at {origin} was refused: kbqa takes uploads, deletions and "
                        f"questions from its own web app ({host}) and from programs that send no Origin header "
                        "(OpenAI clients, LangChain, curl), not from other sites.", 403, "forbidden_origin")
        return None
