"""The load generator: a separate process with keep-alive HTTP/1.1 connections (raw asyncio).

    python -m bench.loadgen load --port P --conns 8 --duration 6 --warmup 1
    python -m bench.loadgen stream --port P --requests 10
    python -m bench.loadgen count --port P --conns 8 --requests 400

`load` sends POST /backend-api/codex/responses back to back on each connection (each request a
new conversation: `session-id` differs, so the router makes a full choice every time, its worst
case) and prints JSON: requests completed per second in the measured window, latency p50/p99.
`count` sends exactly that many requests, split over the connections, and prints how many
succeeded and how long it took. `stream` sends one request at a time and prints the time to the
first body byte and, for every event, the delay between the upstream sending it ("sent" in the
event) and its arrival here.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from typing import Any

PATH = "/backend-api/codex/responses"
BODY = json.dumps(
    {"model": "gpt-5-codex", "instructions": "bench", "input": [], "stream": True}
).encode()


def request(port: int, conversation: str, gap: float = 0.0) -> bytes:
    extra = f"x-bench-gap: {gap}\r\n" if gap else ""
    return (
        f"POST {PATH} HTTP/1.1\r\n"
        f"{extra}"
        f"host: 127.0.0.1:{port}\r\n"
        "content-type: application/json\r\n"
        "accept: text/event-stream\r\n"
        "originator: codex_cli_rs\r\n"
        "authorization: Bearer client-placeholder-token\r\n"
        f"session-id: {conversation}\r\n"
        f"content-length: {len(BODY)}\r\n"
        "\r\n"
    ).encode() + BODY


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> Any:
    """Yields body pieces as they arrive."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            yield (await reader.readexactly(size + 2))[:-2]
    length = int(headers.get("content-length", "0") or 0)
    if length:
        yield await reader.readexactly(length)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, conversation: str
) -> int:
    """One request and its whole answer on a kept-alive connection; the answer's status."""
    writer.write(request(port, conversation))
    status, headers = await read_head(reader)
    async for _ in read_body(reader, headers):
        pass
    return status


# -- load --------------------------------------------------------------------------------------
async def load(port: int, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    tag = os.urandom(4).hex()
    counter = itertools.count()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                status = await exchange(reader, writer, port, f"bench-{tag}-{next(counter)}")
                done = time.perf_counter()
                if status != 200:
                    errors += 1
                elif sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(conns)))
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


# -- count -------------------------------------------------------------------------------------
async def count(port: int, conns: int, requests: int) -> dict[str, Any]:
    tag = os.urandom(4).hex()
    counter = itertools.count()
    ok = errors = 0
    start = time.perf_counter()

    async def connection(share: int) -> None:
        nonlocal ok, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(share):
                if await exchange(reader, writer, port, f"count-{tag}-{next(counter)}") == 200:
                    ok += 1
                else:
                    errors += 1
        finally:
            writer.close()

    shares = [requests // conns + (i < requests % conns) for i in range(conns)]
    await asyncio.gather(*(connection(share) for share in shares if share))
    return {"requests": ok, "errors": errors, "seconds": time.perf_counter() - start}


# -- stream ------------------------------------------------------------------------------------
async def stream(port: int, requests: int, gap: float) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    first_bytes: list[float] = []
    delays: list[float] = []
    try:
        for i in range(requests):
            sent = time.perf_counter()
            writer.write(request(port, f"stream-{os.getpid()}-{i}", gap))
            status, headers = await read_head(reader)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            pending = b""
            first = None
            async for piece in read_body(reader, headers):
                arrived = time.time()
                if first is None:
                    first = time.perf_counter() - sent
                pending += piece
                while b"\n\n" in pending:
                    raw, pending = pending.split(b"\n\n", 1)
                    for line in raw.split(b"\n"):
                        if line.startswith(b"data:"):
                            event = json.loads(line[5:])
                            if event.get("seq", 0) > 0:  # events after the first
                                delays.append(arrived - event["sent"])
            assert first is not None
            first_bytes.append(first)
    finally:
        writer.close()
    return {
        "requests": requests,
        "ttfb_ms": [round(x * 1000, 3) for x in first_bytes],
        "ttfb_median_ms": statistics.median(first_bytes) * 1000,
        "event_delay_median_ms": statistics.median(delays) * 1000 if delays else None,
        "event_delay_max_ms": max(delays) * 1000 if delays else None,
        "events": len(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["load", "count", "stream"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.3, help="stream: seconds between events")
    args = parser.parse_args()
    if args.mode == "load":
        result = asyncio.run(load(args.port, args.conns, args.duration, args.warmup))
    elif args.mode == "count":
        result = asyncio.run(count(args.port, args.conns, args.requests))
    else:
        result = asyncio.run(stream(args.port, args.requests, args.gap))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
