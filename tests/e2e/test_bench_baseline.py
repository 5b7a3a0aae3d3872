"""The bench's fair baseline (bench/shims/stream.py) and its `hooks` configuration (the same,
with the router's hooks, empty, in one script) through a real mitmdump: each streams SSE, and
keeps mitmproxy's per-answer "Streaming response" line out of the log, as the router does, so
that the bench does not charge that line to the baselines alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.procs import Proxy, Upstream, hooks_proxy, loadgen, stream_proxy

pytestmark = pytest.mark.e2e

GAP = 0.3  # seconds between the upstream's events


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    upstream = Upstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(params=[stream_proxy, hooks_proxy], ids=["stream", "hooks"])
def baseline(upstream: Upstream, request: pytest.FixtureRequest) -> Iterator[Proxy]:
    proxy = request.param("baseline", upstream.port).start()
    yield proxy
    proxy.stop()


def test_the_baseline_streams_without_mitmproxys_line_per_answer(baseline: Proxy) -> None:
    result = loadgen("stream", baseline.port, requests=2, gap=GAP)
    # Buffered, the first byte would come after every event: at least 3 gaps.
    assert result["ttfb_median_ms"] < GAP * 1000
    assert result["events"] >= 4
    log = baseline.log.read_text()
    assert "POST" in log  # the proxy logs, and logged these requests
    assert "Streaming response from" not in log
