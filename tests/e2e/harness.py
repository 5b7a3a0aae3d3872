"""End-to-end helpers: a real ``mitmdump`` process, stdlib HTTPS/SSE and WebSocket clients
that go through it, and the real Codex CLI (pinned, installed with npm on first use).

Nothing here sleeps blindly: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import wsproto
import wsproto.events as wse
import zstandard

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIRECT_SCRIPT = Path(__file__).resolve().parent / "redirect.py"
CODEX_VERSION = "0.171.0"
CODEX_CACHE = REPO_ROOT / "tests" / ".cache" / "codex"
LISTENING_RE = re.compile(r"proxy listening at (?:\[?[\w.:]*\]?):(\d+)")

# Variables that would change how the CLI authenticates, proxies or trusts certificates.
_SCRUBBED_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CODEX_API_KEY",
    "CODEX_HOME",
    "CODEX_CA_CERTIFICATE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "RUST_LOG",
)


# --------------------------------------------------------------------------- mitmdump


class Mitmdump:
    """A ``mitmdump`` subprocess on 127.0.0.1 with an ephemeral port and its own confdir.

    ``ready_pattern`` (regex) is waited for in the output after the "listening at" line, e.g.
    the router's ready line. Output lines (stdout and stderr) are collected thread-safely.
    """

    def __init__(
        self,
        scripts: Sequence[str | os.PathLike[str]] = (),
        options: Mapping[str, str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        ready_pattern: str | None = None,
        confdir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.scripts = [str(s) for s in scripts]
        self.options = dict(options or {})
        self.env = dict(env or {})
        self.ready_pattern = ready_pattern
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.cwd = str(cwd or REPO_ROOT)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if confdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mitm-conf-")
            confdir = self._tmp.name
        self.confdir = Path(confdir)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []

    @property
    def ca_path(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "mitmdump"  # the venv running the tests
        if not exe.exists():
            exe = Path(shutil.which("mitmdump") or exe)
        cmd = [str(exe), "--listen-host", "127.0.0.1", "--listen-port", "0"]
        cmd += ["--set", f"confdir={self.confdir}"]
        for script in self.scripts:
            cmd += ["-s", script]
        for key, value in self.options.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd + self.extra_args

    def start(self) -> Mitmdump:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
            thread.start()
            self._readers.append(thread)
        try:
            match = self.wait_for_line(LISTENING_RE, self.startup_timeout)
            self.port = int(match.group(1))
            if self.ready_pattern:
                self.wait_for_line(self.ready_pattern, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, start: int = 0
    ) -> re.Match[str]:
        """First line at index >= ``start`` matching ``pattern``; TimeoutError with the log."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self._lines):
                    match = regex.search(self._lines[index])
                    if match:
                        return match
                    index += 1
                exited = self.proc is not None and self.proc.poll() is not None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (exited and not any(t.is_alive() for t in self._readers)):
                    log = "\n".join(self._lines[-60:])
                    state = f"exited rc={self.proc.returncode}" if exited and self.proc else ""
                    raise TimeoutError(f"no line matching {regex.pattern!r} {state}\n{log}")
                self._cond.wait(min(remaining, 0.2))

    def stop(self, timeout: float = 5.0) -> int | None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for thread in self._readers:
            thread.join(2)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return proc.returncode if proc else None

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fake_proxy(
    fake_address: str,
    scripts: Sequence[str | os.PathLike[str]] = (),
    options: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Mitmdump:
    """A Mitmdump with ``scripts`` then ``redirect.py`` sending chatgpt.com to the fake."""
    opts = {"ssl_insecure": "true", "connection_strategy": "lazy", **(options or {})}
    env = {"QR_FAKE_UPSTREAM": fake_address, **kwargs.pop("env", {})}
    return Mitmdump([*scripts, REDIRECT_SCRIPT], opts, env=env, **kwargs)


# --------------------------------------------------------------------------- HTTPS + SSE


@dataclass
class SseEvent:
    event: str | None
    data: str
    time: float  # time.monotonic() when the event's terminating blank line arrived

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]  # lower-cased names (last value wins)
    body: bytes
    events: list[SseEvent]
    started: float  # monotonic, before the request was sent
    headers_at: float  # monotonic, when the response headers arrived
    finished: float  # monotonic, when the body ended

    def json(self) -> Any:
        return json.loads(self.body)


def _client_context(ca_path: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _open_tunnel(proxy_port: int, host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"proxy closed the CONNECT tunnel: {reply!r}")
            reply += chunk
        status_line = reply.split(b"\r\n", 1)[0]
        if b" 200" not in status_line:
            raise ConnectionError(f"CONNECT refused: {status_line!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def https_request(
    proxy_port: int,
    ca_path: str | os.PathLike[str],
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | Mapping[str, Any] | None = None,
    zstd: bool = False,
    timeout: float = 30.0,
) -> HttpResult:
    """One HTTPS request through the proxy (CONNECT + TLS trusting ``ca_path``), HTTP/1.1.

    A ``text/event-stream`` reply is read incrementally and each event gets its arrival time.
    ``zstd=True`` compresses the body like the Codex CLI does (``Content-Encoding: zstd``).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    payload: bytes = b""
    if isinstance(body, Mapping):
        payload = json.dumps(body).encode()
        hdrs.setdefault("content-type", "application/json")
    elif isinstance(body, str):
        payload = body.encode()
    elif body is not None:
        payload = body
    if zstd and payload:
        payload = zstandard.ZstdCompressor().compress(payload)
        hdrs["content-encoding"] = "zstd"
    hdrs.setdefault("host", host)
    hdrs["content-length"] = str(len(payload))
    hdrs.setdefault("connection", "close")

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(_open_tunnel(proxy_port, host, port, timeout))
        sock = stack.enter_context(_client_context(ca_path).wrap_socket(raw, server_hostname=host))
        head = f"{method} {target or '/'} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items()
        )
        sock.sendall(head.encode() + b"\r\n" + payload)
        reader = stack.enter_context(sock.makefile("rb"))
        status_line = reader.readline().decode()
        status = int(status_line.split()[1])
        resp_headers: dict[str, str] = {}
        while (line := reader.readline().decode()) not in ("\r\n", "\n", ""):
            name, _, value = line.partition(":")
            resp_headers[name.strip().lower()] = value.strip()
        headers_at = time.monotonic()
        chunks = _iter_body(reader, resp_headers)
        events: list[SseEvent] = []
        if "text/event-stream" in resp_headers.get("content-type", ""):
            body_bytes = _read_sse(chunks, events)
        else:
            body_bytes = b"".join(chunks)
        return HttpResult(
            status, resp_headers, body_bytes, events, started, headers_at, time.monotonic()
        )


def _iter_body(reader: Any, headers: Mapping[str, str]) -> Iterator[bytes]:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                reader.readline()
                return
            data = reader.read(size)
            reader.readline()
            yield data
    elif "content-length" in headers:
        yield reader.read(int(headers["content-length"]))
    else:
        while chunk := reader.read1(65536):
            yield chunk


def _read_sse(chunks: Iterator[bytes], events: list[SseEvent]) -> bytes:
    raw, buffer = b"", b""
    for chunk in chunks:
        raw += chunk
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name, data = None, []
            for line in block.decode().split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if data or name:
                events.append(SseEvent(name, "\n".join(data), time.monotonic()))
    return raw


# --------------------------------------------------------------------------- WebSocket


class WsHandshakeError(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"WebSocket handshake answered {status}: {body[:200]!r}")
        self.status, self.headers, self.body = status, headers, body


@dataclass
class WsMessage:
    data: Any  # parsed JSON (text frames); raw str if not JSON
    time: float  # monotonic arrival


class WsClient:
    """A small synchronous WebSocket client through the proxy (CONNECT + TLS + wsproto)."""

    def __init__(
        self,
        proxy_port: int,
        ca_path: str | os.PathLike[str],
        url: str = "wss://chatgpt.com/backend-api/codex/responses",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.proxy_port, self.ca_path, self.url = proxy_port, ca_path, url
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.sock: ssl.SSLSocket | None = None
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.handshake_headers: dict[str, str] = {}
        self._pending: list[wse.Event] = []
        self._text = ""
        self.closed = False

    def connect(self) -> dict[str, str]:
        """Open the socket; returns the 101's headers (lower-cased); WsHandshakeError if not 101."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port or 443
        raw = _open_tunnel(self.proxy_port, host, port, self.timeout)
        try:
            self.sock = _client_context(self.ca_path).wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        try:
            return self._handshake(host, parts.path + (f"?{parts.query}" if parts.query else ""))
        except BaseException:
            self.close()
            raise

    def _handshake(self, host: str, target: str) -> dict[str, str]:
        extra = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        self._send(wse.Request(host=host, target=target or "/", extra_headers=extra))
        reject: wse.RejectConnection | None = None
        body = b""
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._next_event(deadline)
            if isinstance(event, wse.AcceptConnection):
                self.handshake_headers = {
                    k.decode().lower(): v.decode() for k, v in event.extra_headers
                }
                return self.handshake_headers
            if isinstance(event, wse.RejectConnection):
                reject = event
                self.handshake_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                if not event.has_body:
                    break
            elif isinstance(event, wse.RejectData):
                body += event.data
                if event.body_finished:
                    break
        assert reject is not None
        raise WsHandshakeError(reject.status_code, self.handshake_headers, body)

    def _send(self, event: wse.Event) -> None:
        assert self.sock is not None
        self.sock.sendall(self.ws.send(event))

    def _next_event(self, deadline: float) -> wse.Event:
        assert self.sock is not None
        while not self._pending:
            self._pending.extend(self.ws.events())
            if self._pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no WebSocket data before the deadline")
            if not self.sock.pending():
                ready, _, _ = select.select([self.sock], [], [], remaining)
                if not ready:
                    continue
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            if not data and not self._pending:
                self._pending.extend(self.ws.events())
                if not self._pending:
                    raise ConnectionError("connection closed")
        return self._pending.pop(0)

    def send_json(self, obj: Any) -> None:
        self._send(wse.Message(data=json.dumps(obj)))

    def recv(self, timeout: float | None = None) -> WsMessage | None:
        """Next complete text message; None once the server closed the socket."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                event = self._next_event(deadline)
            except ConnectionError:
                self.closed = True
                return None
            if isinstance(event, wse.TextMessage):
                self._text += event.data
                if event.message_finished:
                    text, self._text = self._text, ""
                    try:
                        return WsMessage(json.loads(text), time.monotonic())
                    except ValueError:
                        return WsMessage(text, time.monotonic())
            elif isinstance(event, wse.Ping):
                self._send(event.response())
            elif isinstance(event, wse.CloseConnection):
                self.closed = True
                if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    self._send(event.response())
                return None

    def turn(self, request: Mapping[str, Any], timeout: float | None = None) -> list[WsMessage]:
        """Send a ``response.create`` and collect frames up to ``response.completed`` or an
        error frame (``type`` ``error`` / ``response.failed``), or until the socket closes."""
        self.send_json({"type": "response.create", **request})
        messages: list[WsMessage] = []
        while (message := self.recv(timeout)) is not None:
            messages.append(message)
            kind = message.data.get("type") if isinstance(message.data, dict) else None
            if kind in ("response.completed", "error", "response.failed"):
                break
        return messages

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            if self.ws.state is wsproto.connection.ConnectionState.OPEN:
                self._send(wse.CloseConnection(code=1000))
        except OSError:
            pass
        finally:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> WsClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def codex_headers(auth_json: Mapping[str, Any], **extra: str) -> dict[str, str]:
    """Request headers like the CLI's for a Codex backend call with this auth.json."""
    tokens = auth_json["tokens"]
    return {
        "authorization": f"Bearer {tokens['access_token']}",
        "chatgpt-account-id": tokens["account_id"],
        "originator": "codex_exec",
        "user-agent": f"codex_exec/{CODEX_VERSION} (tests)",
        "openai-beta": "responses_websockets=2026-02-06",
        **extra,
    }


def responses_request(prompt: str = "say hi", model: str = "gpt-fake-codex") -> dict[str, Any]:
    """A minimal Responses API request body (HTTP POST body or WebSocket response.create)."""
    return {
        "model": model,
        "instructions": "You are a test.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        ],
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "store": False,
        "stream": True,
        "include": [],
        "prompt_cache_key": base64.urlsafe_b64encode(os.urandom(9)).decode(),
    }


# --------------------------------------------------------------------------- Codex CLI


class CodexUnavailable(RuntimeError):
    """The Codex CLI cannot be installed here (no npm)."""


def codex_bin() -> Path:
    """Path of the pinned Codex CLI, installed once with npm into tests/.cache/codex."""
    binary = CODEX_CACHE / "node_modules" / ".bin" / "codex"
    manifest = CODEX_CACHE / "node_modules" / "@openai" / "codex" / "package.json"

    def installed() -> bool:
        try:
            return json.loads(manifest.read_text())["version"] == CODEX_VERSION and binary.exists()
        except (OSError, ValueError, KeyError):
            return False

    if installed():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise CodexUnavailable("npm is not installed")
    CODEX_CACHE.mkdir(parents=True, exist_ok=True)
    with open(CODEX_CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install once
        if not installed():
            (CODEX_CACHE / "package.json").write_text(
                json.dumps({"private": True, "dependencies": {"@openai/codex": CODEX_VERSION}})
            )
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix", "."],
                cwd=CODEX_CACHE,
                check=True,
                capture_output=True,
                timeout=600,
            )
        if not installed():
            raise CodexUnavailable(f"npm install did not produce {binary}")
    return binary


@dataclass
class CodexResult:
    returncode: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    duration: float
    home: Path
    codex_home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.codex_home = self.home / ".codex"

    @property
    def completed(self) -> bool:
        return any(e.get("type") == "turn.completed" for e in self.events)

    @property
    def agent_messages(self) -> list[str]:
        return [
            e["item"].get("text", "")
            for e in self.events
            if e.get("type") == "item.completed"
            and e.get("item", {}).get("type") == "agent_message"
        ]

    @property
    def error_text(self) -> str:
        """Every error message the CLI reported (JSONL ``error`` / ``turn.failed``) + stderr."""
        texts = []
        for event in self.events:
            if event.get("type") == "error":
                texts.append(str(event.get("message", "")))
            elif event.get("type") == "turn.failed":
                texts.append(str(event.get("error", {}).get("message", "")))
        return "\n".join([*texts, self.stderr])

    def auth_json(self) -> dict[str, Any]:
        """auth.json as the CLI left it (it rewrites it after a refresh)."""
        return json.loads((self.codex_home / "auth.json").read_text())


# A custom provider pointing at the same ChatGPT backend with WebSockets off. Unlike the
# built-in provider's fallback (see FakeCodexBackend.websocket_enabled) its POSTs are not
# zstd-compressed and carry no ``version`` / ``x-codex-routing-hint`` headers.
HTTP_ONLY_PROVIDER = """
[model_providers.chatgpt_http]
name = "ChatGPT over HTTP only"
base_url = "https://chatgpt.com/backend-api/codex"
wire_api = "responses"
requires_openai_auth = true
supports_websockets = false
"""


def codex_config(extra_config: str = "", *, http_only: bool = False) -> str:
    """config.toml for a test run: top-level keys first, ``extra_config``, provider table last."""
    lines = ['cli_auth_credentials_store = "file"', "check_for_update_on_startup = false"]
    if http_only:
        lines.append('model_provider = "chatgpt_http"')
    return "\n".join([*lines, extra_config, HTTP_ONLY_PROVIDER if http_only else ""]) + "\n"


def run_codex(
    prompt: str,
    proxy_port: int,
    ca_path: str | os.PathLike[str],
    auth_json: Mapping[str, Any],
    extra_config: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    *,
    http_only: bool = False,
    home: str | os.PathLike[str] | None = None,
    args: Sequence[str] = (),
    ephemeral: bool = True,
) -> CodexResult:
    """Run ``codex exec --json PROMPT`` through the proxy with a throw-away HOME/CODEX_HOME.

    The CLI trusts ``ca_path`` (``CODEX_CA_CERTIFICATE``) and uses ``HTTPS_PROXY``; proxy, API-key
    and certificate variables of this process are not passed on. Transports:

    - default: WebSocket first; with ``FakeCodexBackend.websocket_enabled = False`` the handshake
      gets 426 and the CLI falls back to HTTP POST + SSE (zstd body), as in production.
    - ``http_only=True``: a custom provider with ``supports_websockets = false`` (never tries
      WebSocket; plain JSON bodies, see ``HTTP_ONLY_PROVIDER``).

    ``home``: a HOME to (re)use, e.g. from an earlier run; auth.json is written only if missing
    there, so a token the CLI refreshed is kept. Without it a temp dir is used (removed at exit).
    ``ephemeral=False`` lets the CLI record the session under ``home``, so a later run with the
    same ``home`` and ``args=("resume", "--last")`` continues the thread.
    """
    binary = codex_bin()
    if home is None:
        root = Path(tempfile.mkdtemp(prefix="codex-home-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    else:
        root = Path(home)
    codex_home = root / ".codex"
    work = root / "work"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    auth_path = codex_home / "auth.json"
    if home is None or not auth_path.exists():
        auth_path.write_text(json.dumps(auth_json, indent=2))
        auth_path.chmod(0o600)
    (codex_home / "config.toml").write_text(codex_config(extra_config, http_only=http_only))

    run_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    run_env.update(
        {
            "HOME": str(root),
            "CODEX_HOME": str(codex_home),
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
            "CODEX_CA_CERTIFICATE": str(ca_path),
            "CODEX_SYSTEM_PROXY": "off",
            "NO_COLOR": "1",
        }
    )
    run_env.update(env or {})
    flags = ["--skip-git-repo-check", *(["--ephemeral"] if ephemeral else []), "--json"]
    cmd = [str(binary), "exec", *flags, *args, prompt]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=work,
        env=run_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    events = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return CodexResult(
        proc.returncode, events, proc.stdout, proc.stderr, time.monotonic() - started, root
    )
