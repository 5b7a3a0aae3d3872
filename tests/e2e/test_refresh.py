"""End to end: pooled token refresh, persisted before use; placeholder client logins."""

from __future__ import annotations

import concurrent.futures
import json
import time
import tomllib
from pathlib import Path

import pytest

from addon import placeholder
from addon.refresh import WAIT_FOR_ANSWER_SECONDS
from tests.e2e.harness import https_request
from tests.e2e.pool_env import Spec, cli, pool_env

pytestmark = pytest.mark.e2e

TOKEN_URL = "https://auth.openai.com/oauth/token"


def stored_credentials(state: Path, name: str) -> dict[str, str]:
    data = tomllib.loads(state.read_text())
    [account] = [a for a in data["accounts"] if a["name"] == name]
    return account["credentials"]


def test_an_expiring_token_is_refreshed_before_use_and_persisted(tmp_path: Path) -> None:
    soon = int(time.time()) + 60  # inside the refresh margin
    with pool_env(tmp_path, [Spec("a", exp=soon)]) as env:
        old_refresh = env.auths["a"]["tokens"]["refresh_token"]
        assert env.turn().status == 200
        [refresh] = env.fake.refreshes
        assert refresh.refresh_token == old_refresh and refresh.outcome == "ok"
        [seen] = env.fake.requests_for("/backend-api/codex/responses")
        assert seen.authorization == f"Bearer {refresh.new_access_token}"
        stored = stored_credentials(env.state, "a")
        assert stored["refresh_token"] == refresh.new_refresh_token
        assert stored["access_token"] == refresh.new_access_token
        state = env.state
        auths = env.auths
    # A restart uses the rotated pair: no second refresh, no dead refresh token.
    with pool_env(tmp_path / "again", [], {"router_state": str(state)}) as env2:
        env2.fake.register_auth_json(auths["a"])
        env2.fake.add_token(refresh.new_access_token or "", "acct-a")
        env2.auths = auths
        assert env2.turn().status == 200
        assert env2.fake.refreshes == []
        [seen] = env2.fake.requests_for("/backend-api/codex/responses")
        assert seen.authorization == f"Bearer {refresh.new_access_token}"


def test_concurrent_requests_share_one_refresh(tmp_path: Path) -> None:
    soon = int(time.time()) + 60
    with pool_env(tmp_path, [Spec("a", exp=soon)]) as env:
        env.fake.oauth_delay = 0.5  # every request arrives while the refresh is in flight
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda n: env.turn(session=f"t{n}"), range(20)))
        assert [r.status for r in results] == [200] * 20
        assert len(env.fake.refreshes) == 1


def test_a_token_with_minutes_left_serves_the_turn_while_it_is_refreshed(
    tmp_path: Path,
) -> None:
    minutes = int(time.time()) + 200  # inside the refresh margin, outside its last minute
    with pool_env(tmp_path, [Spec("a", exp=minutes)]) as env:
        env.fake.oauth_delay = 3.0
        assert env.turn().status == 200
        assert env.fake.refreshes == []  # the turn did not wait for the refresh's answer
        [seen] = env.fake.requests_for("/backend-api/codex/responses")
        assert seen.authorization == f"Bearer {env.token('a')}"
        deadline = time.monotonic() + 15
        while not env.fake.refreshes or stored_credentials(env.state, "a")["access_token"] != (
            env.fake.refreshes[0].new_access_token
        ):
            assert time.monotonic() < deadline, "the new pair never reached the file"
            time.sleep(0.05)
        assert env.turn(session="next").status == 200
        latest = env.fake.requests_for("/backend-api/codex/responses")[-1]
        assert latest.authorization == f"Bearer {env.fake.refreshes[0].new_access_token}"
        assert env.fake.oauth_arrivals == 1


def test_a_token_endpoint_answering_late_has_its_answer_stored(tmp_path: Path) -> None:
    """It rotates the refresh token and answers after the turn stopped waiting (the turn went
    to b): that answer holds the only live refresh token, and must reach the file."""
    expired = int(time.time()) - 10
    with pool_env(tmp_path, [Spec("a", primary=50, exp=expired), Spec("b")]) as env:
        env.fake.oauth_delay = WAIT_FOR_ANSWER_SECONDS + 3
        assert env.turn().status == 200
        [seen] = env.fake.requests_for("/backend-api/codex/responses")
        assert seen.account_id == "acct-b"
        deadline = time.monotonic() + 20
        while not env.fake.refreshes or stored_credentials(env.state, "a")["refresh_token"] != (
            env.fake.refreshes[0].new_refresh_token
        ):
            assert time.monotonic() < deadline, "the late answer never reached the file"
            time.sleep(0.1)
        assert [r.outcome for r in env.fake.refreshes] == ["ok"]


def test_a_slow_token_endpoint_does_not_hold_up_the_cli(tmp_path: Path) -> None:
    soon = int(time.time()) + 60
    with pool_env(tmp_path, [Spec("a", exp=soon), Spec("b")]) as env:
        env.fake.oauth_delay = 6.0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            turn = pool.submit(env.turn)
            deadline = time.monotonic() + 10
            while not env.fake.oauth_arrivals:
                assert time.monotonic() < deadline and not turn.done(), "no refresh began"
                time.sleep(0.02)
            done = cli(env.state, "pause", "b")
            # The CLI wrote the file while the refresh still waited for its answer.
            assert done.returncode == 0, done.stderr
            assert not turn.done()
            assert turn.result().status == 200
        assert env.status(lambda r: r["b"]["status"] == "paused")["b"]["status"] == "paused"
        assert stored_credentials(env.state, "a")["refresh_token"] == (
            env.fake.refreshes[0].new_refresh_token
        )


def test_a_reused_refresh_token_marks_the_account_for_re_login(tmp_path: Path) -> None:
    expired = int(time.time()) - 10
    with pool_env(tmp_path, [Spec("a", primary=50, exp=expired), Spec("b")]) as env:
        # Someone else (a client sharing the login) already used a's refresh token.
        stolen = env.auths["a"]["tokens"]["refresh_token"]
        body = {"grant_type": "refresh_token", "refresh_token": stolen}
        assert env.fake_refresh(body) == 200
        assert env.turn().status == 200
        assert [r.account_id for r in env.fake.requests_for("/backend-api/codex/")] == ["acct-b"]
        rows = env.status(lambda r: r["a"]["status"] == "reauth_required")
        assert rows["a"]["status"] == "reauth_required"
        assert "refresh_token_reused" in rows["a"]["reason"]


@pytest.mark.parametrize("left", [120, 40], ids=["in-the-background", "in-its-last-minute"])
def test_a_transient_refresh_failure_keeps_the_account(tmp_path: Path, left: int) -> None:
    soon = int(time.time()) + left  # inside the margin, not yet expired
    with pool_env(tmp_path, [Spec("a", exp=soon)]) as env:
        env.fake.oauth_unavailable = True
        assert env.turn().status == 200
        [seen] = env.fake.requests_for("/backend-api/codex/responses")
        assert seen.authorization == f"Bearer {env.token('a')}"
        assert env.status()["a"]["status"] == "active"


def test_a_401_is_cured_by_one_refresh_and_a_retry_on_the_same_account(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a", primary=50), Spec("b")]) as env:
        env.fake.revoke_token(env.token("a"))  # the upstream invalidated the access token
        result = env.turn()
        assert result.status == 200
        assert len(env.fake.refreshes) == 1
        seen = [(r.status, r.authorization) for r in env.fake.requests_for("/backend-api/codex/")]
        assert seen[0] == (401, f"Bearer {env.token('a')}")
        assert seen[1] == (200, f"Bearer {env.fake.refreshes[0].new_access_token}")


def test_a_placeholder_refresh_is_answered_by_the_proxy(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a")]) as env:
        refresh = env.client["tokens"]["refresh_token"]
        body = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "x"}
        result = https_request(env.proxy.port, env.proxy.ca_path, "POST", TOKEN_URL, body=body)
        assert result.status == 200
        reply = result.json()
        assert placeholder.is_placeholder(reply["refresh_token"])
        assert reply["refresh_token"] != refresh
        assert env.fake.refreshes == []
        # The renewed placeholder keeps the client's synthetic account id.
        assert env.client["tokens"]["account_id"] in reply["refresh_token"]


def test_another_clients_real_refresh_passes_through(tmp_path: Path) -> None:
    with pool_env(tmp_path, [Spec("a")]) as env:
        body = {"grant_type": "refresh_token", "refresh_token": "rt_someone_else"}
        result = https_request(
            env.proxy.port,
            env.proxy.ca_path,
            "POST",
            TOKEN_URL,
            body=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert result.status == 401
        [seen] = env.fake.refreshes
        assert seen.refresh_token == "rt_someone_else"
