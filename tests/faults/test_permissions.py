"""The state file holds live credentials: it, its lock and its temp files are private (0600, the
directory 0700) whatever the umask; the proxy warns at start about a file others can read;
temp files a crash left behind are removed; a file planted under a temp name gets nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon import statefile
from addon.state import Account, Credentials, State
from addon.statefile import StateFile, dumps
from tests.e2e.pool_env import Spec, import_accounts
from tests.fakes.jwt import make_auth_json
from tests.faults._backend import FaultyBackend
from tests.faults._support import env_for, proxy, read_state, run_cli, temp_files

SECRET = "eyJhbGciOiJub25lIn0.eyJzZWNyZXQiOiJwZXJtcyJ9.c2VjcmV0LXBlcm1z"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _account(name: str = "work") -> Account:
    return Account(
        name=name,
        credentials=Credentials(access_token=f"{SECRET}-{name}", refresh_token=f"rt-{name}"),
    )


def test_the_cli_with_umask_zero_creates_a_private_file_lock_and_directory(
    tmp_path: Path,
) -> None:
    state = tmp_path / "new-dir" / "router-state.toml"
    auth = tmp_path / "a.json"
    auth.write_text(json.dumps(make_auth_json("acct-a")))
    done = run_cli(state, "import", str(auth), "--name", "a", umask=0)
    assert done.returncode == 0, done.stderr
    assert mode(state) == 0o600
    assert mode(state.with_name(state.name + ".lock")) == 0o600
    assert mode(state.parent) == 0o700
    done = run_cli(state, "pause", "a", umask=0)
    assert done.returncode == 0, done.stderr
    assert mode(state) == 0o600


def test_temp_files_are_private_with_umask_zero(
    tmp_path: Path, umask_zero: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every temp file is 0600 from its creation to its rename (checked at the rename)."""
    path = tmp_path / "conf" / "router-state.toml"
    seen: list[int] = []
    real_replace = os.replace

    def checking_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(mode(Path(src)))
        real_replace(src, dst)

    monkeypatch.setattr(statefile.os, "replace", checking_replace)
    file = StateFile(path)
    file.edit(lambda s: s.accounts.append(_account()))
    file.sync(file.load(), {})
    assert seen == [0o600, 0o600]


@pytest.mark.e2e
def test_the_proxy_with_umask_zero_keeps_the_file_private(tmp_path: Path, umask_zero: None) -> None:
    state = tmp_path / "router-state.toml"
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a")])
        running = proxy(fake, state, confdir=tmp_path / "conf").start()  # inherits umask 0
        watching = threading.Event()
        modes: set[int] = set()

        def watch() -> None:  # catch temp files while they exist
            while not watching.is_set():
                for temp in temp_files(tmp_path, state.name):
                    with contextlib.suppress(FileNotFoundError):
                        modes.add(mode(temp))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            env = env_for(fake, running, state, auths)
            for _ in range(5):
                assert env.turn().status == 200
            deadline = time.monotonic() + 10
            while read_state(state).accounts[0].requests < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            watching.set()
            running.stop()
            watcher.join(5)
        assert read_state(state).accounts[0].requests == 5
        assert mode(state) == 0o600
        assert modes <= {0o600}, modes


@pytest.mark.e2e
def test_the_proxy_warns_at_start_about_a_loose_file_and_tightens_it(tmp_path: Path) -> None:
    state = tmp_path / "router-state.toml"
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a")])
        state.chmod(0o644)
        running = proxy(fake, state, confdir=tmp_path / "conf").start()
        try:
            line = running.wait_for_line(r"can be read by other users", 5)
            assert str(state) in line.string
            assert env_for(fake, running, state, auths).turn().status == 200
            deadline = time.monotonic() + 10
            while mode(state) != 0o600 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mode(state) == 0o600  # the next save wrote a private file
        finally:
            running.stop()


def test_temp_files_left_by_a_crash_are_removed_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "router-state.toml"
    StateFile(path).edit(lambda s: s.accounts.append(_account()))
    stale = [
        tmp_path / ".router-state.toml.4242.0123abcd",  # the old naming (md5 prefix)
        tmp_path / ".router-state.toml.4243.0123456789abcdef",
    ]
    for leftover in stale:
        leftover.write_text(dumps(State(accounts=[_account()])))
        leftover.chmod(0o600)
    keep = [tmp_path / ".router-state.toml.swp", tmp_path / "router-state.toml.bak"]
    for other in keep:
        other.write_text("the user's own file")
    done = run_cli(path, "set", "work", "--priority", "3")
    assert done.returncode == 0, done.stderr
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in keep)


def test_a_link_planted_under_a_temp_name_never_receives_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can create files beside the state file (a shared directory) plants links
    under the names the next write would use: the write must neither follow nor reuse them."""
    path = tmp_path / "router-state.toml"
    victim = tmp_path / "victim.txt"
    victim.write_text("not for credentials\n")
    file = StateFile(path)
    file.edit(lambda s: s.accounts.append(_account()))  # the first write (and its sweep)
    change = _account("second")

    def expected_state(state: State) -> State:
        return State.model_validate(State(accounts=[*state.accounts, change]).model_dump())

    # The name the former writer would have used: predictable from the pid and the content.
    data = dumps(expected_state(file.read() or State())).encode()
    digest = hashlib.md5(data).hexdigest()[:8]
    (tmp_path / f".{path.name}.{os.getpid()}.{digest}").symlink_to(victim)
    # And the first random name this writer will draw.
    names = iter(["00112233aabbccdd", "fedcba9876543210"])
    monkeypatch.setattr(statefile.secrets, "token_hex", lambda n: next(names))
    (tmp_path / f".{path.name}.{os.getpid()}.00112233aabbccdd").symlink_to(victim)

    file.edit(lambda s: s.accounts.append(change))
    assert victim.read_text() == "not for credentials\n"
    assert [a.name for a in read_state(path).accounts] == ["work", "second"]
    assert mode(path) == 0o600 and not path.is_symlink()
