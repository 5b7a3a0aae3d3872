"""Recent usage per account, for the dashboard's chart. Bounded: memory never grows."""

from __future__ import annotations

from collections import deque

MAX_AGE = 6 * 3600  # seconds of history kept
SPACING = 30.0  # at most one point per account per this many seconds


class History:
    def __init__(self, max_age: float = MAX_AGE, spacing: float = SPACING) -> None:
        self.max_age = max_age
        self.spacing = spacing
        self.series: dict[str, deque[tuple[float, float | None, float | None]]] = {}

    def add(self, account_id: str, now: float, primary: float | None, secondary: float | None):  # type: ignore[no-untyped-def]
        points = self.series.setdefault(
            account_id, deque(maxlen=int(self.max_age / self.spacing) + 1)
        )
        if points and now - points[-1][0] < self.spacing:
            points[-1] = (points[-1][0], primary, secondary)  # keep the latest value
        else:
            points.append((now, primary, secondary))

    def points(self, account_id: str, now: float) -> list[tuple[float, float | None, float | None]]:
        return [p for p in self.series.get(account_id, ()) if now - p[0] <= self.max_age]
