"""Pooled tokens never leak: not in mitmdump's log (debug verbosity, full flow detail), not in
flow comments, not in flows saved with `-w`, not in a HAR export (`hardump`), not in CLI output
(`status --json` included) or error messages. Every pooled access, refresh and id token is
searched for as bytes, and so are the new tokens issued by refreshes during the run.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io as mitmio

from tests.e2e.harness import WsClient, https_request, responses_request
from tests.e2e.pool_env import PoolEnv, Spec, import_accounts
from tests.faults._backend import FaultyBackend, HttpFault
from tests.faults._support import (
    assert_no_crash,
    dashboard_status,
    env_for,
    proxy,
    run_cli,
    secrets_in,
)

pytestmark = pytest.mark.e2e

LOUD = {"termlog_verbosity": "debug", "flow_detail": "4"}
TOKEN_URL = "https://auth.openai.com/oauth/token"


def pooled_secrets(fake: FaultyBackend, auths: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for auth in auths.values():
        tokens = auth["tokens"]
        found += [tokens["access_token"], tokens["refresh_token"], tokens["id_token"]]
    for refresh in fake.refreshes:
        found += [t for t in (refresh.new_access_token, refresh.new_refresh_token) if t]
    return found


def comments(flows_file: Path) -> list[str]:
    with flows_file.open("rb") as handle:
        return [f.comment for f in mitmio.FlowReader(handle).stream() if f.comment]


def cli_outputs(state: Path, tmp_path: Path, auths: dict[str, dict[str, Any]]) -> str:
    """What every CLI command prints, good and bad, as one text."""
    auth_path = tmp_path / "again.json"
    auth_path.write_text(json.dumps(auths["a"]))
    broken = tmp_path / "broken.json"
    text = json.dumps(auths["b"])
    broken.write_text(text[: len(text) // 2])
    runs = [
        ("status",),
        ("status", "--json"),
        ("import", str(auth_path), "--name", "a"),  # exists already
        ("import", str(auth_path), "--name", "other"),  # the same login under a new name
        ("import", str(auth_path), "--name", "a", "--replace"),
        ("import", str(broken), "--name", "c"),  # cut in the middle of a token
        ("pause", "a"),
        ("resume", "a"),
        ("set", "a", "--priority", "2"),
        ("set", "a", "--max-primary", "nan"),
        ("rename", "a", "a2"),
        ("rename", "a2", "a"),
        ("pause", "nobody"),
        ("client-auth", str(tmp_path / "client.json")),
        ("status", "--json"),
    ]
    out = []
    for args in runs:
        done = run_cli(state, *args)
        out += [done.stdout, done.stderr]
    return "\n".join(out)


@pytest.fixture
def loud_proxy_run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A proxy with every output turned up, through refreshes, failovers, a WebSocket, the
    accounts check, errors, the dashboard and a placeholder refresh; stopped cleanly."""
    state = tmp_path / "router-state.toml"
    flows, har = tmp_path / "flows.mitm", tmp_path / "flows.har"
    soon = int(time.time()) + 60
    with FaultyBackend() as fake:
        specs = [Spec("a", primary=50, exp=soon), Spec("b", primary=20), Spec("c")]
        auths = import_accounts(fake, state, specs)
        running = proxy(
            fake,
            state,
            {**LOUD, "hardump": str(har)},
            confdir=tmp_path / "conf",
            extra_args=["-w", str(flows)],
        ).start()
        try:
            env = env_for(fake, running, state, auths)
            assert env.turn().status == 200  # a: refreshed first (its token expires soon)
            fake.set_limited("acct-a", 3600)
            assert env.turn().status == 200  # a: 429, failover to b
            fake.revoke_token(env.token("b"))
            assert env.turn().status == 200  # b: 401, refreshed, retried
            fake.inject_error(502, times=1, transport="http")
            env.turn()
            with WsClient(running.port, running.ca_path, headers=env.headers()) as ws:
                ws.turn(responses_request())
            base = "https://chatgpt.com/backend-api"
            assert env.get(f"{base}/wham/accounts/check").status == 200
            env.get(f"{base}/codex/models?client_version=0.169.0")
            dashboard_status(running)
            refresh = {"grant_type": "refresh_token", **{"refresh_token": ""}}
            refresh["refresh_token"] = env.client["tokens"]["refresh_token"]
            https_request(running.port, running.ca_path, "POST", TOKEN_URL, body=refresh)
            assert len(fake.refreshes) >= 2
        finally:
            running.stop()
        assert_no_crash(running.output)
        yield {
            "fake": fake,
            "auths": auths,
            "state": state,
            "log": running.output,
            "flows": flows,
            "har": har,
            "secrets": pooled_secrets(fake, auths),
        }


def test_no_token_in_the_log_flows_har_or_comments(loud_proxy_run: dict[str, Any]) -> None:
    run = loud_proxy_run
    secrets = run["secrets"]
    assert secrets_in(run["log"], secrets) == [], "mitmdump log"
    # The routed requests are in both files, with the header masked (not merely missing).
    assert "Bearer …".encode() in run["flows"].read_bytes()
    assert "Bearer \\u2026" in run["har"].read_text() or "Bearer …" in run["har"].read_text()
    assert secrets_in(run["flows"].read_bytes(), secrets) == [], "-w flow file"
    assert secrets_in(run["har"].read_bytes(), secrets) == [], "HAR export"
    assert secrets_in("\n".join(comments(run["flows"])), secrets) == [], "flow comments"


def test_no_token_in_cli_output_or_errors(loud_proxy_run: dict[str, Any], tmp_path: Path) -> None:
    run = loud_proxy_run
    text = cli_outputs(run["state"], tmp_path, run["auths"])
    assert "error:" in text  # the bad commands did fail, with messages to search
    assert secrets_in(text, run["secrets"]) == []


@pytest.mark.parametrize("in_flight", ["websocket_open", "answer_streaming", "answer_not_started"])
def test_no_token_in_flows_still_open_when_the_proxy_stops(tmp_path: Path, in_flight: str) -> None:
    """mitmproxy's `-w` also writes the flows still in flight when it stops (save.done)."""
    state = tmp_path / "router-state.toml"
    flows = tmp_path / "flows.mitm"
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a")])
        running = proxy(
            fake, state, LOUD, confdir=tmp_path / "conf", extra_args=["-w", str(flows)]
        ).start()
        env: PoolEnv = env_for(fake, running, state, auths)
        ws = WsClient(running.port, running.ca_path, headers=env.headers())
        hanging: threading.Thread | None = None
        try:
            if in_flight == "websocket_open":
                ws.connect()
                ws.turn(responses_request())  # the socket stays open
            else:
                head = None if in_flight == "answer_streaming" else b""
                headers = [("content-type", "application/json"), ("content-length", "10")]
                fake.inject_http(HttpFault(200, headers, [b"{"], hang=30, head=head))
                hanging = threading.Thread(target=_turn_quietly, args=(env,), daemon=True)
                hanging.start()
                assert fake.wait_for(lambda f: f.faults_played, 10)
            time.sleep(0.3)
        finally:
            running.stop()
            ws.close()
        if hanging is not None:
            hanging.join(10)
        secrets = pooled_secrets(fake, auths)
        assert secrets_in(running.output, secrets) == [], "mitmdump log"
        assert secrets_in(flows.read_bytes(), secrets) == [], "-w flow file"


def _turn_quietly(env: PoolEnv) -> None:
    with contextlib.suppress(OSError, IndexError, ValueError):  # the proxy went away
        env.turn(session="in-flight")
