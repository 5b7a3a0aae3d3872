"""Instructions per request, counted by callgrind: a figure a noisy machine cannot fake.

On a shared VM, req/s can swing by 2x from one round to the next; the number of instructions
the proxy executes per request does not. Each configuration's mitmdump runs under
`valgrind --tool=callgrind` (~50x slower). After a warm-up (and, for the router, its first
save), its counters are zeroed (`callgrind_control --dump`), a fixed number of requests goes
through it over 8 connections, and the counters are dumped again: the event loop's
instructions divided by the requests. The other threads (the router's saver) are reported
apart: a save is one large lump that the saver paces to 1 % of the process's time, so a window
of a few hundred requests holds none or one of them.

What it leaves out: the kernel's share of each request (socket calls) and cache misses, so it
compares user-space work; the throughput table says what that work costs in time.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CONNS = 8
STARTUP = 1800.0  # seconds: a 10,000-account router starts in minutes under callgrind


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def measure(proxy: Any, requests: int, log: Any) -> dict[str, Any]:
    """Start `proxy` (a bench.procs.Proxy) under callgrind and count one batch of requests."""
    from bench.procs import loadgen

    out = proxy.workdir / "callgrind.out"
    proxy.wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
    ]
    proxy.start(timeout=STARTUP)
    try:
        loadgen("count", proxy.port, conns=CONNS, requests=4 * CONNS)
        _first_save(proxy)
        _dump(proxy.pid)  # zeroes the counters
        before = set(proxy.workdir.glob("callgrind.out.*"))
        done = loadgen("count", proxy.port, conns=CONNS, requests=requests)
        _dump(proxy.pid)
        # One file per thread: callgrind.out.N-01 is the main thread (the event loop).
        dumps = {
            p.name.rsplit("-", 1)[1]: p for p in set(proxy.workdir.glob("callgrind.out.*")) - before
        }
        loop = _totals(dumps.pop("01"))
        others = sum(_totals(p) for p in dumps.values())
    finally:
        proxy.stop()
    if done["errors"] or not done["requests"]:
        raise RuntimeError(f"{proxy.name}: {done['errors']} errors, {done['requests']} answered")
    result = {
        "requests": done["requests"],
        "seconds": done["seconds"],
        "instructions_per_request": loop / done["requests"],
        "other_threads_per_request": others / done["requests"],
    }
    log(
        f"instructions {proxy.name}: {result['instructions_per_request'] / 1e6:.3f} M/request "
        f"on the event loop, {result['other_threads_per_request'] / 1e6:.3f} M in other threads"
    )
    return result


def _first_save(proxy: Any, timeout: float = STARTUP) -> None:
    """A router's first save after start rewrites every account once: not steady state."""
    from bench.procs import routed

    deadline = time.monotonic() + timeout
    while routed(proxy) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proxy.name}: no save within {timeout:.0f} s: see {proxy.log}")
        time.sleep(2)


def _dump(pid: int) -> None:
    done = subprocess.run(
        ["callgrind_control", "--dump", str(pid)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control --dump {pid} failed: {done.stdout}{done.stderr}")


def _totals(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def instructions_bench(settings: Any, log: Any) -> dict[str, Any]:
    from bench.procs import Upstream, configs

    if not available():
        log("instructions: valgrind (callgrind) is not installed: skipped")
        return {"skipped": "valgrind is not installed"}
    sizes = (1_000,) if settings.quick else settings.sizes
    requests = 200 if settings.quick else 400
    upstream = Upstream().start()
    tmp = Path(tempfile.mkdtemp(prefix="qr-bench-callgrind-"))
    try:
        proxies = configs(upstream.port, sizes, tmp, no_script=True)
        # Counts do not depend on what else runs: use both cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = pool.map(lambda proxy: (proxy.name, measure(proxy, requests, log)), proxies)
            return {"requests": requests, "configs": dict(runs)}
    finally:
        upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(data: dict[str, Any], order: Any) -> list[str]:
    from bench.procs import NO_SCRIPT

    lines = ["### Instructions per request (callgrind)", ""]
    if "skipped" in data:
        return [*lines, f"Not measured: {data['skipped']}.", ""]
    configs = data["configs"]
    per = {name: run["instructions_per_request"] for name, run in configs.items()}
    lines += [
        f"{data['requests']} requests over {CONNS} connections through each mitmdump under "
        "callgrind, after a warm-up. Not counted: the kernel's share and cache misses. Other "
        "threads: the router's saver, a lump per save (paced to 1 % of the process's time), "
        "divided by the same requests. `bare` loads the bench's shim (bench/shims/chatgpt.py) "
        "as every configuration does; `no-script` is mitmdump with no script at all. `hooks`: "
        "one script that streams as `stream` does and has the router's hooks, all empty (what "
        "mitmproxy charges for a script of the router's shape).",
        "",
        "| config | M instructions per request, event loop | vs stream | vs bare "
        "| M in other threads |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in sorted(per, key=order):
        others = configs[name]["other_threads_per_request"] / 1e6
        lines.append(
            f"| {name} | {per[name] / 1e6:.2f} | {per[name] / per['stream']:.3f} | "
            f"{per[name] / per['bare']:.3f} | {others:.2f} |"
        )
    lines.append("")
    if NO_SCRIPT in per:
        shim = per["bare"] - per[NO_SCRIPT]
        lines += [
            f"The bench's shim (`bare` minus `{NO_SCRIPT}`): {shim / 1e6:.2f} M "
            f"({shim / per[NO_SCRIPT]:.1%} of `{NO_SCRIPT}`), in every other configuration too.",
            "",
        ]
    if "hooks" in per:
        # What is left of a router's count once mitmproxy's share of calling such a script
        # is taken away: the router's own work.
        own = {n: per[n] - per["hooks"] for n in sorted(per, key=order) if n.startswith("addon-")}
        parts = [
            f"{n} {m / 1e6:.2f} M ({m / per['stream']:.1%} of `stream`)" for n, m in own.items()
        ]
        lines += [f"The routers' own work (their count minus `hooks`'): {', '.join(parts)}.", ""]
    return lines
