"""Processes for the end-to-end benchmarks (upstream, mitmdump, load generator) and pools.

mitmdump's output goes to a log file, not a pipe read by this process: reading ~300 lines a
second in the benchmark process would take CPU from the proxy under test on a small machine.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addon.authjson import parse_auth
from addon.state import Account, State, Window
from addon.statefile import StateFile

REPO = Path(__file__).resolve().parent.parent
SHIMS = REPO / "bench" / "shims"
SHIM = SHIMS / "chatgpt.py"  # every configuration loads it: see bench/shims/chatgpt.py
NO_SCRIPT = "no-script"  # mitmdump with no script at all, not even the shim
ROUTER = REPO / "addon" / "router.py"
PYTHON = sys.executable
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")


def make_accounts(count: int, seed: int = 7) -> list[Account]:
    """Pooled accounts shaped like real imports (JWTs of realistic size), some usage known."""
    from tests.fakes.jwt import make_auth_json

    rng = random.Random(seed)
    plans = ["plus", "plus", "team", "pro", "prolite"]
    now = time.time()
    accounts = []
    for i in range(count):
        imported = parse_auth(make_auth_json(f"acct-{i:05d}", rng.choice(plans)), "bench")
        accounts.append(
            Account(
                name=f"acct-{i:05d}",
                plan=imported.plan,
                email=imported.email,
                credentials=imported.credentials,
                primary=Window(
                    used_percent=round(rng.uniform(0, 50), 1),
                    window_minutes=300,
                    reset_at=int(now) + 3600,
                    observed_at=now,
                ),
                added_at=now,
            )
        )
    return accounts


def write_state(path: Path, accounts: list[Account]) -> Path:
    StateFile(path).edit(lambda state: state.accounts.extend(a.model_copy() for a in accounts))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Upstream:
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    def start(self) -> Upstream:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.upstream"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.match(r"port (\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"upstream did not start: {line!r}")
        self.port = int(match.group(1))
        return self

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Proxy:
    """One mitmdump in reverse mode in front of the upstream."""

    name: str
    upstream: int
    scripts: list[Path] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    ready: str = r"listening at"
    wrapper: list[str] = field(default_factory=list)  # a command that runs mitmdump (valgrind)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qr-bench-")))

    @property
    def log(self) -> Path:
        return self.workdir / "mitmdump.log"

    def start(self, timeout: float = 120.0) -> Proxy:
        self.port = free_port()
        cmd = [
            *self.wrapper,
            MITMDUMP,
            "--mode",
            f"reverse:http://127.0.0.1:{self.upstream}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(self.port),
            "--set",
            f"confdir={self.workdir / 'conf'}",
        ]
        for script in self.scripts:
            cmd += ["-s", str(script)]
        for key, value in self.options.items():
            cmd += ["--set", f"{key}={value}"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        pattern = re.compile(self.ready)
        while not pattern.search(self.log.read_text(errors="replace")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"{self.name}: mitmdump did not get ready:\n{text}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> float:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def bare_proxy(name: str, upstream: int) -> Proxy:
    """mitmdump with nothing of its own: only the bench's shim, which every configuration
    loads (reverse-mode requests made to look like Codex's), so that it costs them all alike."""
    return Proxy(name, upstream, scripts=[SHIM])


def stream_proxy(name: str, upstream: int) -> Proxy:
    """The fair baseline: mitmdump streaming SSE (as the router does), with the same shim."""
    return Proxy(name, upstream, scripts=[SHIMS / "stream.py", SHIM])


def hooks_proxy(name: str, upstream: int) -> Proxy:
    """One script that streams, as `stream` does, and has the router's hooks, all empty: the
    router's shape (one script) without its work."""
    return Proxy(name, upstream, scripts=[SHIMS / "hooks.py", SHIM])


def router_proxy(name: str, upstream: int, state: Path, strategy: str = "fill_first") -> Proxy:
    proxy = Proxy(
        name,
        upstream,
        scripts=[ROUTER, SHIM],
        ready=r"quota-router ready",
    )
    copy = proxy.workdir / "router-state.toml"
    shutil.copy(state, copy)
    copy.chmod(0o600)
    proxy.options = {"router_state": str(copy), "router_strategy": strategy}
    return proxy


TWIN = "stream-twin"  # a second `stream`, measured last: the run's own noise


def configs(
    upstream: int,
    sizes: tuple[int, ...],
    tmp: Path,
    hooks: bool = True,
    no_script: bool = False,
    twin: bool = False,
) -> list[Proxy]:
    """The end-to-end configurations, not started: bare (and with `no_script`, mitmdump with
    no script at all), stream (and hooks), a router per size (its state file written in
    `tmp`), and with `twin` a copy of `stream` last, as far from it in each round as any
    configuration is."""
    proxies = [bare_proxy("bare", upstream)]
    if no_script:
        proxies.append(Proxy(NO_SCRIPT, upstream))
    proxies.append(stream_proxy("stream", upstream))
    if hooks:
        proxies.append(hooks_proxy("hooks", upstream))
    accounts = make_accounts(max(sizes))
    for size in sizes:
        state = write_state(tmp / f"state-{size}.toml", accounts[:size])
        proxies.append(router_proxy(f"addon-{size}", upstream, state))
    if twin:
        proxies.append(stream_proxy(TWIN, upstream))
    return proxies


def routed(proxy: Proxy) -> int | None:
    """Requests a router's state file says it routed (known after its saves); None: no router."""
    path = proxy.options.get("router_state")
    if path is None:
        return None
    return sum(account.requests for account in StateFile(Path(path)).load().accounts)


def loadgen(mode: str, port: int, **args: Any) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "bench.loadgen", mode, "--port", str(port)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


__all__ = [
    "NO_SCRIPT",
    "SHIM",
    "TWIN",
    "Proxy",
    "State",
    "Upstream",
    "bare_proxy",
    "configs",
    "hooks_proxy",
    "loadgen",
    "make_accounts",
    "routed",
    "router_proxy",
    "stream_proxy",
]
