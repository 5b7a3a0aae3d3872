"""A local HTTPS fake of chatgpt.com's Codex backend and auth.openai.com's token endpoint.

It runs tornado on its own thread and event loop, listens on 127.0.0.1 (ephemeral port, TLS
with a throw-away self-signed certificate) and answers the way the real services do where the
Codex CLI (0.169.0 to 0.171.0) depends on it. Auth vs backend is told apart by path, so one
fake serves both hosts. Reply shapes follow the openai/codex source (codex-rs):

- ``wham/accounts/check``: ``AccountsResponse``/``AccountEntry`` (backend-client; the CLI keeps
  the entry whose ``id`` is its own ``chatgpt-account-id``, and needs ``workspace_backend_origin``
  and ``account_routing_override`` set to ``NO_CONSTRAINT`` or a valid value).
- ``codex/models``: ``ModelsResponse``/``ModelInfo`` (protocol/src/openai_models.rs).
- SSE / WebSocket events: codex-api/src/sse/responses.rs, endpoint/responses_websocket.rs (error
  frame ``{"type":"error","status_code":..,"error":..,"headers":..}``), rate_limits.rs
  (``x-codex-*`` headers and the ``codex.rate_limits`` event).
- ``wham/usage``: ``RateLimitStatusPayload`` (codex-backend-openapi-models; integer percents).
- ``/oauth/token``: login auth manager (``RefreshRequest``/``RefreshResponse``; a 401 whose
  ``error.code`` is ``refresh_token_reused``/``_expired``/``_invalidated`` is permanent, any
  other status is transient).
- ``previous_response_id``: a response another account created (or one this fake never made)
  is refused with 400 ``previous_response_not_found``, as the real backend does
  (``enforce_previous_response = False`` turns that off).
- ``reasoning = True``: a reasoning model; each turn's output starts with a reasoning item whose
  ``encrypted_content`` only the same account can read back: another account refuses a turn
  that carries it with 400 ``invalid_encrypted_content``.

Usage::

    with FakeCodexBackend(event_delay=0.0) as backend:
        auth = make_auth_json("acc-1")
        backend.register_auth_json(auth)
        ...
        assert backend.turns[-1].transport == "ws"
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
import tornado.websocket
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.jwt import decode_jwt, make_access_token, make_id_token, make_refresh_token

DEFAULT_MODEL = "gpt-fake-codex"


# --------------------------------------------------------------------------- data


@dataclass
class FakeAccount:
    """Server-side state of one ChatGPT account (workspace)."""

    account_id: str
    plan: str = "plus"
    email: str | None = None
    primary_used: float = 0.0
    secondary_used: float = 0.0
    primary_window_minutes: int = 300
    secondary_window_minutes: int = 10080
    primary_reset_at: int = 0
    secondary_reset_at: int = 0
    limited_until: int | None = None  # epoch seconds; set = usage_limit_reached
    limited_window: str = "primary"
    # set_limited(after_turns=N): N more real turns are served, then the limit applies
    limit_after_turns: int | None = None
    limit_resets_in: int = 3600
    turns: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (HTTP request or WebSocket handshake)."""

    method: str
    path: str
    query: str
    authorization: str | None
    chatgpt_account_id: str | None
    transport: str  # "http" or "ws"
    time: float
    headers: dict[str, str]
    content_encoding: str | None = None
    body: Any = None  # decoded JSON (or form dict / raw text) when there was a body
    account_id: str | None = None  # the account the bearer token belongs to, if any
    status: int | None = None  # filled in once answered


@dataclass(frozen=True)
class RecordedTurn:
    """One model request: an HTTP ``POST .../responses`` or a WebSocket ``response.create``."""

    transport: str  # "http" or "ws"
    account_id: str | None
    token: str | None
    generate: bool  # False for the WebSocket prewarm
    # "ok", "limited", "unauthorized", "injected:<status>", "previous_response_not_found"
    outcome: str
    time: float
    model: str | None = None
    content_encoding: str | None = None
    body: Any = None


@dataclass(frozen=True)
class RecordedRefresh:
    """One call to ``POST /oauth/token``."""

    refresh_token: str | None
    grant_type: str | None
    outcome: str  # "ok", "reused", "invalid_grant", "unavailable"
    time: float
    body: Any = None
    new_access_token: str | None = None
    new_refresh_token: str | None = None


@dataclass
class _InjectedError:
    status: int
    body: dict[str, Any]
    times: int
    transport: str | None


# --------------------------------------------------------------------------- TLS


def _make_self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed EC certificate for chatgpt.com, auth.openai.com and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatgpt.com")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("chatgpt.com"),
            x509.DNSName("auth.openai.com"),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-cert.pem", directory / "fake-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --------------------------------------------------------------------------- payloads


def _model_info(slug: str, reasoning: bool = False) -> dict[str, Any]:
    """One entry of ``GET /backend-api/codex/models`` (ModelInfo in codex-rs protocol).
    `reasoning`: a reasoning model, as real Codex models are: the CLI then asks for encrypted
    reasoning and sends it back with every later turn of the conversation."""
    return {
        "slug": slug,
        "display_name": "Fake Codex",
        "description": "Model served by the quota-router test fake.",
        "default_reasoning_level": "low",
        "supported_reasoning_levels": [
            {"effort": "low", "description": "Fast"},
            {"effort": "medium", "description": "Balanced"},
        ],
        "shell_type": "shell_command",
        "visibility": "list",
        "minimal_client_version": "0.1.0",
        "supported_in_api": True,
        "priority": 1,
        "upgrade": None,
        "availability_nux": None,
        "base_instructions": "You are a fake model used in tests.",
        "model_messages": None,
        "supports_reasoning_summaries": reasoning,
        "default_reasoning_summary": "auto" if reasoning else "none",
        "support_verbosity": False,
        "default_verbosity": None,
        "apply_patch_tool_type": "freeform",
        "truncation_policy": {"mode": "tokens", "limit": 10000},
        "supports_parallel_tool_calls": False,
        "context_window": 272000,
        "max_context_window": 272000,
        "auto_compact_token_limit": None,
        "effective_context_window_percent": 95,
        "experimental_supported_tools": [],
        "input_modalities": ["text"],
        "prefer_websockets": True,
    }


def _error_body(
    message: str, code: str | None, type_: str | None = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


UNAUTHORIZED_BODY: dict[str, Any] = {
    **_error_body(
        "Provided authentication token is expired. Please try signing in again.", "token_expired"
    ),
    "status": 401,
}


# --------------------------------------------------------------------------- backend


class FakeCodexBackend:
    """Fake chatgpt.com Codex backend + auth.openai.com ``/oauth/token`` (see module doc)."""

    def __init__(
        self,
        *,
        event_delay: float = 0.0,
        usage_step: tuple[float, float] = (10.0, 2.0),
        reply_text: str = "Hello from the fake backend.",
        delta_count: int = 2,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self._defaults = (event_delay, usage_step, reply_text, delta_count, model)
        self._lock = threading.Condition()
        self.reset()

        self._tmp = tempfile.TemporaryDirectory(prefix="fake-codex-")
        self.cert_path, self.key_path = _make_self_signed(Path(self._tmp.name))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._ws_handlers: set[_ResponsesHandler] = set()
        self.port = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeCodexBackend:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = self._make_server()
                sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
                self.port = sockets[0].getsockname()[1]
                self._server.add_sockets(sockets)
            except BaseException as exc:  # re-raised by start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-codex-backend", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake backend did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._tmp.cleanup()
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.stop()
            for handler in list(self._ws_handlers):
                handler.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.close_all_connections()
            asyncio.get_running_loop().stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        thread.join(10)
        self._loop = self._thread = None
        self._tmp.cleanup()

    def __enter__(self) -> FakeCodexBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the value for ``QR_FAKE_UPSTREAM``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _make_server(self) -> tornado.httpserver.HTTPServer:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        kwargs = {"backend": self}
        app = tornado.web.Application(
            [
                (r"/backend-api/codex/responses", _ResponsesHandler, kwargs),
                (r"/backend-api/codex/responses/compact", _CompactHandler, kwargs),
                (r"/backend-api/codex/models", _ModelsHandler, kwargs),
                (r"/backend-api/wham/accounts/check", _AccountsCheckHandler, kwargs),
                (r"/backend-api/wham/usage", _UsageHandler, kwargs),
                (r"/oauth/token", _OAuthTokenHandler, kwargs),
                (r"/.*", _FallbackHandler, kwargs),
            ],
            websocket_ping_interval=0,
            compress_response=False,
            log_function=lambda handler: None,
        )
        return tornado.httpserver.HTTPServer(app, ssl_options=ctx, decompress_request=False)

    def reset(self) -> None:
        """Forget accounts, tokens, logs and injected errors; settings back to the defaults."""
        with self._lock:
            # seconds between stream events; usage % added per turn (primary, secondary);
            # the answer and the number of text deltas it is split into; the model slug
            self.event_delay, self.usage_step, self.reply_text, self.delta_count, self.model = (
                self._defaults
            )
            self.websocket_enabled = True  # False: the handshake answers 426 (HTTP fallback)
            self.oauth_delay = 0.0  # seconds before /oauth/token answers
            self.oauth_arrivals = 0  # /oauth/token requests received (answered or not yet)
            self.oauth_unavailable = False  # True: /oauth/token answers 503 (transient)
            # True: a request whose previous_response_id was not created by the same account
            # is refused with 400 previous_response_not_found, as the real backend does.
            self.enforce_previous_response = True
            # True: a reasoning model (see _model_info); each turn's output starts with a
            # reasoning item whose encrypted content only the same account can read back.
            self.reasoning = False
            self._responses: dict[str, str] = {}  # response id -> account id that created it
            self._accounts: dict[str, FakeAccount] = {}
            self._tokens: dict[str, str] = {}  # access token -> account id
            self._refresh_tokens: dict[str, str] = {}  # live refresh token -> account id
            self._dead_refresh_tokens: dict[str, str] = {}  # used refresh token -> account id
            self._injected: list[_InjectedError] = []
            self._requests: list[RecordedRequest] = []
            self._turns: list[RecordedTurn] = []
            self._refreshes: list[RecordedRefresh] = []

    # ----------------------------------------------------------------- accounts

    def add_account(
        self,
        token: str,
        account_id: str,
        plan: str = "plus",
        primary_used: float = 0.0,
        secondary_used: float = 0.0,
        *,
        email: str | None = None,
        primary_window_minutes: int = 300,
        secondary_window_minutes: int = 10080,
    ) -> FakeAccount:
        """Create (or update) an account and make ``token`` a valid access token for it."""
        now = int(time.time())
        with self._lock:
            account = self._accounts.get(account_id)
            if account is None:
                account = FakeAccount(account_id=account_id)
                self._accounts[account_id] = account
            account.plan = plan
            account.email = email
            account.primary_used = primary_used
            account.secondary_used = secondary_used
            account.primary_window_minutes = primary_window_minutes
            account.secondary_window_minutes = secondary_window_minutes
            account.primary_reset_at = now + primary_window_minutes * 60
            account.secondary_reset_at = now + secondary_window_minutes * 60
            self._tokens[token] = account_id
            return replace(account)

    def register_auth_json(self, auth: dict[str, Any], **account_kwargs: Any) -> FakeAccount:
        """``add_account`` + ``add_refresh_token`` from a Codex ``auth.json`` document."""
        tokens = auth["tokens"]
        claims = decode_jwt(tokens["access_token"]).get("https://api.openai.com/auth", {})
        account_kwargs.setdefault("plan", claims.get("chatgpt_plan_type", "plus"))
        account = self.add_account(tokens["access_token"], tokens["account_id"], **account_kwargs)
        self.add_refresh_token(tokens["refresh_token"], tokens["access_token"])
        return account

    def add_token(self, token: str, account_id: str) -> None:
        """Another valid access token for an existing account."""
        with self._lock:
            if account_id not in self._accounts:
                raise KeyError(account_id)
            self._tokens[token] = account_id

    def revoke_token(self, token: str) -> None:
        """Make an access token unknown (every /backend-api call with it answers 401)."""
        with self._lock:
            self._tokens.pop(token, None)

    def add_refresh_token(self, refresh_token: str, access_token_of_account: str) -> None:
        """A live refresh token for the account that ``access_token_of_account`` belongs to."""
        with self._lock:
            self._refresh_tokens[refresh_token] = self._tokens[access_token_of_account]

    def account(self, key: str) -> FakeAccount:
        """A copy of an account's state, by account id or by one of its access tokens."""
        with self._lock:
            return replace(self._accounts[self._resolve(key)])

    def tokens_of(self, account_id: str) -> list[str]:
        """Every access token currently valid for the account (refreshes add new ones)."""
        with self._lock:
            return [t for t, a in self._tokens.items() if a == account_id]

    def set_usage(
        self, key: str, primary_used: float | None = None, secondary_used: float | None = None
    ) -> None:
        with self._lock:
            account = self._accounts[self._resolve(key)]
            if primary_used is not None:
                account.primary_used = primary_used
            if secondary_used is not None:
                account.secondary_used = secondary_used

    def set_limited(
        self,
        key: str,
        resets_in: int | None = 3600,
        *,
        window: str = "primary",
        after_turns: int | None = None,
    ) -> None:
        """Make the account answer ``usage_limit_reached`` (``resets_in=None`` clears it).

        ``key`` is an access token or an account id. ``after_turns=N``: the account serves N
        more real turns (WebSocket prewarms do not count and keep working) and the limit hits
        the one after, e.g. ``0``: a prewarm still succeeds, the real request that follows it
        on the same socket is refused.
        """
        with self._lock:
            account = self._accounts[self._resolve(key)]
            account.limit_after_turns = None
            if resets_in is None:
                account.limited_until = None
                return
            account.limited_window = window
            if after_turns is not None:
                account.limit_after_turns, account.limit_resets_in = after_turns, resets_in
                return
            self._limit_now(account, resets_in)

    @staticmethod
    def _limit_now(account: FakeAccount, resets_in: int) -> None:
        account.limited_until = int(time.time()) + resets_in
        if account.limited_window == "primary":
            account.primary_reset_at = account.limited_until
        else:
            account.secondary_reset_at = account.limited_until

    def inject_error(
        self,
        status: int,
        body: dict[str, Any] | None = None,
        *,
        times: int = 1,
        transport: str | None = None,
    ) -> None:
        """The next ``times`` model turns fail with ``status``.

        ``transport``: None (HTTP POSTs and WebSocket ``response.create``, prewarms included),
        ``"http"``, ``"ws"`` (an error frame ``{"type":"error","status_code":..,"error":..}``,
        socket left open) or ``"ws_handshake"`` (the upgrade request answered with ``status``).
        """
        if body is None:
            body = _error_body(f"injected error {status}", "server_error", "server_error")
        with self._lock:
            self._injected.append(_InjectedError(status, body, times, transport))

    def _resolve(self, key: str) -> str:
        if key in self._tokens:
            return self._tokens[key]
        if key in self._accounts:
            return key
        raise KeyError(key)

    # ----------------------------------------------------------------- observability

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def turns(self) -> list[RecordedTurn]:
        with self._lock:
            return list(self._turns)

    @property
    def refreshes(self) -> list[RecordedRefresh]:
        with self._lock:
            return list(self._refreshes)

    @property
    def refresh_count(self) -> int:
        with self._lock:
            return len(self._refreshes)

    def requests_for(self, path_prefix: str, transport: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self._requests
                if r.path.startswith(path_prefix) and transport in (None, r.transport)
            ]

    def real_turns(self, transport: str | None = None) -> list[RecordedTurn]:
        """Turns that asked for generation (WebSocket prewarms left out)."""
        return [t for t in self.turns if t.generate and transport in (None, t.transport)]

    def clear_log(self) -> None:
        with self._lock:
            self._requests.clear()
            self._turns.clear()
            self._refreshes.clear()

    def wait_for(self, predicate: Callable[[FakeCodexBackend], bool], timeout: float = 10) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every request); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if predicate(self):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.2))

    # ----------------------------------------------------------------- internals (IO thread)

    def _record(self, entry: RecordedRequest) -> int:
        with self._lock:
            self._requests.append(entry)
            self._lock.notify_all()
            return len(self._requests) - 1

    def _set_status(self, index: int, status: int) -> None:
        with self._lock:
            self._requests[index] = replace(self._requests[index], status=status)
            self._lock.notify_all()

    def _record_turn(self, turn: RecordedTurn) -> None:
        with self._lock:
            self._turns.append(turn)
            self._lock.notify_all()

    def _record_refresh(self, refresh: RecordedRefresh) -> None:
        with self._lock:
            self._refreshes.append(refresh)
            self._lock.notify_all()

    def _account_for_token(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            account_id = self._tokens.get(token)
        if account_id is None:
            return None
        try:
            exp = decode_jwt(token).get("exp")
        except ValueError:
            exp = None
        if isinstance(exp, int | float) and exp < time.time():
            return None
        return account_id

    def _take_injected(self, transport: str) -> _InjectedError | None:
        with self._lock:
            for item in self._injected:
                if item.transport == transport or (
                    item.transport is None and transport != "ws_handshake"
                ):
                    item.times -= 1
                    if item.times <= 0:
                        self._injected.remove(item)
                    return item
        return None

    def _begin_turn(self, account_id: str) -> tuple[FakeAccount, bool]:
        """Count a turn: returns (account snapshot after it, limited?)."""
        with self._lock:
            account = self._accounts[account_id]
            if account.limited_until is not None and account.limited_until <= time.time():
                account.limited_until = None
            if account.limit_after_turns is not None:
                if account.limit_after_turns <= 0:
                    account.limit_after_turns = None
                    self._limit_now(account, account.limit_resets_in)
                else:
                    account.limit_after_turns -= 1
            if account.limited_until is not None:
                return replace(account), True
            account.turns += 1
            account.primary_used = min(100.0, account.primary_used + self.usage_step[0])
            account.secondary_used = min(100.0, account.secondary_used + self.usage_step[1])
            return replace(account), False

    def response_owner(self, response_id: str) -> str | None:
        """The account id that created a response (None: this fake never created it)."""
        with self._lock:
            return self._responses.get(response_id)

    def _account_bound_error(self, account_id: str, body: Any) -> dict[str, Any] | None:
        """The 400 error body when the request refers to another account's state: encrypted
        reasoning it cannot read, or a ``previous_response_id`` that is not its response."""
        items = body.get("input") if isinstance(body, dict) else None
        for item in items if isinstance(items, list) else ():
            sealed = item.get("encrypted_content") if isinstance(item, dict) else None
            if isinstance(sealed, str) and sealed != _sealed(account_id):
                return _error_body(
                    "The encrypted content could not be verified.", "invalid_encrypted_content"
                )
        previous = body.get("previous_response_id") if isinstance(body, dict) else None
        if not previous or not self.enforce_previous_response:
            return None
        if self.response_owner(str(previous)) == account_id:
            return None
        error = _error_body(
            f"Previous response with id '{previous}' not found.", "previous_response_not_found"
        )
        error["error"]["param"] = "previous_response_id"
        return error

    def _snapshot(self, account_id: str) -> FakeAccount:
        with self._lock:
            return replace(self._accounts[account_id])

    def _limit_error(self, account: FakeAccount) -> dict[str, Any]:
        resets_at = account.limited_until or int(time.time())
        return {
            "error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": account.plan,
                "resets_at": resets_at,
                "resets_in_seconds": max(0, resets_at - int(time.time())),
            }
        }

    # Token refresh (IO thread)
    def _refresh(self, refresh_token: str | None) -> tuple[int, dict[str, Any], RecordedRefresh]:
        now = time.time()
        with self._lock:
            account_id = self._refresh_tokens.pop(refresh_token or "", None)
            if account_id is None:
                if refresh_token in self._dead_refresh_tokens:
                    body = _error_body(
                        "Your refresh token has already been used to generate a new access "
                        "token. Please try signing in again.",
                        "refresh_token_reused",
                    )
                    return 401, body, RecordedRefresh(refresh_token, None, "reused", now)
                body = _error_body("Invalid refresh token.", "invalid_grant")
                return 401, body, RecordedRefresh(refresh_token, None, "invalid_grant", now)
            account = self._accounts[account_id]
            access = make_access_token(account_id, account.plan, email=account.email)
            new_refresh = make_refresh_token()
            self._dead_refresh_tokens[refresh_token or ""] = account_id
            self._refresh_tokens[new_refresh] = account_id
            self._tokens[access] = account_id
            reply = {
                "access_token": access,
                "refresh_token": new_refresh,
                "id_token": make_id_token(account_id, account.plan, email=account.email),
                "token_type": "Bearer",
                "expires_in": 864000,
                "scope": "openid profile email offline_access",
            }
            return (
                200,
                reply,
                RecordedRefresh(refresh_token, None, "ok", now, None, access, new_refresh),
            )

    def rate_limit_headers(self, account: FakeAccount, limited: bool = False) -> dict[str, str]:
        """The ``x-codex-*`` usage headers the real backend sends for this account."""
        primary, secondary = account.primary_used, account.secondary_used
        if limited and account.limited_window == "primary":
            primary = 100.0
        elif limited:
            secondary = 100.0
        headers = {
            "x-codex-primary-used-percent": f"{primary:.1f}",
            "x-codex-primary-window-minutes": str(account.primary_window_minutes),
            "x-codex-primary-reset-at": str(account.primary_reset_at),
            "x-codex-secondary-used-percent": f"{secondary:.1f}",
            "x-codex-secondary-window-minutes": str(account.secondary_window_minutes),
            "x-codex-secondary-reset-at": str(account.secondary_reset_at),
            "x-codex-credits-has-credits": "False",
            "x-codex-credits-unlimited": "False",
            "x-codex-credits-balance": "0",
        }
        if limited:
            headers["x-codex-rate-limit-reached-type"] = f"{account.limited_window}"
        return headers

    def turn_events(self, account: FakeAccount, generate: bool = True) -> list[dict[str, Any]]:
        """The event sequence of one turn (SSE ``data:`` payloads / WebSocket text frames)."""
        response_id = f"resp_{uuid.uuid4().hex}"
        created_at = int(time.time())
        with self._lock:
            self._responses[response_id] = account.account_id
        base = {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "model": self.model,
            "status": "in_progress",
            "output": [],
        }
        rate_limits = {
            "type": "codex.rate_limits",
            "plan_type": account.plan,
            "rate_limits": {
                "primary": {
                    "used_percent": account.primary_used,
                    "window_minutes": account.primary_window_minutes,
                    "reset_at": account.primary_reset_at,
                },
                "secondary": {
                    "used_percent": account.secondary_used,
                    "window_minutes": account.secondary_window_minutes,
                    "reset_at": account.secondary_reset_at,
                },
            },
            "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
            "metered_limit_name": "codex",
        }
        usage = {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 6 if generate else 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 18 if generate else 12,
        }
        events: list[dict[str, Any]] = [
            {"type": "response.created", "sequence_number": 0, "response": base},
            rate_limits,
        ]
        output: list[dict[str, Any]] = []
        if generate and self.reasoning:
            thought = {
                "id": f"rs_{uuid.uuid4().hex}",
                "type": "reasoning",
                "summary": [],
                "encrypted_content": _sealed(account.account_id),
            }
            events.append({"type": "response.output_item.done", "output_index": 0, "item": thought})
            output.append(thought)
        if generate:
            msg_id = f"msg_{uuid.uuid4().hex}"
            index = len(output)  # after the reasoning item, if any
            item = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": item}
            )
            for delta in _split(self.reply_text, self.delta_count):
                events.append(
                    {
                        "type": "response.output_text.delta",
                        "item_id": msg_id,
                        "output_index": index,
                        "content_index": 0,
                        "delta": delta,
                    }
                )
            done_item = {
                **item,
                "status": "completed",
                "content": [{"type": "output_text", "text": self.reply_text, "annotations": []}],
            }
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": done_item}
            )
            output.append(done_item)
        events.append(
            {
                "type": "response.completed",
                "response": {**base, "status": "completed", "output": output, "usage": usage},
            }
        )
        for number, event in enumerate(events):
            event.setdefault("sequence_number", number)
        return events


def _sealed(account_id: str) -> str:
    """The encrypted reasoning an account hands out (and alone can read back)."""
    return f"ENC-{account_id}"


def _split(text: str, parts: int) -> list[str]:
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _decode_body(raw: bytes, encoding: str | None, content_type: str | None) -> Any:
    if not raw:
        return None
    if encoding == "zstd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    elif encoding == "gzip":
        raw = gzip.decompress(raw)
    if content_type and "x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(raw.decode()))
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


# --------------------------------------------------------------------------- handlers


class _Base(tornado.web.RequestHandler):
    backend: FakeCodexBackend
    transport = "http"

    def initialize(self, backend: FakeCodexBackend) -> None:
        self.backend = backend
        self._log_index: int | None = None
        self.body_json: Any = None
        self.token: str | None = None
        self.account_id: str | None = None

    def prepare(self) -> None:
        req = self.request
        encoding = req.headers.get("Content-Encoding")
        is_ws = req.headers.get("Upgrade", "").lower() == "websocket"
        try:
            self.body_json = _decode_body(req.body, encoding, req.headers.get("Content-Type"))
        except Exception as exc:  # recorded, not fatal
            self.body_json = f"<undecodable body: {exc}>"
        self.token = _bearer(req.headers.get("Authorization"))
        self.account_id = self.backend._account_for_token(self.token)
        self._log_index = self.backend._record(
            RecordedRequest(
                method=req.method or "",
                path=req.path,
                query=req.query,
                authorization=req.headers.get("Authorization"),
                chatgpt_account_id=req.headers.get("ChatGPT-Account-Id"),
                transport="ws" if is_ws else "http",
                time=time.time(),
                headers={k.lower(): v for k, v in req.headers.get_all()},
                content_encoding=encoding,
                body=self.body_json,
                account_id=self.account_id,
            )
        )

    def on_finish(self) -> None:
        if self._log_index is not None:
            self.backend._set_status(self._log_index, self.get_status())

    def compute_etag(self) -> None:
        return None

    def write_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.finish(json.dumps(body))

    def require_account(self) -> bool:
        """Answer 401 (and return False) when the bearer token is unknown or expired."""
        if self.account_id is None:
            self.write_json(401, UNAUTHORIZED_BODY)
            return False
        return True


class _ResponsesHandler(_Base, tornado.websocket.WebSocketHandler):
    """``/backend-api/codex/responses``: HTTP POST + SSE, or a WebSocket (GET upgrade)."""

    async def post(self) -> None:
        backend = self.backend
        encoding = self.request.headers.get("Content-Encoding")
        body = self.body_json if isinstance(self.body_json, dict) else {}
        if self.account_id is None:
            backend._record_turn(self._turn("http", "unauthorized", True, body, encoding))
            self.write_json(401, UNAUTHORIZED_BODY)
            return
        injected = backend._take_injected("http")
        if injected is not None:
            outcome = f"injected:{injected.status}"
            backend._record_turn(self._turn("http", outcome, True, body, encoding))
            self.write_json(injected.status, injected.body)
            return
        refused = backend._account_bound_error(self.account_id, body)
        if refused is not None:
            outcome = "previous_response_not_found"
            backend._record_turn(self._turn("http", outcome, True, body, encoding))
            self.write_json(400, refused)
            return
        account, limited = backend._begin_turn(self.account_id)
        if limited:
            backend._record_turn(self._turn("http", "limited", True, body, encoding))
            headers = backend.rate_limit_headers(account, limited=True)
            self.write_json(429, backend._limit_error(account), headers)
            return
        backend._record_turn(self._turn("http", "ok", True, body, encoding))
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("x-request-id", uuid.uuid4().hex)
        for key, value in backend.rate_limit_headers(account).items():
            self.set_header(key, value)
        events = backend.turn_events(account)
        for number, event in enumerate(events):
            if number and backend.event_delay:
                await asyncio.sleep(backend.event_delay)
            self.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return
        self.finish()

    def _turn(
        self, transport: str, outcome: str, generate: bool, body: Any, encoding: str | None = None
    ) -> RecordedTurn:
        return RecordedTurn(
            transport=transport,
            account_id=self.account_id,
            token=self.token,
            generate=generate,
            outcome=outcome,
            time=time.time(),
            model=body.get("model") if isinstance(body, dict) else None,
            content_encoding=encoding,
            body=body,
        )

    # ---- WebSocket

    async def get(self, *args: Any, **kwargs: Any) -> None:
        backend = self.backend
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            self.write_json(405, {"detail": "Method Not Allowed"})
            return
        if not self.require_account():
            return
        assert self.account_id is not None
        if not backend.websocket_enabled:
            self.write_json(426, {"detail": "Upgrade Required"})
            return
        injected = backend._take_injected("ws_handshake")
        if injected is not None:
            self.write_json(injected.status, injected.body)
            return
        for key, value in backend.rate_limit_headers(backend._snapshot(self.account_id)).items():
            self.set_header(key, value)
        self.set_header("x-request-id", uuid.uuid4().hex)
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.backend._ws_handlers.add(self)

    def on_close(self) -> None:
        self.backend._ws_handlers.discard(self)

    async def on_message(self, message: str | bytes) -> None:
        backend = self.backend
        try:
            request = json.loads(message)
        except ValueError:
            return
        if not isinstance(request, dict) or request.get("type") != "response.create":
            return
        generate = request.get("generate") is not False
        assert self.account_id is not None
        account_id = self.account_id
        injected = backend._take_injected("ws")
        if injected is not None:
            backend._record_turn(self._turn("ws", f"injected:{injected.status}", generate, request))
            await self._send(
                {"type": "error", "status_code": injected.status, "error": injected.body["error"]}
            )
            return
        refused = backend._account_bound_error(account_id, request)
        if refused is not None:
            outcome = "previous_response_not_found"
            backend._record_turn(self._turn("ws", outcome, generate, request))
            await self._send({"type": "error", "status_code": 400, "error": refused["error"]})
            return
        if generate:
            account, limited = backend._begin_turn(account_id)
        else:
            account = backend._snapshot(account_id)
            limited = account.limited_until is not None and account.limited_until > time.time()
        if limited:
            backend._record_turn(self._turn("ws", "limited", generate, request))
            await self._send(
                {
                    "type": "error",
                    "status_code": 429,
                    "error": backend._limit_error(account)["error"],
                    "headers": backend.rate_limit_headers(account, limited=True),
                }
            )
            return
        backend._record_turn(self._turn("ws", "ok", generate, request))
        for number, event in enumerate(backend.turn_events(account, generate)):
            if number and generate and backend.event_delay:
                await asyncio.sleep(backend.event_delay)
            if not await self._send(event):
                return

    async def _send(self, event: dict[str, Any]) -> bool:
        try:
            await self.write_message(json.dumps(event))
        except tornado.websocket.WebSocketClosedError:
            return False
        return True


class _CompactHandler(_Base):
    def post(self) -> None:
        if not self.require_account():
            return
        summary = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "(compacted by the fake backend)"}],
        }
        self.write_json(200, {"output": [summary]})


class _ModelsHandler(_Base):
    def get(self) -> None:
        if not self.require_account():
            return
        self.write_json(
            200,
            {"models": [_model_info(self.backend.model, self.backend.reasoning)]},
            {"etag": '"fake-1"'},
        )


class _AccountsCheckHandler(_Base):
    """``GET /backend-api/wham/accounts/check`` (codex-rs: AccountsResponse / AccountEntry)."""

    def get(self) -> None:
        if not self.require_account():
            return
        assert self.account_id is not None
        account = self.backend._snapshot(self.account_id)
        entry = {
            "id": account.account_id,
            "account_id": account.account_id,
            "name": None,
            "plan_type": account.plan,
            "structure": "personal",
            "profile_picture_url": None,
            "workspace_backend_origin": "NO_CONSTRAINT",
            "account_routing_override": "NO_CONSTRAINT",
        }
        self.write_json(
            200,
            {
                "accounts": [entry],
                "account_ordering": [account.account_id],
                "default_account_id": account.account_id,
            },
        )


class _UsageHandler(_Base):
    """``GET /backend-api/wham/usage`` (codex-rs: RateLimitStatusPayload, integer percents)."""

    def get(self) -> None:
        if not self.require_account():
            return
        assert self.account_id is not None
        account = self.backend._snapshot(self.account_id)
        now = int(time.time())
        limited = account.limited_until is not None and account.limited_until > now

        def window(used: float, minutes: int, reset_at: int, hit: bool) -> dict[str, int]:
            return {
                "used_percent": 100 if hit else round(used),
                "limit_window_seconds": minutes * 60,
                "reset_after_seconds": max(0, reset_at - now),
                "reset_at": reset_at,
            }

        hit_primary = limited and account.limited_window == "primary"
        hit_secondary = limited and account.limited_window != "primary"
        self.write_json(
            200,
            {
                "plan_type": account.plan,
                "rate_limit": {
                    "allowed": not limited,
                    "limit_reached": limited,
                    "primary_window": window(
                        account.primary_used,
                        account.primary_window_minutes,
                        account.primary_reset_at,
                        hit_primary,
                    ),
                    "secondary_window": window(
                        account.secondary_used,
                        account.secondary_window_minutes,
                        account.secondary_reset_at,
                        hit_secondary,
                    ),
                },
                "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
            },
        )


class _OAuthTokenHandler(_Base):
    """``POST /oauth/token`` on auth.openai.com: refresh with rotation."""

    async def post(self) -> None:
        backend = self.backend
        body = self.body_json if isinstance(self.body_json, dict) else {}
        backend.oauth_arrivals += 1
        if backend.oauth_delay:
            await asyncio.sleep(backend.oauth_delay)
        now = time.time()
        refresh_token = body.get("refresh_token")
        grant_type = body.get("grant_type")
        if backend.oauth_unavailable:
            backend._record_refresh(
                RecordedRefresh(refresh_token, grant_type, "unavailable", now, body)
            )
            self.write_json(503, _error_body("Service unavailable", "server_error", "server_error"))
            return
        if grant_type != "refresh_token":
            backend._record_refresh(
                RecordedRefresh(refresh_token, grant_type, "unsupported_grant_type", now, body)
            )
            self.write_json(400, _error_body("Unsupported grant type.", "unsupported_grant_type"))
            return
        status, reply, record = backend._refresh(refresh_token)
        backend._record_refresh(replace(record, grant_type=grant_type, body=body))
        self.write_json(status, reply)


class _FallbackHandler(_Base):
    """Anything else: 401 for an unknown token on /backend-api, else a plausible 200/404."""

    def _answer(self) -> None:
        path, method = self.request.path, self.request.method
        if path.startswith("/backend-api/") and not self.require_account():
            return
        if path.endswith("/wham/settings/user"):
            self.write_json(200, {"settings": {}})
        elif path.endswith("/ps/mcp") and method == "POST":
            self._mcp()
        elif "/ps/plugins/" in path or path.endswith("/plugins/featured"):
            self.write_json(
                200, {"enabled": False, "plugins": [], "pagination": {"next_page_token": None}}
            )
        elif method == "POST":  # analytics-events and the like
            self.write_json(200, {})
        else:
            self.write_json(404, {"detail": "Not Found"})

    def _mcp(self) -> None:
        """Just enough MCP (streamable HTTP, JSON replies) for the CLI's ``codex_apps`` server."""
        message = self.body_json if isinstance(self.body_json, dict) else {}
        if "id" not in message:  # a notification
            self.set_status(202)
            self.finish()
            return
        method = message.get("method")
        result: dict[str, Any] = {}
        if method == "initialize":
            params = message.get("params") or {}
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "fake-codex-apps", "version": "0.0.0"},
            }
        elif method == "tools/list":
            result = {"tools": []}
        self.write_json(200, {"jsonrpc": "2.0", "id": message["id"], "result": result})

    get = post = put = delete = patch = _answer  # type: ignore[assignment]


__all__ = [
    "DEFAULT_MODEL",
    "UNAUTHORIZED_BODY",
    "FakeAccount",
    "FakeCodexBackend",
    "RecordedRefresh",
    "RecordedRequest",
    "RecordedTurn",
]
