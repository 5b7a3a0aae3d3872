"""The live dashboard at http://router.mitm/ (served by mitmproxy itself, like mitm.it).

A browser that uses the proxy opens `http://router.mitm/`; the page (addon/static/dashboard.html,
self-contained) polls `/api/status` and `/api/history`. Read-only: nothing here changes the pool.

- `GET /`             the page
- `GET /api/status`   the pool without history; `?wait=ETAG` holds the answer (up to 20 s)
                      until the status differs from that ETAG, so an idle page makes few flows
- `GET /api/history`  each account's recent usage points, for the chart

Only whitelisted fields leave this module: even if a snapshot ever carried credentials, the
page would not show them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import asgiref.wsgi
from mitmproxy import http
from mitmproxy.addons import asgiapp

from addon.history import MAX_AGE

logger = logging.getLogger(__name__)

HOST = "router.mitm"
PAGE = Path(__file__).with_name("static") / "dashboard.html"
LONG_POLL = 20.0  # seconds an `?wait=` request is held at most
POLL_STEP = 0.5  # seconds between looks at the pool while holding one

Snapshot = dict[str, Any]
StartResponse = Callable[[str, list[tuple[str, str]]], object]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# What the page may see of the snapshot: names, states and numbers, never a credential.
TOP_FIELDS = ("strategy", "state_file", "saving_error")
ROW_FIELDS = (
    "name",
    "plan",
    "email",
    "status",
    "reason",
    "primary_used_percent",
    "primary_reset_at",
    "secondary_used_percent",
    "secondary_reset_at",
    "blocked_until",
    "requests",
    "last_used_at",
    "priority",
    "max_primary_percent",
    "max_secondary_percent",
    "next_pick",
)


def _number(value: object, digits: int = 1) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return round(float(value), digits)


def status_payload(snapshot: Snapshot) -> dict[str, Any]:
    """The page's view of the pool: whitelisted fields and an ETag of everything but `now`."""
    body: dict[str, Any] = {key: snapshot.get(key) for key in TOP_FIELDS}
    body["accounts"] = [
        {key: row.get(key) for key in ROW_FIELDS} for row in snapshot.get("accounts", [])
    ]
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    body["etag"] = digest.hexdigest()[:16]
    body["now"] = snapshot.get("now") or time.time()
    return body


def history_payload(snapshot: Snapshot) -> dict[str, Any]:
    accounts = []
    for row in snapshot.get("accounts", []):
        points = [
            [_number(p[0], 0), _number(p[1]), _number(p[2])]
            for p in row.get("history") or ()
            if len(p) == 3
        ]
        accounts.append({"name": row.get("name"), "points": points})
    return {"now": snapshot.get("now") or time.time(), "max_age": MAX_AGE, "accounts": accounts}


@functools.cache
def _load_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (the one inline script allowed by its hash)."""
    text = PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    )
    policy = (
        "default-src 'none'; "
        f"script-src {hashes}; "
        "style-src 'unsafe-inline'; "
        "connect-src 'self'; "
        "img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return text.encode(), policy


def make_app(snapshot: Callable[[], Snapshot]) -> WsgiApp:
    """A plain WSGI app; `snapshot` is called once per API request."""
    page, policy = _load_page()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return _send(start_response, "405 Method Not Allowed", b"read-only\n", "text/plain")
        if path in ("/", "/index.html"):
            headers = [("content-security-policy", policy)]
            return _send(start_response, "200 OK", page, "text/html; charset=utf-8", headers)
        if path == "/api/status":
            body = json.dumps(status_payload(snapshot())).encode()
            return _send(start_response, "200 OK", body, "application/json")
        if path == "/api/history":
            body = json.dumps(history_payload(snapshot())).encode()
            return _send(start_response, "200 OK", body, "application/json")
        if path == "/favicon.ico":
            return _send(start_response, "204 No Content", b"", "image/x-icon")
        return _send(start_response, "404 Not Found", b"not found\n", "text/plain")

    return app


def _send(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        *(extra or []),
    ]
    start_response(status, headers)
    return [body]


class Dashboard(asgiapp.WSGIApp):
    """Serves the dashboard on http://router.mitm/ through the proxy."""

    name = "quota-router-dashboard"

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__(make_app(snapshot), HOST, None)
        self.snapshot = snapshot
        self.long_poll = LONG_POLL
        self.poll_step = POLL_STEP

    def should_serve(self, flow: http.HTTPFlow) -> bool:
        # Every request passes here: rule out the others cheaply (pretty_host parses the Host
        # header, ~30 us) before mitmproxy's own check.
        request = flow.request
        if request.host != HOST and HOST not in (request.host_header or ""):
            return False
        return super().should_serve(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if not self.should_serve(flow):
            return
        # The WSGI app runs on a worker thread; the pool changes on the event loop. So the
        # snapshot is taken here, on the loop, and the app only formats it.
        try:
            taken = await self._take(flow)
        except Exception:
            logger.exception("quota-router: the dashboard could not read the pool")
            flow.response = http.Response.make(
                500, b"quota-router: cannot read the pool (see the proxy's log)\n"
            )
            return
        await asgiapp.serve(asgiref.wsgi.WsgiToAsgi(make_app(lambda: taken)), flow)

    async def _take(self, flow: http.HTTPFlow) -> Snapshot:
        taken = self.snapshot()
        path, _, query = flow.request.path.partition("?")
        wait = parse_qs(query).get("wait", [""])[0]
        if path != "/api/status" or not wait:
            return taken
        deadline = time.monotonic() + self.long_poll
        while status_payload(taken)["etag"] == wait and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_step)
            taken = self.snapshot()
        return taken
