"""End to end through a real mitmdump: routing, auth rewrite, usage learning, streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import WsClient, fake_proxy, https_request, responses_request
from tests.e2e.pool_env import READY, ROUTER, Spec, pool_env
from tests.fakes.codex_backend import FakeCodexBackend
from tests.fakes.jwt import make_access_token

pytestmark = pytest.mark.e2e

STREAM_ALL = "tests/e2e/stream_all.py"

THREE = [Spec("a", primary=30), Spec("b", primary=5), Spec("c", primary=0)]


def test_turn_carries_the_fill_first_accounts_credentials(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        result = env.turn()
        assert result.status == 200
        assert result.events[-1].json["type"] == "response.completed"
        [seen] = env.fake.requests_for("/backend-api/codex/responses")
        # fill_first: the fullest 5 h window wins (A=30, B=5, C=0 -> A).
        assert seen.authorization == f"Bearer {env.token('a')}"
        assert seen.chatgpt_account_id == "acct-a"
        client_token = env.client["tokens"]["access_token"]
        assert all(client_token not in (r.authorization or "") for r in env.fake.requests)


def test_accounts_check_reply_names_the_clients_own_account(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        result = env.get("https://chatgpt.com/backend-api/wham/accounts/check")
        assert result.status == 200
        body = result.json()
        client_id = env.client["tokens"]["account_id"]
        assert client_id in [a["id"] for a in body["accounts"]]
        assert "acct-a" not in result.body.decode()
        [seen] = env.fake.requests_for("/backend-api/wham/accounts/check")
        assert seen.chatgpt_account_id == "acct-a"  # the upstream saw the pooled account


def test_usage_from_headers_and_events_reaches_status(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        assert env.turn().status == 200
        upstream = env.fake.account("acct-a")
        rows = env.status(
            lambda r: r["a"]["primary_used_percent"] == pytest.approx(upstream.primary_used)
        )
        assert rows["a"]["primary_used_percent"] == pytest.approx(upstream.primary_used)
        assert rows["a"]["secondary_used_percent"] == pytest.approx(upstream.secondary_used)
        assert isinstance(rows["a"]["primary_reset_at"], int)
        assert rows["a"]["requests"] == 1
        assert rows["b"]["requests"] == 0


def test_sse_reaches_the_client_as_it_streams(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE, fake=FakeCodexBackend(event_delay=0.3)) as env:
        result = env.turn()
        assert result.status == 200
        events = result.events
        assert len(events) >= 5
        span = events[-1].time - events[0].time
        # Buffering would deliver every event at once, after the whole stream.
        assert span > 0.3 * (len(events) - 2)


def test_mitmproxys_streaming_line_is_left_out_only_for_routed_turns(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE, scripts=[STREAM_ALL]) as env:
        assert env.turn().status == 200
        browser = {"authorization": "Bearer browser-own-session", "user-agent": "Firefox"}
        env.get("https://chatgpt.com/backend-api/conversations", headers=browser)
        # The web app's answer, streamed by stream_all.py on its own connection, is logged...
        env.proxy.wait_for_line(r"Streaming response from chatgpt\.com")
        # ...the turn before it, streamed by the router, is not.
        lines = [line for line in env.proxy.lines if "Streaming response from" in line]
        assert len(lines) == 1, lines
        assert env.fake.requests_for("/backend-api/conversations")


def test_the_websocket_handshake_is_rewritten_and_its_usage_learnt(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        with WsClient(env.proxy.port, env.proxy.ca_path, headers=env.headers()) as ws:
            frames = ws.turn(responses_request())
        assert frames[-1].data["type"] == "response.completed"
        [handshake] = env.fake.requests_for("/backend-api/codex/responses", transport="ws")
        assert handshake.authorization == f"Bearer {env.token('a')}"
        upstream = env.fake.account("acct-a")
        rows = env.status(
            lambda r: r["a"]["primary_used_percent"] == pytest.approx(upstream.primary_used)
        )
        assert rows["a"]["primary_used_percent"] == pytest.approx(upstream.primary_used)


def test_web_app_traffic_on_the_same_host_is_left_alone(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        browser = {"authorization": "Bearer browser-own-session", "user-agent": "Firefox"}
        result = env.get("https://chatgpt.com/backend-api/conversations", headers=browser)
        assert result.status in (200, 401, 404)
        [seen] = env.fake.requests_for("/backend-api/conversations")
        assert seen.authorization == "Bearer browser-own-session"
        assert env.status()["a"]["requests"] == 0


def test_codex_originator_routes_other_backend_calls(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        env.get("https://chatgpt.com/backend-api/plugins/list")
        [seen] = env.fake.requests_for("/backend-api/plugins/list")
        assert seen.authorization == f"Bearer {env.token('a')}"


def test_without_accounts_the_proxy_is_transparent(tmp_path: Path) -> None:
    state = tmp_path / "empty.toml"
    with FakeCodexBackend() as fake:
        auth = fake_account(fake)
        with fake_proxy(
            fake.address, [ROUTER], {"router_state": str(state)}, ready_pattern=READY
        ) as proxy:
            assert "passing all traffic through untouched" in proxy.output
            headers = {"authorization": f"Bearer {auth}", "originator": "codex_exec"}
            result = https_request(
                proxy.port,
                proxy.ca_path,
                "POST",
                "https://chatgpt.com/backend-api/codex/responses",
                headers={**headers, "accept": "text/event-stream"},
                body=responses_request(),
            )
            assert result.status == 200
            [seen] = fake.requests_for("/backend-api/codex/responses")
            assert seen.authorization == f"Bearer {auth}"
        assert not state.exists()


def fake_account(fake: FakeCodexBackend) -> str:
    token = make_access_token("acct-client")
    fake.add_account(token, "acct-client")
    return token


def test_all_paused_is_answered_locally_without_the_clients_credentials(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE[:2]) as env:
        for name in ("a", "b"):
            assert env_cli(env, "pause", name).returncode == 0
        wait_for_status(env, 400)  # the proxy has taken in the CLI's change
        env.fake.clear_log()
        for _ in range(3):
            result = env.turn()
            assert result.status == 400
            assert result.body.startswith(b"quota-router: every pooled account is paused")
        assert env.fake.requests == []


def env_cli(env, *args: str):  # type: ignore[no-untyped-def]
    from tests.e2e.pool_env import cli

    return cli(env.state, *args)


def wait_for_status(env, status: int, tries: int = 30):  # type: ignore[no-untyped-def]
    """The proxy notices CLI edits within its save interval: retry until it answers."""
    import time

    for _ in range(tries):
        result = env.turn()
        if result.status == status:
            return result
        time.sleep(0.2)
    raise AssertionError(f"never answered {status}; last {result.status} {result.body[:200]!r}")


def test_cli_pause_applies_to_the_running_proxy(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE) as env:
        assert env.turn().status == 200
        assert env_cli(env, "pause", "a").returncode == 0
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            env.fake.clear_log()
            assert env.turn().status == 200
            [seen] = env.fake.requests_for("/backend-api/codex/responses")
            if seen.chatgpt_account_id != "acct-a":
                break
            time.sleep(0.2)
        assert seen.chatgpt_account_id == "acct-b"  # the next-highest
        assert env.status()["a"]["status"] == "paused"


def test_bad_strategy_option_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    options = {"router_state": str(tmp_path / "s.toml"), "router_strategy": "round_robin"}
    proxy = fake_proxy("127.0.0.1:9", [ROUTER], options, ready_pattern=READY)
    with pytest.raises(TimeoutError):
        proxy.start()
    assert "quota-router cannot start: router_strategy: unknown strategy 'round_robin'" in (
        proxy.output
    )
    assert "Traceback" not in proxy.output
    assert proxy.proc is not None and proxy.proc.returncode == 1


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"router_probe_interval": "abc"}, "router_probe_interval: 'abc' is not a whole number"),
        ({"router_strateg": "capacity_weighted"}, "unknown option router_strateg (did you mean"),
        ("router_probe_interval: abc\n", "router_probe_interval: 'abc' is not a whole number"),
    ],
    ids=["set-unconvertible", "set-misspelt", "config-yaml-wrong-type"],
)
def test_an_option_value_mitmproxy_would_drop_stops_start_up(
    tmp_path: Path, given: dict[str, str] | str, message: str
) -> None:
    # Without the router's own check the first and last start a proxy without the router
    # (every request then passes with the client's own login); the second ignores the option.
    options = {"router_state": str(tmp_path / "s.toml")}
    confdir = tmp_path / "conf"
    confdir.mkdir()
    if isinstance(given, str):
        (confdir / "config.yaml").write_text(given)
    else:
        options.update(given)
    proxy = fake_proxy("127.0.0.1:9", [ROUTER], options, ready_pattern=READY, confdir=confdir)
    with pytest.raises(TimeoutError):
        proxy.start()
    assert f"quota-router cannot start: {message}" in proxy.output
    assert "Traceback" not in proxy.output
    assert proxy.proc is not None and proxy.proc.returncode == 1


def test_corrupt_state_file_stops_start_up_and_is_left_untouched(tmp_path: Path) -> None:
    state = tmp_path / "router-state.toml"
    original = b'version = 1\n\n[[accounts]]\nname = "a"\nplan = "plus"\ncredentials = 7\n'
    state.write_bytes(original)
    proxy = Mitmdump_for(state)
    with pytest.raises(TimeoutError) as failure:
        proxy.start()
    message = str(failure.value)
    assert f"quota-router cannot start: router_state: {state}: invalid state" in message
    assert "accounts[0].credentials (account 'a') (in the table at line 3)" in message
    assert "Traceback" not in message
    assert state.read_bytes() == original
    assert proxy.proc is not None and proxy.proc.returncode not in (0, None)


def Mitmdump_for(state: Path):  # type: ignore[no-untyped-def]
    return fake_proxy("127.0.0.1:9", [ROUTER], {"router_state": str(state)}, ready_pattern=READY)


def test_state_file_is_private(tmp_path: Path) -> None:
    with pool_env(tmp_path, THREE[:1]) as env:
        env.turn()
        env.status(lambda r: r["a"]["requests"] == 1)
        assert env.state.stat().st_mode & 0o777 == 0o600
        json.loads(json.dumps(env.status()))  # still parses after the proxy's writes
