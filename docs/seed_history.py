"""Docs only: backfill quota-router's in-memory usage history for the dashboard screenshot.

The history behind the dashboard's chart lives in memory and fills as requests flow; a
screenshot of a few hours of it would take a few hours. docs/screenshots.py loads this script
after the router (`-s addon/router.py -s docs/seed_history.py`) to draw the past from the
shapes below; everything else in the screenshot is live. Never load it for real use.
"""

from __future__ import annotations

import itertools
import logging
import time

from mitmproxy import ctx

logger = logging.getLogger(__name__)

STEP_MINUTES = 5
# Per account name: (hours ago, 5 h used %, weekly used %) key points, oldest first; a point with
# a lower 5 h value than the one before is a window reset.
SHAPES: dict[str, list[tuple[float, float, float]]] = {
    "work": [(5.5, 0, 22), (4.5, 8, 25), (3.0, 21, 29), (1.5, 41, 33), (0.1, 58, 36)],
    "home": [(5.5, 30, 3), (2.25, 64, 5), (2.2, 0, 5), (0.1, 10, 5)],
    "spare": [(5.5, 10, 70), (3.0, 45, 80), (1.2, 92, 90), (0.85, 100, 93)],
    "lapsed": [(5.5, 12, 50), (3.5, 30, 55), (2.5, 34, 56)],
}


def _between(shape: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Points every STEP_MINUTES along straight lines between the key points."""
    out = []
    for (h0, p0, s0), (h1, p1, s1) in itertools.pairwise(shape):
        if p1 < p0:  # a reset: a step down, not a slope
            out.append((h0, p0, s0))
            continue
        steps = max(1, round((h0 - h1) * 60 / STEP_MINUTES))
        for i in range(steps):
            f = i / steps
            out.append((h0 + (h1 - h0) * f, p0 + (p1 - p0) * f, s0 + (s1 - s0) * f))
    return [*out, *shape[-1:]]


class SeedHistory:
    def running(self) -> None:
        router = ctx.master.addons.get("router")
        if router is None:
            logger.error("seed_history: load it after addon/router.py")
            return
        now = time.time()
        for account in router.pool.accounts:
            for hours, primary, secondary in _between(SHAPES.get(account.name, [])):
                router.pool.history.add(
                    account.id, now - hours * 3600, round(primary, 1), round(secondary, 1)
                )
        logger.info("seed_history: backfilled the usage history (docs screenshot only)")


addons = [SeedHistory()]
