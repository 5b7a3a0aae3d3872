"""Recent usage per account, for the dashboard's chart. Bounded: memory never grows.

Each account keeps at most one point per `spacing` seconds (a newer report within that time
replaces the values of the last point, so the latest value always shows) and only the points of
the last `max_age` seconds; an account that reports nothing for `max_age` is forgotten.
"""

from __future__ import annotations

from collections import deque

MAX_AGE = 6 * 3600  # seconds of history kept
SPACING = 30.0  # at most one point per account per this many seconds

Point = tuple[float, float | None, float | None]  # (time, 5 h used %, weekly used %)


class History:
    def __init__(self, max_age: float = MAX_AGE, spacing: float = SPACING) -> None:
        if max_age <= 0 or spacing <= 0:
            raise ValueError("max_age and spacing must be positive")
        self.max_age = max_age
        self.spacing = spacing
        self.series: dict[str, deque[Point]] = {}

    @property
    def max_points(self) -> int:
        return int(self.max_age / self.spacing) + 1

    def add(
        self, account_id: str, now: float, primary: float | None, secondary: float | None
    ) -> None:
        series = self.series
        points = series.pop(account_id, None)
        if points is None:
            points = deque(maxlen=self.max_points)
        # (Re-)inserted last: the series stay ordered by their latest report, so the quiet
        # ones are found at the front instead of by scanning every account per report.
        series[account_id] = points
        if points and now - points[-1][0] < self.spacing:
            points[-1] = (points[-1][0], primary, secondary)  # keep the latest value
            return
        points.append((now, primary, secondary))
        self._forget_quiet(now)

    def _forget_quiet(self, now: float) -> None:
        """Drop the series of accounts that reported nothing for max_age (removed ones)."""
        series = self.series
        while series:
            key = next(iter(series))
            if now - series[key][-1][0] <= self.max_age:
                break
            del series[key]

    def forget(self, account_id: str) -> None:
        self.series.pop(account_id, None)

    def points(self, account_id: str, now: float) -> list[Point]:
        """The account's points of the last max_age seconds, oldest first."""
        # tuple() copies the deque in one step: safe even if another thread appends meanwhile.
        points = tuple(self.series.get(account_id, ()))
        return [p for p in points if now - p[0] <= self.max_age]
