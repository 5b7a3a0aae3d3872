"""kill -9 the proxy at random moments while it routes, refreshes and saves: the state file must
always parse, keep every account, and keep every token rotation the proxy acknowledged.

A rotation is acknowledged once the upstream (the fake) saw the new access token: the router
persists a refreshed pair before it uses it, so such a pair must be in the file afterwards, or
a later pair of the same chain. Access tokens live 240 s here, inside the router's 300 s
refresh margin, so every routed request refreshes its account's tokens first.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.pool_env import PoolEnv, Spec, import_accounts
from tests.fakes.codex_backend import RecordedRefresh
from tests.faults._backend import FaultyBackend
from tests.faults._support import (
    assert_no_crash,
    env_for,
    proxy,
    read_state,
    temp_files,
)

pytestmark = pytest.mark.e2e

KILLS = int(os.environ.get("QR_CRASH_KILLS", "50"))
SEED = int(os.environ.get("QR_CRASH_SEED", "20261126"))
CLIENTS = 4


@dataclass
class Tally:
    kills_at_start: int = 0
    kills_while_serving: int = 0
    turns_ok: int = 0
    refreshes: int = 0
    acknowledged: int = 0
    unacknowledged_lost: int = 0  # refreshed, then killed before the pair was saved
    temp_files_seen: int = 0  # left by a kill mid-write (0600; removed by the next write)


def _chains(
    records: list[RecordedRefresh], starts: dict[str, str]
) -> dict[str, list[RecordedRefresh]]:
    """Each account's rotations in one run, in order, from its refresh token at the start: each
    one must have used the refresh token the previous one issued (the fake refuses anything
    else, and a refusal would show as an outcome other than "ok")."""
    by_old = {r.refresh_token: r for r in records}
    chains: dict[str, list[RecordedRefresh]] = {}
    for name, current in starts.items():
        chain = chains[name] = []
        while current in by_old:
            chain.append(by_old.pop(current))
            current = chain[-1].new_refresh_token or ""
    assert not by_old, f"rotations from a refresh token no chain issued: {list(by_old.values())}"
    return chains


def _clients(env: PoolEnv, tally: Tally, stop: threading.Event) -> list[threading.Thread]:
    lock = threading.Lock()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                result = env.turn(session=f"s-{threading.get_ident()}-{n}")
            except (OSError, ValueError, IndexError):
                continue  # the proxy died under us
            if result.status == 200:
                with lock:
                    tally.turns_ok += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def test_kill_9_at_random_moments_never_loses_an_account_or_an_acknowledged_rotation(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    state = tmp_path / "state" / "router-state.toml"
    state.parent.mkdir()
    confdir = tmp_path / "conf"  # kept across restarts: one CA, no key generation per start
    confdir.mkdir()
    soon = int(time.time()) + 60
    specs = [Spec(name, exp=soon) for name in ("a", "b", "c")]
    tally = Tally()
    # Tokens live 50 s, inside the last minute in which a request waits for its refresh: every
    # use refreshes first, so every round rotates tokens and uses the new ones upstream.
    with FaultyBackend(access_token_lifetime=50, usage_step=(0.0, 0.0)) as fake:
        auths = import_accounts(fake, state, specs)
        first = read_state(state)
        ids = {a.name: a.id for a in first.accounts}
        options = {"router_strategy": "capacity_weighted"}
        for round_no in range(KILLS):
            before = read_state(state)
            start_rt = {a.name: a.credentials.refresh_token for a in before.accounts}
            refreshes_before = len(fake.refreshes)
            requests_before = len(fake.requests)
            running = proxy(fake, state, options, confdir=confdir)
            if rng.random() < 0.2:
                # Die while starting up (loading the file, generating nothing).
                delay = rng.uniform(0.1, 1.5)
                timer = threading.Timer(
                    delay, lambda p=running: p.proc and os.kill(p.proc.pid, signal.SIGKILL)
                )
                timer.start()
                with contextlib.suppress(TimeoutError):
                    running.start()
                timer.join()
                if running.proc is not None and running.proc.poll() is None:
                    os.kill(running.proc.pid, signal.SIGKILL)  # started faster than the timer
                tally.kills_at_start += 1
            else:
                running.start()
                env = env_for(fake, running, state, auths)
                stop = threading.Event()
                clients = _clients(env, tally, stop)
                time.sleep(rng.uniform(0.05, 0.7))
                assert running.proc is not None
                os.kill(running.proc.pid, signal.SIGKILL)
                stop.set()
                for client in clients:
                    client.join(30)
                tally.kills_while_serving += 1
            if running.proc is not None:
                running.proc.wait(10)
            log = running.output
            running.stop()
            assert_no_crash(log)

            # 1. The file parses and validates, and holds every account.
            after = read_state(state)
            assert {a.name: a.id for a in after.accounts} == ids, f"round {round_no}"
            for leftover in temp_files(state.parent, state.name):
                tally.temp_files_seen += 1
                assert stat.S_IMODE(leftover.stat().st_mode) == 0o600
            # 2. Every acknowledged rotation is in the file (or a later one of its chain).
            seen = {
                (r.authorization or "")[7:]
                for r in fake.requests[requests_before:]
                if r.authorization
            }
            records = fake.refreshes[refreshes_before:]
            assert all(r.outcome == "ok" for r in records), [r.outcome for r in records]
            tally.refreshes += len(records)
            chains = _chains(records, start_rt)
            for account in after.accounts:
                assert account.status.value != "reauth_required", account.status_reason
                chain = chains[account.name]
                acked = [i for i, r in enumerate(chain) if r.new_access_token in seen]
                tally.acknowledged += len(acked)
                stored = account.credentials
                issued = [start_rt[account.name]] + [r.new_refresh_token for r in chain]
                assert stored.refresh_token in issued, (
                    f"round {round_no}: {account.name}'s refresh token is none the upstream issued"
                )
                at = issued.index(stored.refresh_token) - 1  # -1: the run's starting pair
                if acked:
                    assert at >= acked[-1], (
                        f"round {round_no}: {account.name} lost an acknowledged rotation "
                        f"(the file holds #{at}, #{acked[-1]} was used upstream)"
                    )
                if at >= 0:
                    assert stored.access_token == chain[at].new_access_token
                if at < len(chain) - 1:
                    # Killed between a refresh and its save: that pair was never used, and the
                    # upstream has already retired the file's refresh token. This window cannot
                    # be closed; revive the token so that the next round can go on.
                    tally.unacknowledged_lost += 1
                    fake.revive_refresh_token(stored.refresh_token)

        # A clean start on the final file still serves (no account needs a new login) and its
        # first save removes any temp file a kill left behind.
        running = proxy(fake, state, options, confdir=confdir).start()
        try:
            env = env_for(fake, running, state, auths)
            assert env.turn().status == 200
        finally:
            running.stop()
        assert_no_crash(running.output)
        read_state(state)
        leftovers = temp_files(state.parent, state.name)
        print(f"crash tally: {tally}")
        assert leftovers == [], f"temp files holding credentials left behind: {leftovers}"
    assert tally.kills_while_serving > KILLS // 2
    assert tally.acknowledged > KILLS  # the test did exercise rotations
