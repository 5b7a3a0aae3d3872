"""A misbehaving upstream never crashes the addon ("Addon error" never appears in the log) and
never stalls other flows: while each misbehaving answer is in progress, a normal request
through the same proxy completes promptly.
"""

from __future__ import annotations

import gzip
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.harness import Mitmdump, WsClient, responses_request
from tests.e2e.pool_env import PoolEnv, Spec, import_accounts
from tests.faults._backend import FaultyBackend, HttpFault, WsFault
from tests.faults._support import CRASH_PATTERNS, env_for, proxy

pytestmark = pytest.mark.e2e

PROMPTLY = 3.0  # seconds a normal request may take while another one misbehaves
SSE = [("content-type", "text/event-stream"), ("connection", "close")]
_rng = random.Random(7)
GARBAGE = bytes(_rng.randrange(256) for _ in range(20_000))
DEEP = b"[" * 100_000 + b"]" * 100_000


def sse(event: Any) -> bytes:
    data = event if isinstance(event, bytes) else json.dumps(event).encode()
    return b"event: codex.rate_limits\ndata: " + data + b"\n\n"


BAD_RATE_LIMITS = {
    "type": "codex.rate_limits",
    "rate_limits": {
        "primary": {"used_percent": "NaN", "window_minutes": -3, "reset_at": 1e308},
        "secondary": {"used_percent": 1e999, "reset_after_seconds": "soon"},
    },
    "plan_type": ["not", "a", "string"],
}
BAD_X_CODEX = [
    ("x-codex-primary-used-percent", "NaN"),
    ("x-codex-primary-window-minutes", "-300"),
    ("x-codex-primary-reset-at", "1e999"),
    ("x-codex-secondary-used-percent", "١٢٣"),  # Arabic-Indic digits
    ("x-codex-secondary-window-minutes", "0x10"),
    ("x-codex-secondary-reset-at", "-1"),
]

HTTP_FAULTS: dict[str, HttpFault] = {
    "garbage_sse": HttpFault(
        200,
        SSE,
        [GARBAGE[:7000], sse(BAD_RATE_LIMITS), GARBAGE[7000:], sse(b"{" * 50_000), b"\r\r\n"],
    ),
    "sse_lying_gzip": HttpFault(200, [*SSE, ("content-encoding", "gzip")], [GARBAGE]),
    "sse_unknown_encoding": HttpFault(200, [*SSE, ("content-encoding", "x-weird, br")], [GARBAGE]),
    "sse_hangs_mid_stream": HttpFault(
        200, SSE, [sse({"type": "response.created"})], hang=4.0, name="sse_hangs_mid_stream"
    ),
    "sse_huge_event": HttpFault(200, SSE, [b"data: " + b"x" * 2_000_000, b"\n\n"]),
    "invalid_x_codex_headers": HttpFault(200, [*SSE, *BAD_X_CODEX], [sse(BAD_RATE_LIMITS)]),
    "429_without_body": HttpFault(429, [("content-length", "0")]),
    "429_without_body_or_length": HttpFault(429, [("connection", "close")]),
    "429_lying_gzip": HttpFault(
        429, [("content-encoding", "gzip"), ("content-length", "100")], [GARBAGE[:100]]
    ),
    "429_deeply_nested_json": HttpFault(
        429, [("content-type", "application/json"), ("content-length", str(len(DEEP)))], [DEEP]
    ),
    "403_quota_deeply_nested": HttpFault(
        403,
        [("content-type", "application/json"), ("connection", "close")],
        [b'{"error": {"code": "insufficient_quota", "x": ' + DEEP + b"}}"],
    ),
    "500_lying_gzip": HttpFault(
        500, [("content-encoding", "gzip"), ("content-length", "64")], [GARBAGE[:64]]
    ),
    "429_gzip_of_garbage_json": HttpFault(
        429,
        [("content-encoding", "gzip"), ("connection", "close")],
        [gzip.compress(b'{"error": {"type": "usage_limit_reached", "resets_at": "NaN"')],
    ),
    "huge_header": HttpFault(200, [*SSE, ("x-huge", "h" * 200_000)], [sse(BAD_RATE_LIMITS)]),
    "many_headers": HttpFault(200, SSE + [(f"x-h{i}", "v") for i in range(3000)], []),
    "truncated_body": HttpFault(
        200, [("content-type", "application/json"), ("content-length", "1000")], [b'{"a":']
    ),
    "not_http_at_all": HttpFault(head=b"\x16\x03\x01 this is not HTTP\r\n\r\n"),
}

WS_FAULTS: dict[str, WsFault] = {
    "ws_half_closed": WsFault([json.dumps({"type": "response.created"})], "half_close"),
    "ws_aborted": WsFault([json.dumps({"type": "response.created"})], "abort"),
    "ws_close_frame": WsFault([json.dumps({"type": "response.created"})], "close_frame"),
    "ws_garbage_frames": WsFault(
        [
            "not json at all { error",
            b"\x00\xffbinary codex.rate_limits error",
            json.dumps(BAD_RATE_LIMITS),
            '{"type": "error", "status_code": 403, "error": "nope", "headers": [1, 2]}',
            "[" * 100_000 + '"error"' + "]" * 100_000,
            "e" * 1_000_000 + "rror",
        ],
        "complete",
    ),
    "ws_429_frame_with_junk": WsFault(
        [
            json.dumps(
                {
                    "type": "error",
                    "status_code": 429,
                    "error": {"type": "usage_limit_reached", "resets_at": "tomorrow"},
                    "headers": {"x-codex-primary-used-percent": "-1e999", "": None},
                }
            )
        ],
        "half_close",
    ),
}


@dataclass
class Env:
    fake: FaultyBackend
    running: Mitmdump
    pool: PoolEnv


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("bad-upstream")
    state = tmp / "router-state.toml"
    # Many accounts: each 429 blocks one for a while, and the normal requests need another.
    specs = [Spec(f"acct{i}", primary=float(90 - i)) for i in range(10)]
    with FaultyBackend(usage_step=(0.0, 0.0)) as fake:
        auths = import_accounts(fake, state, specs)
        running = proxy(fake, state, confdir=tmp / "conf").start()
        try:
            yield Env(fake, running, env_for(fake, running, state, auths))
        finally:
            running.stop()


def _normal_turn_is_prompt(env: Env) -> None:
    started = time.monotonic()
    result = env.pool.turn(session=f"normal-{started}")
    elapsed = time.monotonic() - started
    assert result.status == 200, result.body[:300]
    assert result.events and result.events[-1].json["type"] == "response.completed"
    assert elapsed < PROMPTLY, f"a normal request took {elapsed:.1f} s"


def _misbehave_while_normal(env: Env, name: str, misbehaving: Callable[[], object]) -> None:
    mark = len(env.running.lines)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(misbehaving())
        except Exception as e:  # the misbehaving client's own fate does not matter
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert env.fake.wait_for(lambda f: name in f.faults_played, 10), "the fault never played"
    _normal_turn_is_prompt(env)
    thread.join(30)
    assert not thread.is_alive(), "the misbehaving request never ended"
    time.sleep(0.3)  # let late hooks (response, error, websocket_end) run
    log = "\n".join(env.running.lines[mark:])
    for pattern in CRASH_PATTERNS:
        assert pattern not in log, f"{name}: {pattern!r} in the log:\n{log[-5000:]}"
    _normal_turn_is_prompt(env)  # and the proxy is still fine afterwards


@pytest.mark.parametrize("name", sorted(HTTP_FAULTS))
def test_a_misbehaving_http_answer(env: Env, name: str) -> None:
    fault = HTTP_FAULTS[name]
    fault.name = name
    env.fake.inject_http(fault)
    _misbehave_while_normal(env, name, lambda: env.pool.turn(session=f"bad-{name}"))


@pytest.mark.parametrize("name", sorted(WS_FAULTS))
def test_a_misbehaving_websocket(env: Env, name: str) -> None:
    fault = WS_FAULTS[name]
    fault.name = name
    env.fake.inject_ws(fault)

    def turn() -> object:
        headers = env.pool.headers()
        with WsClient(env.running.port, env.running.ca_path, headers=headers, timeout=15) as ws:
            return ws.turn(responses_request(), timeout=15)

    _misbehave_while_normal(env, name, turn)
