"""A fast local stand-in for the Codex backend: every request gets a short SSE answer.

`python -m bench.upstream [--gap SECONDS] [--events N]` prints `port N` and serves until killed.
Raw asyncio (no framework) so that it costs little next to the proxy under test.

The answer looks like the real one to the router: `x-codex-primary-*` / `x-codex-secondary-*`
usage headers and a `codex.rate_limits` event, with a used percent that grows with the number
of requests each account (the `chatgpt-account-id` header) has made, so the router keeps
learning usage and re-ordering its pool. With `--gap` (or an `x-bench-gap: SECONDS` request
header), events are sent that many seconds apart and carry the time they were sent (`"sent"`),
for measuring per-event delay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter

USAGE_STEP = 0.05  # percent per request on one account (1 % per 20 requests)
# A window's reset time is fixed while the window lasts, as Codex's is: the router must not see
# a new window every second.
RESET_AT = int(time.time()) + 3600


def _event(kind: str, data: dict[str, object]) -> bytes:
    body = f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(body), body)


class Upstream(asyncio.Protocol):
    def __init__(self, counts: Counter[str], gap: float, events: int) -> None:
        self.counts = counts
        self.gap = gap
        self.events = events
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            gap = float(headers.get("x-bench-gap", "") or self.gap)
            self.answer(headers.get("chatgpt-account-id", ""), gap)

    def answer(self, account: str, gap: float) -> None:
        assert self.transport is not None
        self.counts[account] += 1
        primary = min(99.0, 1 + self.counts[account] * USAGE_STEP)
        secondary = round(primary / 3, 2)
        reset = RESET_AT
        head = (
            "HTTP/1.1 200 OK\r\n"
            "content-type: text/event-stream\r\n"
            "cache-control: no-cache\r\n"
            "transfer-encoding: chunked\r\n"
            f"x-codex-primary-used-percent: {primary}\r\n"
            "x-codex-primary-window-minutes: 300\r\n"
            f"x-codex-primary-reset-at: {reset}\r\n"
            f"x-codex-secondary-used-percent: {secondary}\r\n"
            "x-codex-secondary-window-minutes: 10080\r\n"
            f"x-codex-secondary-reset-at: {reset + 86400}\r\n"
            "\r\n"
        ).encode()
        limits = {
            "rate_limits": {
                "primary": {"used_percent": primary, "window_minutes": 300, "reset_at": reset},
                "secondary": {
                    "used_percent": secondary,
                    "window_minutes": 10080,
                    "reset_at": reset + 86400,
                },
            }
        }
        events = [
            ("response.created", {"response": {"id": "resp_bench"}}),
            ("codex.rate_limits", limits),
            ("response.output_text.delta", {"delta": "Hello from the bench upstream."}),
            ("response.completed", {"response": {"id": "resp_bench", "status": "completed"}}),
        ]
        if not gap:
            body = b"".join(_event(kind, data) for kind, data in events)
            self.transport.write(head + body + b"0\r\n\r\n")
            return
        asyncio.get_running_loop().create_task(self.slowly(head, events, gap))

    async def slowly(
        self, head: bytes, events: list[tuple[str, dict[str, object]]], gap: float
    ) -> None:
        assert self.transport is not None
        self.transport.write(head)
        for i in range(self.events):
            if i:
                await asyncio.sleep(gap)
            kind, data = events[min(i, len(events) - 1)]
            self.transport.write(_event(kind, {**data, "seq": i, "sent": time.time()}))
        self.transport.write(b"0\r\n\r\n")


async def serve(gap: float, events: int) -> None:
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Upstream(counts, gap, events), "127.0.0.1", 0, backlog=512
    )
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    parent = os.getppid()
    async with server:
        while os.getppid() == parent:  # never outlive the benchmark that started it
            await asyncio.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--events", type=int, default=4, help="events per answer (with --gap)")
    args = parser.parse_args()
    asyncio.run(serve(args.gap, args.events))


if __name__ == "__main__":
    main()
