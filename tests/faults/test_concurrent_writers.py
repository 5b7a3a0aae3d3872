"""Two proxies on one state file, and the CLI at the same time: nothing is lost.

Every change is counted and must be in the file once both proxies have stopped: accounts added
and removed, credential rotations, pauses and resumes, settings, the usage each proxy learnt,
and the request counters (their sum is the number of requests both proxies routed).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from addon import cli
from tests.e2e.harness import Mitmdump, WsClient, responses_request
from tests.e2e.pool_env import PoolEnv, Spec, import_accounts
from tests.fakes.jwt import make_auth_json
from tests.faults._backend import FaultyBackend
from tests.faults._support import assert_no_crash, env_for, proxy, read_state, run_cli

pytestmark = pytest.mark.e2e

RESPONSES = "/backend-api/codex/responses"
PHASES = 3
PAUSE = 0.03  # between one client's turns: leaves CPU for the CLI on a small machine


@dataclass
class Expected:
    """What the file must hold at the end, as the CLI commands and the phases set it."""

    names: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    status: dict[str, str] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)
    refresh_token: dict[str, str] = field(default_factory=dict)
    commands: int = 0


def usage_for(phase: int, index: int) -> float:
    return float(10 + 7 * phase + index)  # distinct per account and phase, never near a cap


def cli_ok(state: Path, *args: str, separate_process: bool = False) -> str:
    """The CLI, as its own process or (much faster on a loaded machine) in this one: each
    command opens the file afresh and takes the same lock, so both race the proxies alike."""
    if separate_process:
        done = run_cli(state, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return done.stdout
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--state", str(state), *args])
    assert code == 0, f"{args}: {err.getvalue()}"
    return out.getvalue()


def test_two_proxies_and_the_cli_at_once_lose_no_change_and_no_request(tmp_path: Path) -> None:
    state = tmp_path / "router-state.toml"
    with FaultyBackend(usage_step=(0.0, 0.0)) as fake:
        base = ["a", "b", "c"]
        auths = import_accounts(fake, state, [Spec(n) for n in base])
        index = {name: i for i, name in enumerate(base)}
        account_ids = {name: f"acct-{name}" for name in base}
        expected = Expected(names=set(base))
        for name in base:
            expected.status[name] = "active"
            expected.priority[name] = 0
            expected.refresh_token[name] = auths[name]["tokens"]["refresh_token"]
        options = {"router_strategy": "capacity_weighted"}
        conf = tmp_path / "conf"
        conf.mkdir()
        first = proxy(fake, state, options, confdir=conf).start()
        second = proxy(fake, state, options, confdir=conf).start()
        proxies: list[Mitmdump] = [first, second]
        envs = [env_for(fake, p, state, auths) for p in proxies]
        ok = Counter[str]()
        ok_lock = threading.Lock()
        marks: list[float] = []  # when each phase's usage values took effect upstream
        try:
            for phase in range(PHASES):
                for name, i in index.items():
                    if name not in expected.removed:
                        fake.set_usage(account_ids[name], usage_for(phase, i), usage_for(phase, i))
                marks.append(time.time())
                done = threading.Event()
                clients = [
                    threading.Thread(target=_turns, args=(env, done, ok, ok_lock, ws), daemon=True)
                    for env in envs
                    for ws in (False, True)
                ]
                for client in clients:
                    client.start()
                try:
                    _cli_phase(phase, fake, state, expected, index, account_ids)
                finally:
                    done.set()
                    for client in clients:
                        client.join(60)
                assert ok["failed"] == 0, ok
            time.sleep(1.0)  # both proxies take in the last CLI changes (saver ticks: 0.5 s)
        finally:
            codes = [p.stop(timeout=15) for p in proxies]
        for p in proxies:
            assert_no_crash(p.output)
        assert codes == [0, 0], [p.output[-3000:] for p in proxies]

        final = read_state(state)
        by_name = {a.name: a for a in final.accounts}
        # Accounts: every import is there, every removal stays removed.
        assert set(by_name) == expected.names
        for name in expected.names:
            account = by_name[name]
            assert account.status.value == expected.status[name], name
            assert account.priority == expected.priority[name], name
            assert account.credentials.refresh_token == expected.refresh_token[name], name
        # Usage: each account holds what the upstream reported on its last phase with a turn.
        served: dict[str, int] = {}
        for request in fake.requests_for(RESPONSES):
            if request.account_id:
                served[request.account_id] = max(
                    i for i, mark in enumerate(marks) if mark <= request.time
                )
        checked = 0
        for name in expected.names:
            phase = served.get(account_ids[name])
            if phase is None:
                continue
            window = by_name[name].primary
            assert window is not None, name
            assert window.used_percent == usage_for(phase, index[name]), (name, phase)
            checked += 1
        assert checked >= len(base)
        # Requests: the counters add up to what the two proxies routed, nothing counted twice.
        routed = Counter(
            r.account_id for r in fake.requests_for(RESPONSES) if r.account_id is not None
        )
        names_of = {v: k for k, v in account_ids.items()}
        want = {names_of[a]: n for a, n in routed.items() if names_of[a] not in expected.removed}
        have = {a.name: a.requests for a in final.accounts if a.requests}
        assert have == want
        assert sum(routed.values()) == ok["ok"]
        print(f"{expected.commands} CLI commands, {ok['ok']} turns, final requests {have}")


def _turns(
    env: PoolEnv, done: threading.Event, ok: Counter[str], lock: threading.Lock, ws: bool
) -> None:
    """Turns until `done`: HTTP+SSE, or WebSocket turns on one socket (one handshake each)."""
    n = 0
    while not done.is_set() or n < 2:
        n += 1
        try:
            if ws:
                with WsClient(env.proxy.port, env.proxy.ca_path, headers=env.headers()) as socket:
                    messages = socket.turn(responses_request())
                    good = messages and messages[-1].data.get("type") == "response.completed"
            else:
                good = env.turn(session=f"t-{threading.get_ident()}-{n}").status == 200
        except OSError:
            good = False
        with lock:
            ok["ok" if good else "failed"] += 1
        time.sleep(PAUSE)


def _cli_phase(
    phase: int,
    fake: FaultyBackend,
    state: Path,
    expected: Expected,
    index: dict[str, int],
    account_ids: dict[str, str],
) -> None:
    """The operator's commands of one phase, run while both proxies serve."""

    def run(*args: str) -> None:
        time.sleep(0.1)  # spread the commands over the phase
        cli_ok(state, *args, separate_process=args[0] == "import" and "--replace" not in args)
        expected.commands += 1

    # A new account (its usage is this phase's value from the start).
    name = f"n{phase}"
    auth = make_auth_json(f"acct-{name}")
    index[name], account_ids[name] = len(index), f"acct-{name}"
    value = usage_for(phase, index[name])
    fake.register_auth_json(auth, primary_used=value, secondary_used=value)
    path = state.parent / f"{name}.auth.json"
    path.write_text(json.dumps(auth))
    run("import", str(path), "--name", name)
    expected.names.add(name)
    expected.status[name], expected.priority[name] = "active", 0
    expected.refresh_token[name] = auth["tokens"]["refresh_token"]
    # Pause and resume, ending in a known state: b ends paused on even phases.
    if phase % 2 == 0:
        run("pause", "b")
        expected.status["b"] = "paused"
    else:
        run("resume", "b")
        expected.status["b"] = "active"
    run("pause", "c")
    run("set", "c", "--priority", str(phase + 1), "--max-primary", "95")
    run("resume", "c")
    expected.status["c"] = "active"
    expected.priority["c"] = phase + 1
    # A rotation made by the operator: a new login for a, imported over the old one.
    new = make_auth_json("acct-a")
    value = usage_for(phase, index["a"])
    fake.register_auth_json(new, primary_used=value, secondary_used=value)
    rotated = state.parent / f"a-{phase}.auth.json"
    rotated.write_text(json.dumps(new))
    run("import", str(rotated), "--name", "a", "--replace")
    expected.refresh_token["a"] = new["tokens"]["refresh_token"]
    # A removal of an account both proxies have been routing to.
    if phase == 1:
        run("remove", "n0")
        expected.names.discard("n0")
        expected.removed.add("n0")
    json.loads(cli_ok(state, "status", "--json"))


def test_two_proxies_needing_the_same_refresh_keep_the_account(tmp_path: Path) -> None:
    state = tmp_path / "router-state.toml"
    soon = int(time.time()) + 60  # inside the refresh margin: the first use refreshes
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a", exp=soon)])
        fake.oauth_delay = 1.0  # both proxies are refreshing before either has saved
        conf = tmp_path / "conf"
        conf.mkdir()
        first = proxy(fake, state, confdir=conf).start()
        second = proxy(fake, state, confdir=conf).start()
        try:
            envs = [env_for(fake, p, state, auths) for p in (first, second)]
            results: list[int] = []
            threads = [
                threading.Thread(target=lambda e=env: results.append(e.turn().status))
                for env in envs
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            time.sleep(1.0)
        finally:
            for p in (first, second):
                p.stop()
        outcomes = [r.outcome for r in fake.refreshes]
        final = read_state(state)
        assert final.accounts[0].status.value == "active", (outcomes, results)
        assert results == [200, 200], (outcomes, results)
