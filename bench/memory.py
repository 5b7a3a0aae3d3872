"""The router's memory after many routed requests, in-process (run by bench/run.py in a fresh
interpreter so nothing else it did counts).

The Router addon runs in a mitmproxy.test.taddons context (real options, real hooks, its state
file and saver task) and is driven with flows from mitmproxy.test.tflow: `request` (choose,
rewrite, affinity), `responseheaders` (usage from headers, SSE tap), the tap fed an SSE chunk
with a `codex.rate_limits` event, `response`. Each request belongs to one of N conversations.
RSS is read after a gc at each checkpoint. End to end through mitmdump this would take about
10 minutes at ~250 requests/s on a 2-core machine; in-process it takes about one.

It also times the interpreter's full garbage collections during the run (each stops the event
loop for as long as it takes to walk every object it tracks), as shipped and, with `settle=0`,
with addon/heap.py's settling turned off.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sse(primary: float) -> bytes:
    event = {
        "type": "codex.rate_limits",
        "rate_limits": {
            "primary": {"used_percent": primary, "window_minutes": 300},
            "secondary": {"used_percent": primary / 3, "window_minutes": 10080},
        },
    }
    return (
        b'event: response.created\ndata: {"type":"response.created"}\n\n'
        + b"event: codex.rate_limits\ndata: "
        + json.dumps(event).encode()
        + b'\n\nevent: response.completed\ndata: {"type":"response.completed"}\n\n'
    )


class FullCollections:
    """Times the collections of the oldest generation the interpreter starts by itself."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.paused = True
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if self.paused or info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.durations.append(time.perf_counter() - self._started)

    def collect(self) -> None:
        """The bench's own full collection (before reading RSS): not counted."""
        was, self.paused = self.paused, True
        gc.collect()
        self.paused = was


async def drive(
    requests: int, conversations: int, accounts: int, settle: bool = True
) -> dict[str, Any]:
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from addon import heap
    from addon.router import Router
    from bench.procs import make_accounts, write_state

    if not settle:  # before the Router exists: its saver takes heap.settle when created
        heap.settle = lambda collect=False: None  # type: ignore[assignment]

    logging.getLogger("addon").setLevel(logging.WARNING)  # a log line per request: not memory
    tmp = Path(tempfile.mkdtemp(prefix="qr-bench-memory-"))
    state = write_state(tmp / "router-state.toml", make_accounts(accounts))
    router = Router()
    points = []
    collections = FullCollections()
    gc.callbacks.append(collections)
    with taddons.context(router) as tctx:
        tctx.configure(router, router_state=str(state), confdir=str(tmp / "conf"))
        router.running()  # starts the saver task, as in mitmdump
        collections.paused = False
        checkpoints = {requests // 2, requests}
        started = time.perf_counter()
        body = b'{"model":"gpt-5-codex","input":[],"stream":true}'
        for i in range(1, requests + 1):
            request = http.Request.make(
                "POST",
                "https://chatgpt.com/backend-api/codex/responses",
                body,
                {
                    "content-type": "application/json",
                    "session-id": f"conversation-{i % conversations}",
                    "authorization": "Bearer client-placeholder-token",
                },
            )
            flow = tflow.tflow(req=request)
            await router.request(flow)
            primary = min(99.0, 1 + (i % 2000) / 25)
            flow.response = http.Response.make(
                200,
                b"",
                {
                    "content-type": "text/event-stream",
                    "x-codex-primary-used-percent": str(primary),
                    "x-codex-primary-window-minutes": "300",
                },
            )
            router.responseheaders(flow)
            stream = flow.response.stream
            if callable(stream):
                stream(sse(primary))
                stream(b"")
            await router.response(flow)
            if i % 1000 == 0:
                await asyncio.sleep(0)  # let the saver run now and then
            if i in checkpoints:
                await asyncio.sleep(0.6)  # a save in between
                collections.collect()
                points.append(
                    {
                        "requests": i,
                        "rss_mib": rss_mib(),
                        "affinity": len(router.pool.affinity.table),
                        "history_series": len(router.pool.history.series),
                        "pristine": len(router._pristine),
                        "seconds": time.perf_counter() - started,
                    }
                )
        collections.paused = True
        scanned, frozen = len(gc.get_objects()), gc.get_freeze_count()
        router.done()
    growth = (points[-1]["rss_mib"] / points[0]["rss_mib"] - 1) * 100
    durations = collections.durations
    return {
        "requests": requests,
        "conversations": conversations,
        "accounts": accounts,
        "points": points,
        "growth_pct": growth,
        "settled": settle,
        "full_collections": len(durations),
        "longest_full_ms": max(durations) * 1000 if durations else 0.0,
        "median_full_ms": statistics.median(durations) * 1000 if durations else 0.0,
        "full_ms": [round(d * 1000, 2) for d in durations],
        "scanned_objects": scanned,
        "frozen_objects": frozen,
    }


def main(
    requests: int = 100_000, conversations: int = 10_000, accounts: int = 10_000, settle: int = 1
) -> None:
    result = asyncio.run(drive(requests, conversations, accounts, bool(settle)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
