"""End to end: failover before the first byte, exhaustion, recovery, conversation affinity."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    HttpResult,
    WsClient,
    WsHandshakeError,
    https_request,
    responses_request,
)
from tests.e2e.pool_env import PoolEnv, Spec, cli, pool_env

pytestmark = pytest.mark.e2e

RESPONSES = "/backend-api/codex/responses"


def served_by(env: PoolEnv) -> list[tuple[str | None, int | None]]:
    """(account, status) of every model request the upstream received, in order."""
    return [(r.account_id, r.status) for r in env.fake.requests_for(RESPONSES)]


def bound_turn(env: PoolEnv, session: str) -> HttpResult:
    """A turn that refers to its account's state (a previous response of that account)."""
    body = responses_request() | {"previous_response_id": "resp_123"}
    headers = env.headers(**{"session-id": session, "accept": "text/event-stream"})
    return https_request(
        env.proxy.port,
        env.proxy.ca_path,
        "POST",
        "https://chatgpt.com" + RESPONSES,
        headers=headers,
        body=body,
        zstd=True,
    )


def side_calls_go_to_b(env: PoolEnv, session: str) -> bool:
    """Send the conversation's model-list call until b serves it: the proxy has taken in the
    pause of a (it reads the CLI's change at its next save). True once it does."""
    models = "/backend-api/codex/models"
    headers = env.headers(**{"session-id": session})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        env.fake.clear_log()
        result = env.get(f"https://chatgpt.com{models}?client_version=0.171.0", headers)
        assert result.status == 200
        if [r.account_id for r in env.fake.requests_for(models)] == ["acct-b"]:
            return True
        time.sleep(0.2)
    return False


def test_a_usage_limit_429_is_retried_on_the_next_account(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        env.fake.set_limited("acct-a", 3600)
        result = env.turn()
        assert result.status == 200
        assert result.events[-1].json["type"] == "response.completed"
        assert served_by(env) == [("acct-a", 429), ("acct-b", 200)]
        env.proxy.wait_for_line(r"failover a → b after 429 usage_limit_reached", 5)
        rows = env.status(lambda r: r["a"]["status"] == "rate_limited")
        assert rows["a"]["status"] == "rate_limited"
        # The block is remembered: the next turn goes straight to b.
        env.fake.clear_log()
        assert env.turn().status == 200
        assert served_by(env) == [("acct-b", 200)]


def test_a_server_error_is_retried_and_backs_the_account_off(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        env.fake.inject_error(502, times=1, transport="http")
        result = env.turn()
        assert result.status == 200
        assert served_by(env) == [("acct-a", 502), ("acct-b", 200)]
        rows = env.status(lambda r: r["a"]["status"] == "backoff")
        assert rows["a"]["status"] == "backoff"


def test_a_request_error_is_never_retried(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        body = {"error": {"type": "invalid_request_error", "message": "bad input"}}
        env.fake.inject_error(400, body, times=1, transport="http")
        result = env.turn()
        assert result.status == 400
        assert served_by(env) == [("acct-a", 400)]


def test_attempts_are_bounded(tmp_path: Path) -> None:
    specs = [Spec(n, primary=p) for n, p in (("a", 40), ("b", 30), ("c", 20), ("d", 10))]
    with pool_env(tmp_path, specs) as env:
        env.fake.inject_error(500, times=50, transport="http")
        result = env.turn()
        assert result.status == 500
        assert len(served_by(env)) == 3


def test_every_account_limited_is_answered_locally_without_hammering(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        env.fake.set_limited("acct-a", 3600)
        env.fake.set_limited("acct-b", 1800)
        earliest = int(time.time()) + 1800
        answers = [env.turn() for _ in range(10)]
        assert all(a.status == 429 for a in answers)
        for answer in answers:
            error = answer.json()["error"]
            assert error["type"] == "usage_limit_reached"
            assert abs(error["resets_at"] - earliest) <= 2
        # Two upstream attempts taught the proxy; the rest were answered locally.
        assert len(served_by(env)) == 2


def test_an_early_upstream_reset_is_noticed_by_a_probe(tmp_path: Path) -> None:
    options = {"router_probe_interval": "1"}
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)], options) as env:
        env.fake.set_limited("acct-a", 3600)
        env.fake.set_limited("acct-b", 7200)
        assert env.turn().status == 429
        env.fake.set_limited("acct-a", None)  # the upstream resets early
        deadline = time.monotonic() + 10
        while (result := env.turn()).status != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert result.status == 200
        rows = env.status(lambda r: r["a"]["status"] == "active")
        assert rows["a"]["status"] == "active"
        assert rows["b"]["status"] == "rate_limited"


def test_a_conversation_stays_on_one_account_under_capacity_weighted(tmp_path: Path) -> None:
    specs = [Spec("a"), Spec("b"), Spec("c")]
    with pool_env(tmp_path, specs, {"router_strategy": "capacity_weighted"}) as env:
        for _ in range(8):
            assert env.turn(session="thread-1").status == 200
        first = {account for account, _ in served_by(env)}
        assert len(first) == 1
        env.fake.clear_log()
        for n in range(12):
            assert env.turn(session=f"thread-{n + 2}").status == 200
        # Each new conversation is its own weighted draw (all three equal here).
        assert len({account for account, _ in served_by(env)}) > 1


def test_affinity_survives_a_restart(tmp_path: Path) -> None:
    specs = [Spec("a", primary=10), Spec("b", primary=5)]
    with pool_env(tmp_path, specs) as env:
        assert env.turn(session="thread-9").status == 200
        assert served_by(env) == [("acct-a", 200)]
        env.status(lambda r: r["a"]["requests"] == 1)
        state = env.state
    # b now comes first (a lower priority number), so a new conversation goes to b; the
    # conversation that started on a stays there.
    assert cli(state, "set", "a", "--priority", "5").returncode == 0
    with pool_env(tmp_path / "second", [], {"router_state": str(state)}) as env2:
        env2.fake.register_auth_json(env.auths["a"])
        env2.fake.register_auth_json(env.auths["b"])
        env2.auths = env.auths
        assert env2.turn(session="thread-other").status == 200
        assert env2.turn(session="thread-9").status == 200
        seen = [r.account_id for r in env2.fake.requests_for(RESPONSES)]
        assert seen == ["acct-b", "acct-a"]


def test_a_conversation_moves_when_its_account_leaves_and_says_so(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        assert env.turn(session="thread-5").status == 200
        assert cli(env.state, "pause", "a").returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            env.fake.clear_log()
            assert env.turn(session="thread-5").status == 200
            if served_by(env) == [("acct-b", 200)]:
                break
            time.sleep(0.2)
        assert served_by(env) == [("acct-b", 200)]
        env.proxy.wait_for_line(r"conversation moved from a: paused", 5)


def test_account_bound_requests_are_not_sent_to_another_account(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        assert env.turn(session="thread-7").status == 200
        env.fake.set_limited("acct-a", 600)
        assert env.turn(session="thread-other").status == 200  # a is now known limited
        env.fake.clear_log()
        result = bound_turn(env, "thread-7")
        # Its account is limited: not a turn on b that would fail with
        # previous_response_not_found, and not "every account is limited" either (b is not):
        # a 400 Codex shows at once, saying which account, until when, and what to do.
        assert result.status == 400
        assert b"belongs to account 'a', which cannot serve now (rate limited until" in (
            result.body
        )
        assert b"start a new conversation" in result.body
        assert served_by(env) == []


def test_calls_between_turns_leave_a_bound_conversation_on_its_account(tmp_path: Path) -> None:
    """Codex sends the models list, accounts/check and more with the conversation's id before
    each turn: served elsewhere while its account is paused, they must not take the
    conversation along, or its next turn (which refers to the paused account's state) would
    go to an account that cannot use it."""
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        assert env.turn(session="thread-7").status == 200
        assert cli(env.state, "pause", "a").returncode == 0
        assert side_calls_go_to_b(env, "thread-7")
        result = bound_turn(env, "thread-7")
        assert result.status == 400
        assert b"belongs to account 'a', which cannot serve now (paused)" in result.body
        assert served_by(env) == []


@pytest.mark.parametrize("upstream_websockets", [False, True], ids=["upstream-426", "upstream-ws"])
def test_a_websocket_handshake_of_a_conversation_whose_account_cannot_serve_goes_to_http(
    tmp_path: Path, upstream_websockets: bool
) -> None:
    """A handshake carries no turn: whether the turn refers to its paused account's state
    (encrypted reasoning, as real Codex models send) shows only on the socket, too late to
    choose. Sent to HTTP (426), the turn's body decides; the conversation stays put."""
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b", primary=10)]) as env:
        assert env.turn(session="thread-7").status == 200
        assert cli(env.state, "pause", "a").returncode == 0
        assert side_calls_go_to_b(env, "thread-7")
        env.fake.websocket_enabled = upstream_websockets
        env.fake.clear_log()
        socket = WsClient(
            env.proxy.port, env.proxy.ca_path, headers=env.headers(**{"session-id": "thread-7"})
        )
        with pytest.raises(WsHandshakeError) as refused:
            socket.connect()
        socket.close()
        assert refused.value.status == 426
        result = bound_turn(env, "thread-7")
        assert result.status == 400
        assert b"belongs to account 'a', which cannot serve now (paused)" in result.body
        assert served_by(env) == []
        assert not any("conversation moved" in line for line in env.proxy.lines)


def test_a_failover_is_visible_in_the_flows(tmp_path: Path) -> None:
    from mitmproxy import io

    flows_file = tmp_path / "flows.mitm"
    specs = [Spec("a", primary=50), Spec("b", primary=10)]
    with pool_env(tmp_path, specs, extra_args=["-w", str(flows_file)]) as env:
        env.fake.set_limited("acct-a", 3600)
        assert env.turn().status == 200
    with flows_file.open("rb") as handle:
        flows = [f for f in io.FlowReader(handle).stream() if f.request.path == RESPONSES]
    note = "failover a → b after 429 usage_limit_reached"
    # The client's flow got b's answer; the retry shows as its own marked flow.
    original = [f for f in flows if not f.is_replay]
    retries = [f for f in flows if f.is_replay]
    assert len(original) == 1 and len(retries) == 1
    assert original[0].marked and note in original[0].comment
    assert original[0].response is not None and original[0].response.status_code == 200
    assert retries[0].marked and note in retries[0].comment
