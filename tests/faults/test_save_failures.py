"""The state file cannot be written (disk full, read-only file system, permission denied): the
proxy keeps routing from memory, says so (one log line naming the file and the cause, and in
its status), retries on its own, and never truncates the file. Once the cause is gone, the next
retry saves everything learnt meanwhile.

Tests run as root here, and root ignores permission bits, so `chmod` cannot make a save fail.
Used instead: a tiny tmpfs filled up (ENOSPC), the same tmpfs remounted read-only (EROFS),
`chattr +i` on the state directory (EPERM: even root cannot create files in it), and the proxy
run as user `nobody` in a directory it may not write (EACCES). Each is skipped where the
machine does not allow it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from addon.pool import Pool
from addon.router import Router
from addon.saver import Saver
from addon.state import Account, Credentials, State
from addon.statefile import StateFile
from tests.e2e.harness import Mitmdump
from tests.e2e.pool_env import Spec, import_accounts
from tests.faults._backend import FaultyBackend
from tests.faults._support import (
    assert_no_crash,
    chattr,
    dashboard_status,
    env_for,
    fill,
    proxy,
    read_state,
    remount,
    tiny_tmpfs,
)

pytestmark = pytest.mark.e2e

SAVE_ERROR = r"quota-router: cannot save state \((?P<message>.*)\); routing continues"
NOBODY = 65534


def _total_requests(state: Path) -> int:
    return sum(a.requests for a in read_state(state).accounts)


def _scenario(
    directory: Path,
    confdir: Path,
    break_it: Callable[[], None],
    repair: Callable[[], None],
    cause: str,
    after_import: Callable[[], None] = lambda: None,
    **proxy_kwargs: Any,
) -> None:
    state = directory / "router-state.toml"
    with FaultyBackend() as fake:
        auths = import_accounts(fake, state, [Spec("a"), Spec("b")])
        after_import()
        running = proxy(fake, state, confdir=confdir, **proxy_kwargs).start()
        try:
            env = env_for(fake, running, state, auths)
            assert env.turn().status == 200
            deadline = time.monotonic() + 10
            while _total_requests(state) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _total_requests(state) == 1
            original = state.read_bytes()
            mark = len(running.lines)
            break_it()

            # Routing goes on from memory.
            assert [env.turn().status for _ in range(5)] == [200] * 5
            # Loudly: a log line with the file and the cause ...
            line = running.wait_for_line(SAVE_ERROR, 10, start=mark)
            assert str(state) in line["message"] and cause in line["message"], line.string
            # ... and the proxy's status says so too.
            assert cause in (dashboard_status(running)["saving_error"] or "")
            # The file is left exactly as it was, through several retries.
            time.sleep(1.5)
            assert state.read_bytes() == original
            errors = [ln for ln in running.lines[mark:] if "cannot save state" in ln]
            assert len(errors) == 1, errors  # once per problem, not once per retry

            repair()
            # The retry succeeds on its own, without a new request.
            running.wait_for_line(r"quota-router: state saved again", 10, start=mark)
            assert dashboard_status(running)["saving_error"] is None
            assert _total_requests(state) == 6  # nothing learnt meanwhile was lost
            assert stat.S_IMODE(state.stat().st_mode) == 0o600
        finally:
            running.stop()
        assert_no_crash(running.output)


def test_a_full_disk(tmp_path: Path) -> None:
    with tiny_tmpfs("256k") as mount:
        fillers: list[Path] = []
        _scenario(
            mount,
            tmp_path,
            lambda: fillers.append(fill(mount)),
            lambda: fillers.pop().unlink(),
            "No space left on device",
        )


def test_a_read_only_file_system(tmp_path: Path) -> None:
    with tiny_tmpfs() as mount:
        _scenario(
            mount,
            tmp_path,
            lambda: remount(mount, "ro"),
            lambda: remount(mount, "rw"),
            "Read-only file system",
        )


def test_an_immutable_directory(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    try:
        _scenario(
            directory,
            tmp_path / "conf",
            lambda: chattr(directory, "+i"),
            lambda: chattr(directory, "-i"),
            "Operation not permitted",
        )
    finally:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory outside pytest's root-only tmp dir, owned by `nobody`."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the proxy as another user")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    probe = subprocess.run([*drop, sys.executable, "-c", "import mitmproxy"], capture_output=True)
    if probe.returncode != 0:  # e.g. a venv whose interpreter lives in root's home
        pytest.skip("`nobody` cannot run this venv's Python here")
    path = Path(tempfile.mkdtemp(prefix="qr-nobody-"))
    try:
        os.chmod(path, 0o755)
        for sub in ("state", "conf"):
            (path / sub).mkdir()
            os.chown(path / sub, NOBODY, NOBODY)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class NobodyMitmdump(Mitmdump):
    def command(self) -> list[str]:
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return [*drop, *super().command()]


def test_permission_denied(nobody_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy runs as `nobody`; the state directory loses its write permission."""
    state_dir, confdir = nobody_dir / "state", nobody_dir / "conf"
    monkeypatch.setattr("tests.e2e.harness.Mitmdump", NobodyMitmdump)

    def hand_over() -> None:  # the CLI (root) created the files: give them to nobody
        for path in state_dir.iterdir():
            os.chown(path, NOBODY, NOBODY)

    _scenario(
        state_dir,
        confdir,
        lambda: state_dir.chmod(0o500),
        lambda: state_dir.chmod(0o700),
        "Permission denied",
        after_import=hand_over,
        env={"HOME": str(nobody_dir), "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_the_proxy_starts_and_routes_on_a_read_only_state_directory(tmp_path: Path) -> None:
    """A read-only directory at start: load the file (no lock needed to read), route, and say
    that saving fails, instead of refusing to start."""
    with tiny_tmpfs() as mount:
        state = mount / "router-state.toml"
        with FaultyBackend() as fake:
            auths = import_accounts(fake, state, [Spec("a")])
            original = state.read_bytes()
            remount(mount, "ro")
            running = proxy(fake, state, confdir=tmp_path).start()
            try:
                env = env_for(fake, running, state, auths)
                assert env.turn().status == 200
                line = running.wait_for_line(SAVE_ERROR, 10)
                assert "Read-only file system" in line["message"]
            finally:
                running.stop()
            assert_no_crash(running.output)
            assert state.read_bytes() == original


def test_router_status_says_saving_fails_and_the_flush_leaves_the_file(tmp_path: Path) -> None:
    """In-process: the state directory's parent is a regular file, so every save fails (root
    cannot create a directory inside a file either). `router.status` says so, with the cause."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the state directory should be\n")
    file = StateFile(blocker / "router-state.toml")
    account = Account(name="a", credentials=Credentials(access_token="at-secret-0123456789"))
    router = Router()
    router.file, router.pool = file, Pool(State(accounts=[account]))
    router.saver = Saver(router.pool, file)
    router.pool.record_route(router.pool.accounts[0], time.time())

    assert asyncio.run(router.saver.save()) is False
    text = router.status()
    assert "SAVING FAILS since" in text and str(file.path) in text, text
    assert router.pool.unsaved_requests == {account.id: 1}  # kept for the next try
    assert router.saver.flush() is False  # at shutdown too: loud, not fatal
    assert blocker.read_text() == "a regular file where the state directory should be\n"
