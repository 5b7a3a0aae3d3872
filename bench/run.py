"""Run quota-router's benchmarks and print a Markdown report: `python -m bench [--quick]`.

Sections (all by default; `--only NAME ...` picks some):
  throughput  real mitmdump in reverse mode to a local SSE upstream: bare mitmdump, mitmdump with
              a small SSE-streaming script (the fair baseline: the router streams SSE, plain
              mitmdump buffers it), and mitmdump with the router at 10 / 1,000 / 10,000
              accounts; 1 and 8 connections; configurations interleaved round by round. Each
              loads the bench's shim (bench/shims/chatgpt.py), bare mitmdump too.
  streaming   time to first SSE byte and per-event delay with events 300 ms apart.
  selection   microseconds per routing decision (Pool.choose) vs pool size, both strategies.
  state       save / load time vs pool size, and the event loop's longest stall while saving.
  memory      the router's RSS after 50,000 and 100,000 routed requests over 10,000
              conversations (in-process: Router driven with mitmproxy.test.tflow), and the
              full garbage collections meanwhile, with and without addon/heap.py.
  instructions  instructions per request of bare, stream and the router (and of mitmdump with
              no script at all), counted by callgrind (valgrind): the same figure on a busy
              machine as on an idle one.

Everything measured side by side runs in one session; ratios are of medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import instructions  # noqa: E402
from bench.procs import NO_SCRIPT, TWIN  # noqa: E402

# What the saved results' configurations mean (--json, --render). 2: `bare` loads the bench's
# shim, as every configuration does.
LAYOUT = 2
SECTIONS = ("throughput", "streaming", "selection", "state", "memory", "instructions")


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.sizes = (10, 1_000, 10_000)
        self.rounds = 3 if quick else 4
        self.duration = 3.0 if quick else 6.0
        self.warmup = 0.5 if quick else 1.0
        self.concurrency = (1, 8)
        self.stream_requests = 4 if quick else 6
        self.memory_requests = 20_000 if quick else 100_000
        self.memory_conversations = 10_000
        self.state_sizes = (10, 100, 1_000, 10_000)
        self.conversations = 20_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- end to end --------------------------------------------------------------------------------
@contextmanager
def proxies(settings: Settings) -> Iterator[tuple[list[Any], Any]]:
    from bench.procs import Upstream, configs, loadgen

    upstream = Upstream().start()
    started: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="qr-bench-states-"))
    try:
        for proxy in configs(upstream.port, settings.sizes, tmp, twin=True):
            log(f"starting {proxy.name}")
            started.append(proxy.start())
        # Steady state: a first burst of traffic, and time for the router's first save after
        # start (it merges and writes every account once: seconds of CPU at 10,000 accounts).
        for proxy in started:
            loadgen("load", proxy.port, conns=1, duration=1.0, warmup=0.2)
        log("waiting for the first saves to finish")
        time.sleep(8 if settings.quick else 10)
        for proxy in started:
            _check_routed(proxy)
        yield started, upstream
    finally:
        for proxy in started:
            proxy.stop()
        upstream.stop()


def _check_routed(proxy: Any) -> None:
    """A router that routed nothing would be measured as a cheap pass-through: refuse."""
    from bench.procs import routed

    count = routed(proxy)
    if count is None:
        return
    if not count:
        raise RuntimeError(f"{proxy.name} routed no request during the warm-up: see {proxy.log}")
    log(f"{proxy.name} routed {count} requests during the warm-up")


def throughput(settings: Settings, configs: list[Any]) -> dict[str, Any]:
    from bench.procs import loadgen

    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    cpu: dict[str, float] = {p.name: 0.0 for p in configs}
    for conns in settings.concurrency:
        for round_ in range(settings.rounds):
            order = configs if round_ % 2 == 0 else list(reversed(configs))
            for proxy in order:
                time.sleep(0.5)  # let the previous proxy's saver settle
                before = proxy.cpu_seconds()
                result = loadgen(
                    "load",
                    proxy.port,
                    conns=conns,
                    duration=settings.duration,
                    warmup=settings.warmup,
                )
                spent = proxy.cpu_seconds() - before
                cpu[proxy.name] += spent
                # The warm-up's requests count too (at about the same rate).
                served = result["rps"] * (settings.duration + settings.warmup)
                result["cpu_ms_per_request"] = spent * 1000 / served if served else None
                runs.setdefault((proxy.name, conns), []).append(result)
                log(
                    f"throughput {proxy.name} x{conns} round {round_ + 1}: "
                    f"{result['rps']:.0f} req/s p50 {result['p50_ms']:.1f} ms "
                    f"p99 {result['p99_ms']:.1f} ms errors {result['errors']}"
                )
    rss = {p.name: p.rss() for p in configs}
    return {"runs": {f"{k[0]}@{k[1]}": v for k, v in runs.items()}, "rss_mib": rss}


def streaming(settings: Settings, configs: list[Any]) -> dict[str, Any]:
    from bench.procs import loadgen

    wanted = [
        p for p in configs if p.name in ("bare", "stream", TWIN) or p.name.startswith("addon-")
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(max(2, settings.rounds - 2)):
        for proxy in wanted if round_ % 2 == 0 else reversed(wanted):
            result = loadgen("stream", proxy.port, requests=settings.stream_requests, gap=0.3)
            results.setdefault(proxy.name, []).append(result)
            log(
                f"streaming {proxy.name} round {round_ + 1}: first byte "
                f"{result['ttfb_median_ms']:.2f} ms, event delay "
                f"{result['event_delay_median_ms']:.2f} ms"
            )
    return results


# -- in process --------------------------------------------------------------------------------
def selection_bench(settings: Settings) -> dict[str, Any]:
    from addon import selection
    from addon.pool import Pool
    from addon.selection import Strategy
    from addon.state import State
    from addon.usage import UsageReport, WindowReport
    from bench.procs import make_accounts

    accounts = make_accounts(max(settings.sizes))
    out: dict[str, Any] = {}
    for size in (10, 100, 1_000, 10_000):
        pool = Pool(State(accounts=[a.model_copy() for a in accounts[:size]]), random.Random(1))
        now = time.time()
        for strategy in Strategy:
            pool.choose(strategy, now)  # builds the index
            best_choose = best_cycle = float("inf")
            n = 2_000
            rng = random.Random(3)
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(n):
                    now += 0.001
                    pool.choose(strategy, now)
                best_choose = min(best_choose, (time.perf_counter() - started) / n)
                started = time.perf_counter()
                for _ in range(n):
                    now += 0.001
                    choice = pool.choose(strategy, now)
                    pct = rng.uniform(0, 90)
                    report = UsageReport(WindowReport(pct, 300, int(now) + 3600), None)
                    pool.record_usage(choice.account, report, now)  # type: ignore[union-attr]
                best_cycle = min(best_cycle, (time.perf_counter() - started) / n)
            reps = max(3, min(200, 20_000 // size))
            started = time.perf_counter()
            for _ in range(reps):
                selection.choose(strategy, pool.accounts, now, pool.rng)
            reference = (time.perf_counter() - started) / reps
            out[f"{strategy.value}@{size}"] = {
                "choose_us": best_choose * 1e6,
                "choose_and_learn_us": best_cycle * 1e6,
                "reference_scan_us": reference * 1e6,
            }
            log(
                f"selection {strategy.value} {size}: {best_choose * 1e6:.1f} us "
                f"(with a usage update {best_cycle * 1e6:.1f} us; "
                f"O(n) scan {reference * 1e6:.0f} us)"
            )
    return out


def state_bench(settings: Settings) -> dict[str, Any]:
    from addon.pool import Pool
    from addon.saver import Saver
    from addon.statefile import StateFile
    from bench.procs import make_accounts, write_state

    accounts = make_accounts(max(settings.state_sizes))
    out: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="qr-bench-state-"))
    for size in settings.state_sizes:
        path = write_state(tmp / f"state-{size}.toml", accounts[:size])
        file = StateFile(path)
        started = time.perf_counter()
        pool = Pool(file.load())
        load = time.perf_counter() - started
        conversations = min(settings.conversations, 2 * size)
        now = time.time()
        for i in range(conversations):
            pool._set_owner(_key(f"c{i}"), pool.accounts[i % size], now + i / 1e4)
        saver = Saver(pool, file)
        first, _ = asyncio.run(_timed_save(saver))
        stalls, times, idle = asyncio.run(_saves(pool, saver, rounds=6))
        cost, pause = saver.cost, saver.pause()  # of a regular save
        full_pool = pool
        full_pool.unsaved_accounts = None  # the periodic check: compare every account
        full, full_stall = asyncio.run(_timed_save(saver))
        external = external_stall = float("nan")
        if size >= 1_000:  # another writer (the CLI) paused an account: read, merge, adopt
            StateFile(path).edit(_pause_first)
            external, external_stall = asyncio.run(_timed_save(saver))
        busy = asyncio.run(_busy_floor())
        out[str(size)] = {
            "file_mib": path.stat().st_size / 2**20,
            "conversations": conversations,
            "load_ms": load * 1000,
            "first_save_ms": first * 1000,
            "save_ms": median(times) * 1000,
            "save_cpu_ms": cost * 1000,
            "full_check_save_ms": full * 1000,
            "max_stall_ms": max(stalls) * 1000,
            "full_check_stall_ms": full_stall * 1000,
            "idle_stall_ms": max(idle) * 1000,
            "busy_stall_ms": busy * 1000,
            "external_save_ms": external * 1000,
            "external_stall_ms": external_stall * 1000,
            "interval_s": pause,
        }
        log(f"state {size}: {json.dumps(out[str(size)])}")
    return out


def _pause_first(state: Any) -> None:
    from addon.state import Status

    state.accounts[0].status = Status.PAUSED
    state.accounts[0].status_at = time.time()


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Ticker:
    """Records how late a 1 ms sleep wakes up: the event loop's longest stall.

    Read it with `await ticker.settle()` after the work: a stall caused by the work's last,
    synchronous part (adopting a merged state) shows only once the ticker has run again.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - started - 0.001)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    async def settle(self) -> float:
        await asyncio.sleep(0.005)  # the ticker wakes up (late, if the work just stalled)
        return self.take()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _busy_floor(seconds: float = 0.5) -> float:
    """The longest stall while a worker thread merely runs Python code: the floor for any
    work done off the loop (the loop waits up to the switch interval saving uses for the
    GIL, plus the machine's own noise)."""
    from addon.saver import switching

    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(0.01)
    ticker.take()
    with switching():  # as the saver does
        await asyncio.to_thread(_spin, seconds)
    return await ticker.settle()


async def _timed_save(saver: Any) -> tuple[float, float]:
    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(0.01)
    ticker.take()
    started = time.perf_counter()
    await saver.save()
    took = time.perf_counter() - started
    return took, await ticker.settle()


async def _saves(
    pool: Any, saver: Any, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Saves with 50 routed requests (and new conversations) between them, as under load."""
    ticker = Ticker()
    ticker.start()
    stalls, times, idle = [], [], []
    for r in range(rounds):
        now = time.time()
        for j in range(50):
            account = pool.accounts[random.randrange(len(pool.accounts))]
            pool.record_route(account, now)
            pool._set_owner(_key(f"r{r}-{j}-{now}"), account, now + j / 1e5)
        await asyncio.sleep(0.2)
        idle.append(ticker.take())  # the same ticker with no save running: the noise floor
        started = time.perf_counter()
        await saver.save()
        times.append(time.perf_counter() - started)
        stalls.append(await ticker.settle())
    return stalls, times, idle


def memory_bench(settings: Settings) -> dict[str, Any]:
    """In-process: mitmdump would take ~10 minutes for 100,000 requests on a 2-core machine.
    Run twice, each in a fresh interpreter: as shipped, then with addon/heap.py's settling off
    (the figures of the garbage collections it is there for)."""
    runs = []
    for settle in (1, 0):
        args = f"{settings.memory_requests}, {settings.memory_conversations}, 10_000, {settle}"
        code = f"import bench.memory as m; m.main({args})"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        log(f"memory: {json.dumps(runs[-1])}")
    result: dict[str, Any] = runs[0]
    result["unsettled"] = runs[1]
    return result


# -- report ------------------------------------------------------------------------------------
def report(settings: Settings, results: dict[str, Any]) -> str:
    import mitmproxy.version

    lines = [
        f"Machine: {os.cpu_count()} CPUs (nproc {_nproc()}), Python {platform.python_version()}, "
        f"mitmproxy {mitmproxy.version.VERSION}, "
        f"{results.get('date', datetime.date.today().isoformat())}, "
        f"load average at start {results.get('loadavg', '?')}; "
        f"{'--quick' if settings.quick else 'full run'}.",
        "",
    ]
    if "throughput" in results:
        lines += _throughput_table(settings, results["throughput"])
    if "streaming" in results:
        lines += _streaming_table(results["streaming"])
    if "instructions" in results:
        lines += instructions.table(results["instructions"], _order)
    if "selection" in results:
        lines += _selection_table(results["selection"])
    if "state" in results:
        lines += _state_table(results["state"])
    lines += _goals(results)
    if "memory" in results:
        lines += _memory_table(results["memory"])
    return "\n".join(lines)


def _memory_table(m: dict[str, Any]) -> list[str]:
    lines = [
        "### Memory (in-process router, 10,000 accounts)",
        "",
        "| routed requests | conversations | RSS MiB | affinity entries |",
        "|---:|---:|---:|---:|",
    ]
    for point in m["points"]:
        lines.append(
            f"| {point['requests']:,} | {m['conversations']:,} | {point['rss_mib']:.1f} | "
            f"{point['affinity']:,} |"
        )
    lines += ["", f"Growth from the first to the last point: {m['growth_pct']:+.1f} %.", ""]
    if "unsettled" not in m:
        return lines  # a run from before the garbage-collection figures
    lines += [
        "Full garbage collections the interpreter made during those requests (each stops the "
        "event loop while it walks every object it tracks), as shipped and with "
        "`addon/heap.py`'s settling turned off:",
        "",
        "| router | full collections | median ms | longest ms | objects a collection walks "
        "| objects settled |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in (("as shipped", m), ("without settling", m["unsettled"])):
        lines.append(
            f"| {name} | {run['full_collections']} | {run['median_full_ms']:.1f} | "
            f"{run['longest_full_ms']:.1f} | {run['scanned_objects']:,} | "
            f"{run['frozen_objects']:,} |"
        )
    return [*lines, ""]


def _goals(results: dict[str, Any]) -> list[str]:
    """Each goal of the benchmark issue, with the figure of this run that decides it."""
    rows: list[tuple[str, str, bool | str]] = []  # a str: neither shown, and why
    if "throughput" in results:
        runs = results["throughput"]["runs"]
        for conns in sorted({int(k.split("@")[1]) for k in runs}):
            bare = median([r["rps"] for r in runs[f"bare@{conns}"]])
            stream = median([r["rps"] for r in runs[f"stream@{conns}"]])
            twin = runs.get(f"{TWIN}@{conns}")  # absent from runs made before it
            same = median([r["rps"] for r in twin]) / stream if twin else 1.0
            error = max([abs(same - 1), *_round_drift(runs[f"stream@{conns}"], twin or [])])
            noise = f"; `{TWIN}` {same:.3f} x stream" if twin else ""
            for size, floor in (("1000", 0.95), ("10000", 0.90)):
                rps = median([r["rps"] for r in runs.get(f"addon-{size}@{conns}", [])] or [0])
                counted = _counted_rate(results, f"addon-{size}")
                shown = "" if counted is None else f"its instructions allow {counted:.3f} x bare"
                # The shim `bare` loads is the bench's, charged to every configuration alike.
                alone = _counted_rate(results, f"addon-{size}", NO_SCRIPT)
                if shown and alone is not None:
                    shown += f" ({alone:.3f} x `{NO_SCRIPT}`)"
                # The twin's relative error, at the goal's scale.
                verdict = _judge(floor - rps / bare, error * floor, f"{error:.0%}")
                if verdict is True and bare < stream:
                    verdict = "not shown: `bare` measured slower than `stream`, which does more"
                elif counted is not None and counted < floor:
                    # The count leaves out the kernel's share, which streaming only adds to:
                    # what it allows is the most the router can reach.
                    verdict = f"not shown: {shown}" if verdict is True else f"**no**: {shown}"
                elif shown and verdict is not True:
                    verdict = f"{_verdict(verdict)}; {shown}"  # what the wall clock could not show
                rows.append(
                    (
                        f"throughput, {int(size):,} accounts, {conns} conn: >= {floor} x bare",
                        f"{rps / bare:.3f} x bare ({rps / stream:.3f} x stream{noise})",
                        verdict,
                    )
                )
    if "selection" in results:
        data = results["selection"]
        for strategy in ("fill_first", "capacity_weighted"):
            small, big = data.get(f"{strategy}@10"), data.get(f"{strategy}@10000")
            if small and big:
                plain = big["choose_us"] / small["choose_us"]
                learn = big["choose_and_learn_us"] / small["choose_and_learn_us"]
                rows.append(
                    (
                        f"decision time, {strategy}: 10,000 accounts <= 3 x 10 accounts",
                        f"{plain:.2f}x ({learn:.2f}x with a usage update)",
                        max(plain, learn) <= 3,
                    )
                )
    if "streaming" in results:
        data = results["streaming"]
        base = median(_all_of(data, "stream", "ttfb_ms"))
        twin_ms = median(_all_of(data, TWIN, "ttfb_ms")) - base if TWIN in data else 0.0
        noise = f"; `{TWIN}` {twin_ms:+.2f} ms" if TWIN in data else ""
        for name in sorted((n for n in data if n.startswith("addon-")), key=_order):
            ttfb = median(_all_of(data, name, "ttfb_ms"))
            delay = median([run["event_delay_median_ms"] for run in data[name]])
            rows.append(
                (
                    f"time to first byte, {name}: <= +1 ms over streaming mitmdump",
                    f"{ttfb - base:+.2f} ms; events arrive {delay:.2f} ms after they are "
                    f"sent{noise}",
                    _judge(ttfb - base - 1.0, abs(twin_ms), f"{abs(twin_ms):.2f} ms"),
                )
            )
    if "state" in results and "10000" in results["state"]:
        row = results["state"]["10000"]
        worst = max(row["max_stall_ms"], row["full_check_stall_ms"])
        idle = row["idle_stall_ms"]
        rows.append(
            (
                "event-loop stall from saving, 10,000 accounts: <= 5 ms",
                f"{worst:.2f} ms (idle noise {idle:.2f} ms, busy-thread floor "
                f"{row['busy_stall_ms']:.2f} ms; after another writer's change "
                f"{row['external_stall_ms']:.2f} ms)",
                # The machine only ever adds lateness: a stall under the goal is met as it is.
                True if worst <= 5.0 else _judge(worst - 5.0, idle, f"{idle:.2f} ms"),
            )
        )
    if "memory" in results:
        memory = results["memory"]
        first, last = memory["points"][0], memory["points"][-1]
        rows.append(
            (
                f"RSS from {first['requests']:,} to {last['requests']:,} requests: within 10 %",
                f"{memory['growth_pct']:+.1f} % ({first['rss_mib']:.0f} -> "
                f"{last['rss_mib']:.0f} MiB)",
                abs(memory["growth_pct"]) <= 10,
            )
        )
    if not rows:
        return []
    lines = ["### Goals", "", "| goal | this run | met |", "|---|---|---|"]
    lines += [f"| {goal} | {figure} | {_verdict(ok)} |" for goal, figure, ok in rows]
    return [*lines, ""]


def _counted_rate(results: dict[str, Any], name: str, base: str = "bare") -> float | None:
    """The rate, as a fraction of `base`'s, that the instruction counts allow `name` (the
    event loop is what limits a proxy's throughput); None when the run did not count both."""
    configs = results.get("instructions", {}).get("configs", {})
    if base not in configs or name not in configs:
        return None
    return float(
        configs[base]["instructions_per_request"] / configs[name]["instructions_per_request"]
    )


def _round_drift(stream: list[dict[str, Any]], twin: list[dict[str, Any]]) -> list[float]:
    """The twin's relative distance from `stream`'s rate in each round (none when the rounds
    do not pair): a median of the twin's ratio can sit at 1.0 while single rounds swing 30 %."""
    if len(stream) != len(twin):
        return []
    return [abs(t["rps"] / s["rps"] - 1) for s, t in zip(stream, twin, strict=True) if s["rps"]]


def _judge(over: float, noise: float, shown: str) -> bool | str:
    """A goal's verdict from how far the figure is over its limit (negative: under it) and
    how far this run's machine alone moved such a figure (an identical twin's distance from
    its baseline, or an idle loop's lateness): met or missed only by more than that."""
    if over <= -noise:
        return True
    if over > noise:
        return False
    return f"not shown: within this run's noise ({shown})"


def _verdict(ok: bool | str) -> str:
    if isinstance(ok, str):
        return ok
    return "yes" if ok else "**no**"


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _throughput_table(settings: Settings, data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    names = sorted({k.split("@")[0] for k in runs}, key=_order)
    lines = [
        "### Throughput and latency (mitmdump reverse mode, short SSE answer)",
        "",
        f"Medians of {settings.rounds} interleaved rounds of {settings.duration:.0f} s "
        "(after a warm-up). Ratios: req/s against `stream` (mitmdump streaming SSE, the fair "
        "baseline) and against `bare` (mitmdump buffering SSE, its default). Every configuration, "
        "`bare` too, loads the bench's shim (bench/shims/chatgpt.py)."
        + (
            f" `{TWIN}` is a second `stream`, identical, measured last in each round: its "
            "ratio to `stream` (1.000 on a quiet machine) is how far this run's machine moves "
            "a ratio."
            if TWIN in names
            else ""
        ),
        "",
        "| config | conns | req/s | vs stream | vs bare | p50 ms | p99 ms | proxy CPU ms "
        "per request | RSS MiB after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conns in settings.concurrency:
        base = {n: median([r["rps"] for r in runs.get(f"{n}@{conns}", [])]) for n in names}
        for name in names:
            rs = runs.get(f"{name}@{conns}", [])
            rps = median([r["rps"] for r in rs])
            lines.append(
                f"| {name} | {conns} | {rps:.0f} | {rps / base['stream']:.3f} | "
                f"{rps / base['bare']:.3f} | {median([r['p50_ms'] for r in rs]):.2f} | "
                f"{median([r['p99_ms'] for r in rs]):.2f} | {_cpu(rs)} | "
                f"{data['rss_mib'][name]:.0f} |"
            )
    per_round = []
    for conns in settings.concurrency:
        for name in names:
            if name.startswith("addon") or name == TWIN:
                mine = [r["rps"] for r in runs[f"{name}@{conns}"]]
                base = [r["rps"] for r in runs[f"stream@{conns}"]]
                ratios = [m / b for m, b in zip(mine, base, strict=False)]
                per_round.append(f"{name} x{conns}: " + ", ".join(f"{x:.2f}" for x in ratios))
    lines += ["", "Per-round ratios against `stream`: " + "; ".join(per_round) + ".", ""]
    return lines


def _cpu(runs: list[dict[str, Any]]) -> str:
    values = [r["cpu_ms_per_request"] for r in runs if r.get("cpu_ms_per_request")]
    return f"{median(values):.2f}" if values else "-"


def _order(name: str) -> tuple[int, int]:
    if name == NO_SCRIPT:
        return (0, 0)
    if name == "bare":
        return (0, 1)
    if name == "stream":
        return (1, 0)
    if name == "hooks":
        return (1, 1)
    if name == TWIN:
        return (3, 0)
    return (2, int(name.split("-")[1]))


def _streaming_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "### Streaming (events 300 ms apart)",
        "",
        "| config | first byte, median ms | vs stream ms | event delay median ms "
        "| event delay max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    names = sorted(data, key=_order)
    base = median(_all_of(data, "stream", "ttfb_ms"))
    for name in names:
        ttfb = median(_all_of(data, name, "ttfb_ms"))
        delay = median([r["event_delay_median_ms"] for r in data[name]])
        worst = max(r["event_delay_max_ms"] for r in data[name])
        lines.append(f"| {name} | {ttfb:.2f} | {ttfb - base:+.2f} | {delay:.2f} | {worst:.2f} |")
    return [*lines, ""]


def _all_of(data: dict[str, Any], name: str, key: str) -> list[float]:
    """Every measurement of `key` over the rounds of one configuration."""
    out: list[float] = []
    for run in data[name]:
        out += run[key] if isinstance(run[key], list) else [run[key]]
    return out


def _selection_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "### Selection (Pool.choose, in-process, best of 5 x 2,000 decisions)",
        "",
        "| strategy | accounts | us per decision | us with a usage update "
        "| O(n) reference scan us |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, row in data.items():
        strategy, size = key.split("@")
        lines.append(
            f"| {strategy} | {int(size):,} | {row['choose_us']:.1f} | "
            f"{row['choose_and_learn_us']:.1f} | {row['reference_scan_us']:.0f} |"
        )
    for strategy in ("fill_first", "capacity_weighted"):
        small, big = data.get(f"{strategy}@10"), data.get(f"{strategy}@10000")
        if small and big:
            lines.append("")
            lines.append(
                f"{strategy}: 10,000 accounts / 10 accounts = "
                f"{big['choose_us'] / small['choose_us']:.2f}x per decision, "
                f"{big['choose_and_learn_us'] / small['choose_and_learn_us']:.2f}x "
                "with a usage update."
            )
    return [*lines, ""]


def _state_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "### State file (save: Saver.save after 50 routed requests; stall: longest lateness of "
        "a 1 ms asyncio sleep during the save)",
        "",
        "| accounts | file MiB | load ms | first save ms | save ms | save CPU ms | "
        "full-check save ms | loop stall ms | full-check stall ms | idle loop noise ms | "
        "busy-thread floor ms | save interval s | after another writer: save ms | "
        "its loop stall ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, row in data.items():
        lines.append(
            f"| {int(size):,} | {row['file_mib']:.1f} | {row['load_ms']:.0f} | "
            f"{row['first_save_ms']:.0f} | {row['save_ms']:.0f} | {row['save_cpu_ms']:.0f} | "
            f"{row['full_check_save_ms']:.0f} | {row['max_stall_ms']:.2f} | "
            f"{row['full_check_stall_ms']:.2f} | {row['idle_stall_ms']:.2f} | "
            f"{row['busy_stall_ms']:.2f} | {row['interval_s']:.1f} | "
            f"{row['external_save_ms']:.0f} | {row['external_stall_ms']:.1f} |"
        )
    return [*lines, ""]


# -- main --------------------------------------------------------------------------------------
def _saved(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The results a --json run wrote, or the parser's error saying what is wrong with them."""
    try:
        results = json.loads(path.read_text())
    except OSError as e:
        parser.error(f"--render: cannot read {path}: {e.strerror}")
    except ValueError as e:
        parser.error(f"--render: {path} is not a --json file of the bench: {e}")
    if not isinstance(results, dict):
        parser.error(f"--render: {path} is not a --json file of the bench")
    if results.get("layout") != LAYOUT and ("throughput" in results or "instructions" in results):
        parser.error(
            f"--render: {path} was written by an older bench, whose `bare` loaded no script "
            "(the other configurations loaded the bench's shim): its ratios would be shown "
            "against another baseline than this report names. Run the bench again."
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the report of a --json file"
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    if args.render:
        results = _saved(parser, args.render)
        try:
            text = report(settings, results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            parser.error(
                f"--render: {args.render} does not hold the results of a bench run "
                f"({type(e).__name__}: {e})"
            )
        print(text)
        return 0
    sections = args.only or list(SECTIONS)
    results: dict[str, Any] = {
        "layout": LAYOUT,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": datetime.date.today().isoformat(),
    }
    started = time.monotonic()
    if "throughput" in sections or "streaming" in sections:
        with proxies(settings) as (configs, _upstream):
            if "throughput" in sections:
                results["throughput"] = throughput(settings, configs)
            if "streaming" in sections:
                results["streaming"] = streaming(settings, configs)
    steps: list[tuple[str, Callable[[Settings], dict[str, Any]]]] = [
        ("selection", selection_bench),
        ("state", state_bench),
        ("memory", memory_bench),
        ("instructions", lambda settings: instructions.instructions_bench(settings, log)),
    ]
    for name, step in steps:
        if name in sections:
            gc.collect()
            results[name] = step(settings)
    results["seconds"] = time.monotonic() - started
    text = report(settings, results)
    text += f"\nTotal time: {results['seconds'] / 60:.1f} min.\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0
