"""The dashboard's HTTP server: standard library ``http.server`` on a thread.

Token rules (as Jupyter's): a dashboard bound to a loopback address needs
none. Bound to any other address it makes one (or takes
``$ZMQWORKERS_DASHBOARD_TOKEN``), prints it in its URL, and checks it on
every request: as ``?token=...`` or an ``Authorization: Bearer ...`` (or
``token ...``) header. A request without it gets 403.

Without a token, the ``Host`` header is checked instead: only a loopback
address or ``localhost``, with any port (an SSH tunnel may forward
another), is answered; anything else gets 403. A web page on another site could otherwise point
its own name at 127.0.0.1 (DNS rebinding) and read ``/api/status`` from the
browser of anyone on this machine; such a request names that site as its
``Host``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zmqworkers.dashboard.metrics import CONTENT_TYPE, render_metrics
from zmqworkers.errors import ConfigurationError

log = logging.getLogger(__name__)

TOKEN_ENV = "ZMQWORKERS_DASHBOARD_TOKEN"
# Many requests at once (a page per operator, Prometheus) cost the engine
# one status command per this many seconds, not one each.
STATUS_MAX_AGE = 0.25
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) is this machine's loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return (resources.files("zmqworkers.dashboard") / "static" / name).read_bytes()


class _StatusCache:
    """The engine's latest snapshot, asked for again when older than STATUS_MAX_AGE."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        self._lock = threading.Lock()
        self._at = -1.0
        self._value: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > STATUS_MAX_AGE:
                self._value = self._status()
                self._at = now
            return self._value


class Dashboard:
    """Serves the page, ``/api/status`` and ``/metrics`` on ``address`` until closed."""

    def __init__(
        self, address: str, status: Callable[[], dict[str, Any]], controller: str = ""
    ) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self.token = None if is_loopback(host) else (os.environ.get(TOKEN_ENV) or _new_token())
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, int(port)), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"the dashboard cannot listen on {address}: {exc}") from exc
        self._server.daemon_threads = True
        self._server.dashboard = self  # type: ignore[attr-defined]
        self.status = _StatusCache(status)
        self.controller = controller
        self.host = host
        self.port: int = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="zmqworkers-dashboard",
            daemon=True,
        )
        self._thread.start()
        log.info("dashboard at %s", self.url)

    def refusal(self, path: str, headers: Any) -> bytes | None:
        """Why a request is refused (the 403's text), or None to answer it."""
        if self.token is None:
            host = headers.get("Host")
            if host is None or self.addressed_here(host):
                return None
            return (
                f"403: Host {host!r} refused: this dashboard has no token, so it answers "
                f"only requests addressed to localhost or a loopback address (as "
                f"http://localhost:{self.port}/); a page of another site cannot read it\n"
            ).encode()
        if self.allowed(path, headers):
            return None
        return b"403: this dashboard needs its token (?token=..., as printed in its URL)\n"

    def addressed_here(self, host: str) -> bool:
        """Whether a ``Host`` header names this machine's loopback, with any port or none."""
        name, port = _split_host(host.strip())
        return is_loopback(name.lower()) and (port == "" or port.isdigit())

    def allowed(self, path: str, headers: Any) -> bool:
        if self.token is None:
            return True
        given = parse_qs(urlsplit(path).query).get("token", [""])[0]
        auth = headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("bearer", "token"):
            given = given or value.strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _split_host(host: str) -> tuple[str, str]:
    """``Host`` header to (name, port): ``[::1]:80``, ``localhost:80``, ``localhost``."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else rest
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, ""


def _new_token() -> str:
    return secrets.token_urlsafe(24)


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "zmqworkers-dashboard"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        # Read-only: nothing on this port submits work or changes state.
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"read-only: GET and HEAD only\n",
            "text/plain",
            True,
            {"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, body: bool) -> None:
        dash: Dashboard = self.server.dashboard  # type: ignore[attr-defined]
        refused = dash.refusal(self.path, self.headers)
        if refused is not None:
            self._send(HTTPStatus.FORBIDDEN, refused, "text/plain; charset=utf-8", body)
            return
        path = urlsplit(self.path).path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                self._send(HTTPStatus.OK, _static(name), ctype, body)
            elif path == "/api/status":
                data = json.dumps(dash.status.get(), default=str, allow_nan=False).encode()
                self._send(HTTPStatus.OK, data, "application/json", body)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, render_metrics(dash.status.get()), CONTENT_TYPE, body)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", body)
        except Exception as exc:
            log.debug("dashboard request failed", exc_info=True)
            msg = f"the controller did not answer: {exc}\n".encode()
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, msg, "text/plain; charset=utf-8", body)

    def _send(
        self,
        code: HTTPStatus,
        data: bytes,
        ctype: str,
        body: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard %s: " + format, self.address_string(), *args)
