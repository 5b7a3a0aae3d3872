"""Proves the e2e infrastructure without the router: fake backend + mitmdump + real Codex CLI.

Only ``tests/e2e/redirect.py`` is loaded into mitmdump here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import (
    CodexUnavailable,
    Mitmdump,
    WsClient,
    codex_bin,
    codex_headers,
    fake_proxy,
    https_request,
    responses_request,
    run_codex,
)
from tests.fakes.codex_backend import FakeCodexBackend
from tests.fakes.jwt import make_auth_json

RESPONSES_URL = "https://chatgpt.com/backend-api/codex/responses"
TOKEN_URL = "https://auth.openai.com/oauth/token"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeCodexBackend]:
    with FakeCodexBackend() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(shared_fake: FakeCodexBackend) -> Iterator[Mitmdump]:
    """One mitmdump (redirect script only) for the module: its start-up costs ~1 s."""
    with fake_proxy(shared_fake.address) as mitmdump:
        yield mitmdump


@pytest.fixture
def backend(shared_fake: FakeCodexBackend) -> FakeCodexBackend:
    shared_fake.reset()
    return shared_fake


@pytest.fixture(scope="session")
def codex() -> None:
    try:
        codex_bin()
    except CodexUnavailable as exc:
        pytest.skip(f"Codex CLI unavailable: {exc}")


@pytest.mark.codex_cli
def test_cli_turn_over_websocket(backend: FakeCodexBackend, proxy: Mitmdump, codex: None) -> None:
    auth = make_auth_json("acc-ws", "plus")
    backend.register_auth_json(auth)
    result = run_codex("say hi", proxy.port, proxy.ca_path, auth)

    assert result.returncode == 0, result.error_text
    assert result.completed
    assert result.agent_messages == [backend.reply_text]
    turns = backend.turns
    assert [(t.transport, t.generate, t.outcome) for t in turns] == [
        ("ws", False, "ok"),  # prewarm, same socket
        ("ws", True, "ok"),
    ]
    assert all(t.account_id == "acc-ws" for t in turns)
    handshakes = backend.requests_for("/backend-api/codex/responses", transport="ws")
    assert [h.status for h in handshakes] == [101]
    assert handshakes[0].chatgpt_account_id == "acc-ws"
    assert handshakes[0].headers["host"] == "chatgpt.com"  # redirect keeps the real host
    assert not backend.requests_for("/backend-api/codex/responses", transport="http")
    assert [r.status for r in backend.requests_for("/backend-api/wham/accounts/check")] == [200]
    assert backend.account("acc-ws").primary_used == backend.usage_step[0]


@pytest.mark.codex_cli
def test_cli_turn_over_http_fallback(
    backend: FakeCodexBackend, proxy: Mitmdump, codex: None
) -> None:
    backend.websocket_enabled = False  # handshake answered 426: the CLI falls back to HTTP+SSE
    auth = make_auth_json("acc-http")
    backend.register_auth_json(auth)
    result = run_codex("say hi", proxy.port, proxy.ca_path, auth)

    assert result.returncode == 0, result.error_text
    assert result.completed
    assert [h.status for h in backend.requests_for("/backend-api/codex/responses", "ws")] == [426]
    (turn,) = backend.turns
    assert (turn.transport, turn.outcome, turn.content_encoding) == ("http", "ok", "zstd")
    assert turn.body["model"] == backend.model and turn.body["stream"] is True
    (post,) = backend.requests_for("/backend-api/codex/responses", transport="http")
    assert post.headers["accept"] == "text/event-stream"
    assert post.chatgpt_account_id == "acc-http"


@pytest.mark.codex_cli
def test_cli_http_only_provider(backend: FakeCodexBackend, proxy: Mitmdump, codex: None) -> None:
    auth = make_auth_json("acc-plain")
    backend.register_auth_json(auth)
    result = run_codex("say hi", proxy.port, proxy.ca_path, auth, http_only=True)

    assert result.returncode == 0, result.error_text
    assert result.completed
    assert not backend.requests_for("/backend-api/codex/responses", transport="ws")
    (turn,) = backend.turns
    assert (turn.transport, turn.outcome, turn.content_encoding) == ("http", "ok", None)
    assert turn.account_id == "acc-plain"


@pytest.mark.codex_cli
@pytest.mark.parametrize("websocket", [True, False], ids=["ws", "http"])
def test_cli_usage_limit_fails_the_turn(
    backend: FakeCodexBackend, proxy: Mitmdump, codex: None, websocket: bool
) -> None:
    backend.websocket_enabled = websocket
    auth = make_auth_json("acc-limited")
    backend.register_auth_json(auth)
    backend.set_limited(auth["tokens"]["access_token"], resets_in=3600)
    result = run_codex("say hi", proxy.port, proxy.ca_path, auth)

    assert result.returncode == 1
    assert not result.completed
    assert "usage limit" in result.error_text
    outcomes = {(t.transport, t.outcome) for t in backend.turns}
    assert outcomes == {("ws" if websocket else "http", "limited")}


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "buffered"])
def test_sse_arrival_times_through_proxy(
    backend: FakeCodexBackend, proxy: Mitmdump, streamed: bool
) -> None:
    """The stdlib client sees SSE events as they arrive; mitmdump alone buffers them."""
    backend.event_delay = 0.3
    backend.delta_count = 1  # created, rate_limits, item.added, delta, item.done, completed
    auth = make_auth_json("acc-sse")
    backend.register_auth_json(auth)
    with contextlib.ExitStack() as stack:
        if streamed:  # a proxy of its own that streams bodies (the router does it for SSE)
            options = {"stream_large_bodies": "1"}
            proxy = stack.enter_context(fake_proxy(backend.address, options=options))
        reply = https_request(
            proxy.port,
            proxy.ca_path,
            "POST",
            RESPONSES_URL,
            headers={**codex_headers(auth), "accept": "text/event-stream"},
            body=responses_request(),
            zstd=True,
        )

    assert reply.status == 200
    assert reply.headers["x-codex-primary-used-percent"] == "10.0"
    kinds = [e.event for e in reply.events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "codex.rate_limits" in kinds
    total = reply.finished - reply.started
    first = reply.events[0].time - reply.started
    assert total >= 5 * 0.3 * 0.9
    if streamed:
        assert first < total / 3
    else:
        assert first > total * 0.9
    assert backend.turns[0].content_encoding == "zstd"


def test_websocket_turns_through_proxy(backend: FakeCodexBackend, proxy: Mitmdump) -> None:
    backend.event_delay = 0.2
    auth = make_auth_json("acc-wsc")
    backend.register_auth_json(auth)
    with WsClient(proxy.port, proxy.ca_path, headers=codex_headers(auth)) as ws:
        assert ws.handshake_headers["x-codex-primary-used-percent"] == "0.0"
        prewarm = ws.turn({**responses_request(), "generate": False})
        turn = ws.turn(responses_request())
        backend.set_limited("acc-wsc")
        limited = ws.turn(responses_request())

    assert [m.data["type"] for m in prewarm] == [
        "response.created",
        "codex.rate_limits",
        "response.completed",
    ]
    assert turn[-1].data["type"] == "response.completed"
    assert turn[-1].time - turn[0].time >= 0.2 * (len(turn) - 1) * 0.9  # frames streamed
    (error,) = [m.data for m in limited]
    assert error["type"] == "error" and error["status_code"] == 429
    assert error["error"]["type"] == "usage_limit_reached"
    assert error["headers"]["x-codex-primary-used-percent"] == "100.0"


def test_refresh_rotation(backend: FakeCodexBackend, proxy: Mitmdump) -> None:
    auth = make_auth_json("acc-rt")
    backend.register_auth_json(auth)
    old_refresh = auth["tokens"]["refresh_token"]
    grant = {"grant_type": "refresh_token", "client_id": "app_x", "refresh_token": old_refresh}

    def post(body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        reply = https_request(proxy.port, proxy.ca_path, "POST", TOKEN_URL, body=body)
        return reply.status, reply.json()

    status, fresh = post(grant)
    assert status == 200
    assert fresh["refresh_token"] != old_refresh
    assert set(fresh) >= {"access_token", "refresh_token", "id_token"}
    status, reused = post(grant)  # rotation: the old refresh token is dead now
    assert (status, reused["error"]["code"]) == (401, "refresh_token_reused")
    status, unknown = post({**grant, "refresh_token": "rt_unknown"})
    assert (status, unknown["error"]["code"]) == (401, "invalid_grant")
    new_auth = {"tokens": {**auth["tokens"], "access_token": fresh["access_token"]}}
    check = https_request(
        proxy.port,
        proxy.ca_path,
        "GET",
        "https://chatgpt.com/backend-api/wham/accounts/check",
        headers=codex_headers(new_auth),
    )
    assert check.status == 200
    assert check.json()["accounts"][0]["id"] == "acc-rt"
    assert post({**grant, "refresh_token": fresh["refresh_token"]})[0] == 200
    assert [r.outcome for r in backend.refreshes] == ["ok", "reused", "invalid_grant", "ok"]


def test_previous_response_ids_belong_to_one_account(
    backend: FakeCodexBackend, proxy: Mitmdump
) -> None:
    """Like the real backend: a response id only continues on the account that created it."""
    first, other = make_auth_json("acc-own"), make_auth_json("acc-other")
    backend.register_auth_json(first)
    backend.register_auth_json(other)
    backend.set_limited("acc-own", after_turns=0)  # the prewarm works, the next turn not
    with WsClient(proxy.port, proxy.ca_path, headers=codex_headers(first)) as ws:
        prewarm = ws.turn({**responses_request(), "generate": False})
        response_id = prewarm[-1].data["response"]["id"]
        (limited,) = ws.turn({**responses_request(), "previous_response_id": response_id})
    assert limited.data["error"]["type"] == "usage_limit_reached"
    assert backend.response_owner(response_id) == "acc-own"
    with WsClient(proxy.port, proxy.ca_path, headers=codex_headers(other)) as ws:
        (refused,) = ws.turn({**responses_request(), "previous_response_id": response_id})
    assert refused.data["status_code"] == 400
    assert refused.data["error"]["code"] == "previous_response_not_found"
    reply = https_request(
        proxy.port,
        proxy.ca_path,
        "POST",
        RESPONSES_URL,
        headers={**codex_headers(other), "accept": "text/event-stream"},
        body={**responses_request(), "previous_response_id": response_id},
        zstd=True,
    )
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "previous_response_not_found"
    assert [t.outcome for t in backend.turns] == [
        "ok",
        "limited",
        "previous_response_not_found",
        "previous_response_not_found",
    ]
