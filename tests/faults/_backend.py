"""FakeCodexBackend with switches for the fault tests: short-lived tokens, raw/garbage HTTP
answers and misbehaving WebSockets.

A subclass (not edits to tests/fakes/codex_backend.py) so the shared fake's API stays as it is:
it only adds a higher-priority handler for ``/backend-api/codex/responses`` that plays an
injected fault, or hands the request to the normal handler.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, cast

import tornado.httpserver
import tornado.iostream
import tornado.websocket

from tests.fakes.codex_backend import (
    FakeCodexBackend,
    RecordedRefresh,
    _ResponsesHandler,
)
from tests.fakes.jwt import make_access_token

RESPONSES_PATH = "/backend-api/codex/responses"


@dataclass
class HttpFault:
    """A raw HTTP answer to the next model POST, written byte for byte (no framework help).

    ``chunks`` are written one after the other (``pause`` seconds apart); ``hang`` keeps the
    connection open that long before closing it, so the answer is unfinished meanwhile.
    ``head`` replaces the whole status line + headers when set (for absurd heads).
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    pause: float = 0.0
    hang: float = 0.0
    head: bytes | None = None
    name: str = "raw"


@dataclass
class WsFault:
    """What the next real ``response.create`` on a WebSocket gets instead of a normal turn.

    ``frames``: text (str) or binary (bytes) frames sent first; then ``end``:
    "complete" (the normal turn follows), "half_close" (TCP write side shut, no close frame),
    "abort" (socket closed, no close frame) or "close_frame" (a close frame, code 1011).
    """

    frames: list[str | bytes] = field(default_factory=list)
    end: str = "complete"
    name: str = "ws"


class FaultyBackend(FakeCodexBackend):
    def __init__(self, *, access_token_lifetime: int | None = None, **kwargs: Any) -> None:
        # Seconds refreshed access tokens live (None: the fake's default, 10 days). Under the
        # router's 300 s refresh margin every use of such a token refreshes it first.
        self.access_token_lifetime = access_token_lifetime
        self._faults_lock = threading.Lock()
        self._http_faults: list[HttpFault] = []
        self._ws_faults: list[WsFault] = []
        self.faults_played: list[str] = []
        super().__init__(**kwargs)

    # ----------------------------------------------------------------- switches

    def inject_http(self, fault: HttpFault) -> None:
        with self._faults_lock:
            self._http_faults.append(fault)

    def inject_ws(self, fault: WsFault) -> None:
        with self._faults_lock:
            self._ws_faults.append(fault)

    def revive_refresh_token(self, refresh_token: str) -> None:
        """Make a used refresh token of an account live again (undo one rotation)."""
        with self._lock:
            account_id = self._dead_refresh_tokens.pop(refresh_token)
            self._refresh_tokens[refresh_token] = account_id

    def live_refresh_tokens(self, account_id: str) -> list[str]:
        with self._lock:
            return [t for t, a in self._refresh_tokens.items() if a == account_id]

    # ----------------------------------------------------------------- internals

    def _take_http_fault(self) -> HttpFault | None:
        with self._faults_lock:
            return self._http_faults.pop(0) if self._http_faults else None

    def _take_ws_fault(self) -> WsFault | None:
        with self._faults_lock:
            return self._ws_faults.pop(0) if self._ws_faults else None

    def _played(self, name: str) -> None:
        with self._lock:
            self.faults_played.append(name)
            self._lock.notify_all()

    def _refresh(self, refresh_token: str | None) -> tuple[int, dict[str, Any], RecordedRefresh]:
        status, reply, record = super()._refresh(refresh_token)
        if status != 200 or self.access_token_lifetime is None:
            return status, reply, record
        with self._lock:  # swap the issued access token for a short-lived one
            account_id = self._tokens.pop(reply["access_token"])
            plan = self._accounts[account_id].plan
            exp = int(time.time()) + self.access_token_lifetime
            access = make_access_token(account_id, plan, exp=exp)
            self._tokens[access] = account_id
        reply = {**reply, "access_token": access, "expires_in": self.access_token_lifetime}
        return status, reply, replace(record, new_access_token=access)

    def _make_server(self) -> tornado.httpserver.HTTPServer:
        server = super()._make_server()
        app = cast(Any, server).request_callback
        app.add_handlers(r".*", [(RESPONSES_PATH, _FaultyResponsesHandler, {"backend": self})])
        return server


class _FaultyResponsesHandler(_ResponsesHandler):
    @property
    def faulty(self) -> FaultyBackend:
        return cast(FaultyBackend, self.backend)

    async def post(self) -> None:
        fault = self.faulty._take_http_fault()
        if fault is None:
            await super().post()
            return
        self.faulty._played(fault.name)
        stream = self.detach()
        try:
            head = fault.head
            if head is None:
                lines = [f"HTTP/1.1 {fault.status} Whatever"]
                lines += [f"{k}: {v}" for k, v in fault.headers]
                head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            await stream.write(head)
            for number, chunk in enumerate(fault.chunks):
                if number and fault.pause:
                    await asyncio.sleep(fault.pause)
                await stream.write(chunk)
            if fault.hang:
                await asyncio.sleep(fault.hang)
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            stream.close()

    async def on_message(self, message: str | bytes) -> None:
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        real = (
            isinstance(request, dict)
            and request.get("type") == "response.create"
            and request.get("generate") is not False
        )
        fault = self.faulty._take_ws_fault() if real else None
        if fault is None:
            await super().on_message(message)
            return
        self.faulty._played(fault.name)
        try:
            for frame in fault.frames:
                await self.write_message(frame, binary=isinstance(frame, bytes))
        except tornado.websocket.WebSocketClosedError:
            return
        protocol = cast(Any, self.ws_connection)
        if fault.end == "complete":
            await super().on_message(message)
        elif fault.end == "half_close":
            protocol.stream.socket.shutdown(socket.SHUT_WR)
        elif fault.end == "abort":
            protocol.stream.close()
        elif fault.end == "close_frame":
            self.close(1011, "fake backend fault")
        else:
            raise AssertionError(fault.end)
