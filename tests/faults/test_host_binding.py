"""A pooled token goes only to chatgpt.com:443 over https.

End to end, through a real mitmdump: requests to look-alike hosts, other ports, plain http and a
tunnel to another host that claims `Host: chatgpt.com` leave the proxy with the client's own
credentials (a test script loaded after the router records each request as it leaves, and
answers anything not bound for the fake itself, so nothing reaches a real server). Unit level:
a property over `routing.is_routed` for any scheme, host, port and path.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon import routing
from tests.e2e.harness import https_request
from tests.e2e.pool_env import PoolEnv, Spec, pool_env
from tests.faults._support import RECORDER

PATH = "/backend-api/codex/responses"


def recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def plain_http(env: PoolEnv, url: str) -> bytes:
    """An absolute-form request over plain HTTP to the proxy (no CONNECT, no TLS)."""
    headers = env.headers()
    host = url.split("/")[2]
    head = f"POST {url} HTTP/1.1\r\nHost: {host}\r\ncontent-length: 2\r\nconnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n{}")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


CASES: list[tuple[str, str, dict[str, str]]] = [
    ("look-alike suffix", "https://chatgpt.com.evil.test" + PATH, {}),
    ("look-alike prefix", "https://evilchatgpt.com" + PATH, {}),
    ("other port", "https://chatgpt.com:8443" + PATH, {}),
    ("other host claiming chatgpt.com", "https://evil.test" + PATH, {"host": "chatgpt.com"}),
    ("sub-domain", "https://api.chatgpt.com" + PATH, {}),
]
PLAIN = ["http://chatgpt.com" + PATH, "http://chatgpt.com:443" + PATH]


@pytest.mark.e2e
def test_pooled_tokens_only_ever_leave_for_chatgpt_com_443_over_https(tmp_path: Path) -> None:
    record = tmp_path / "requests.jsonl"
    with pool_env(
        tmp_path, [Spec("a")], extra_args=["-s", str(RECORDER)], env={"QR_RECORD_FILE": str(record)}
    ) as env:
        client_auth = env.headers()["authorization"]
        pooled = f"Bearer {env.token('a')}"
        for _, url, extra in CASES:
            result = https_request(
                env.proxy.port,
                env.proxy.ca_path,
                "POST",
                url,
                headers=env.headers(**extra),
                body={},
            )
            assert result.status == 418  # answered by the recorder, nothing went out
        for url in PLAIN:
            assert b" 418 " in plain_http(env, url).split(b"\r\n", 1)[0]
        # The control: the real thing is rewritten.
        assert env.turn().status == 200
        seen = recorded(record)
    assert len(seen) == len(CASES) + len(PLAIN) + 1
    *others, control = seen
    for entry in others:
        assert entry["authorization"] == client_auth, entry
        assert entry["chatgpt_account_id"] == env.client["tokens"]["account_id"], entry
    assert (control["host"], control["port"], control["scheme"]) == ("chatgpt.com", 443, "https")
    assert control["authorization"] == pooled


hosts = st.sampled_from(
    [
        "chatgpt.com",
        "CHATGPT.COM",
        "chatgpt.com.",
        "chatgpt.com.evil.test",
        "evilchatgpt.com",
        "api.chatgpt.com",
        "chatgpt.co",
        "chatgpt.com\x00.evil",
        "chatgpt。com",
        "xn--chatgpt-.com",
        "127.0.0.1",
        "",
    ]
) | st.text(max_size=30)
paths = st.sampled_from(
    [PATH, "/backend-api/wham/usage", "/backend-api/conversation", "/", "//backend-api/codex/x"]
) | st.text(max_size=40)
header_sets = st.dictionaries(st.sampled_from(["originator", "x-other"]), st.text(max_size=20))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["https", "http", "HTTPS", "wss", "ws", ""]),
    hosts,
    st.integers(0, 70000),
    paths,
    header_sets,
)
def test_is_routed_only_for_https_chatgpt_com_443(
    scheme: str, host: str, port: int, path: str, headers: dict[str, str]
) -> None:
    if routing.is_routed(scheme, host, port, path, headers):
        assert scheme == "https" and port == 443
        assert host.lower().rstrip(".") == "chatgpt.com"
        assert path.startswith("/backend-api/")
