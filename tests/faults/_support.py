"""Shared helpers for the fault tests: proxies on a shared state file, CLI runs, log checks,
tiny file systems."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from addon.state import State
from addon.statefile import parse
from tests.e2e.harness import REPO_ROOT, Mitmdump, fake_proxy
from tests.e2e.pool_env import READY, ROUTER, PoolEnv
from tests.fakes.codex_backend import FakeCodexBackend

HERE = Path(__file__).resolve().parent
RECORDER = HERE / "record_headers.py"
# Lines that must never appear in a mitmdump log: an exception escaped an addon hook.
CRASH_PATTERNS = ("Addon error", "Traceback (most recent call last)")


def run_cli(
    state: Path, *args: str, umask: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m addon --state STATE ARGS...` as a separate process (optionally umask'ed)."""

    def before() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "addon", "--state", str(state), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
        preexec_fn=before if umask is not None else None,
    )


def proxy(
    fake: FakeCodexBackend,
    state: Path,
    options: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Mitmdump:
    """A (not yet started) mitmdump with the router on `state`, redirected to the fake."""
    opts = {
        "router_state": str(state),
        "router_token_url": f"{fake.url}/oauth/token",
        **(options or {}),
    }
    return fake_proxy(fake.address, [ROUTER], opts, ready_pattern=READY, **kwargs)


def env_for(
    fake: FakeCodexBackend, running: Mitmdump, state: Path, auths: dict[str, Any]
) -> PoolEnv:
    """A PoolEnv view (turn(), status(), ...) of any running proxy."""
    return PoolEnv(fake, running, state, auths)


def read_state(path: Path) -> State:
    """The state file parsed and validated exactly as the proxy and the CLI do."""
    return parse(path.read_text(encoding="utf-8"), path)


def assert_no_crash(log: str) -> None:
    for pattern in CRASH_PATTERNS:
        assert pattern not in log, f"{pattern!r} in the mitmdump log:\n{log[-4000:]}"


def temp_files(directory: Path, name: str) -> list[Path]:
    """Temp files the state file writer left beside `name` (`.name.<pid>.<hex>...`)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.\d+\.[0-9a-f]+")
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))


# -- file systems that fail -----------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(size: str = "256k") -> Iterator[Path]:
    """A fresh, small tmpfs (root only). Root ignores permission bits, so running out of
    space and read-only mounts are the honest ways to make a write fail here."""
    mount_point = Path(tempfile.mkdtemp(prefix="qr-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        with contextlib.suppress(OSError):
            mount_point.rmdir()


def remount(mount_point: Path, mode: str) -> None:
    """`mode`: "ro" or "rw"."""
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(mount_point)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it (delete it to free)."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):  # big blocks, then squeeze out the last bytes
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def chattr(path: Path, flag: str) -> None:
    """`chattr +i` / `-i`: even root cannot create files in an immutable directory."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} is not supported here: {done.stderr.strip()}")


def secrets_in(text: str | bytes, secrets: Sequence[str]) -> list[str]:
    """The secrets (or their unique tail: a JWT's payload and signature) found in `text`."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    found = []
    for secret in secrets:
        probes = {secret}
        if secret.count(".") == 2:
            probes.add(secret.split(".", 1)[1])  # the header is the same in every fake JWT
        if any(p.encode() in data for p in probes):
            found.append(secret[:12] + "…")
    return found


def dashboard_status(running: Mitmdump) -> dict[str, Any]:
    """The proxy's own view of the pool (`http://router.mitm/api/status`, served by the
    router's dashboard through the proxy): includes `saving_error`, as `router.status` does."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": running.proxy_url}))
    with opener.open("http://router.mitm/api/status", timeout=10) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data
