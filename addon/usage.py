"""Parse what the upstream says about an account's usage: headers, events, error bodies.

Everything here is total: any input gives a value or None, never an exception, and no value
that comes out is NaN, infinite, negative, above 100 or a reset time in the past.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A reset time further away than this is absurd (codex-lb uses the same bound).
MAX_RESET_AHEAD = 366 * 86400
# Without a reset time a limit still holds for a while: long enough not to hammer the upstream.
DEFAULT_COOLDOWN = 60

USAGE_LIMIT_TYPES = frozenset({"usage_limit_reached", "rate_limit_exceeded"})
QUOTA_TYPES = frozenset({"insufficient_quota", "usage_not_included", "quota_exceeded"})


@dataclass(frozen=True, slots=True)
class WindowReport:
    used_percent: float
    window_minutes: int | None = None
    reset_at: int | None = None


@dataclass(frozen=True, slots=True)
class UsageReport:
    primary: WindowReport | None = None
    secondary: WindowReport | None = None
    plan: str | None = None


@dataclass(frozen=True, slots=True)
class LimitHit:
    """The upstream refused the account: a usage/rate limit (429) or a quota error."""

    kind: str  # the upstream's error type, e.g. "usage_limit_reached"
    resets_at: int
    plan: str | None = None
    usage: UsageReport | None = None


def percent(value: Any) -> float | None:
    """A used percent, or None. Over 100 means exhausted: clamp, never store more."""
    number = _number(value)
    if number is None or number < 0:
        return None
    return min(abs(number), 100.0)  # abs: "-0" is 0.0, not -0.0 (shown as "-0%")


def reset_time(value: Any, now: float) -> int | None:
    """An absolute reset time in Unix seconds that lies ahead (and not absurdly far)."""
    number = _number(value)
    if number is None or not now < number <= now + MAX_RESET_AHEAD:
        return None
    return math.ceil(number)


def seconds_ahead(value: Any, now: float) -> int | None:
    number = _number(value)
    if number is None or not 0 < number <= MAX_RESET_AHEAD:
        return None
    # now + a tiny delay can round to now itself: the result must still lie ahead.
    return max(math.ceil(now + number), math.floor(now) + 1)


def _number(value: Any) -> float | None:
    if type(value) is float:  # the common case (a JSON number): checked cheaply
        return value if math.isfinite(value) else None
    if value is None:  # an absent header or field (float(None) would raise: ~1 us)
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        value = value.strip()
        if not value or len(value) > 40:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _minutes(value: Any) -> int | None:
    number = _number(value)
    if number is None or not 1 <= number <= 10**6:
        return None
    return int(number)


def _window(used: Any, minutes: Any, reset_at: Any, now: float) -> WindowReport | None:
    pct = percent(used)
    if pct is None:
        return None
    return WindowReport(pct, _minutes(minutes), reset_time(reset_at, now))


def from_headers(headers: Mapping[str, str], now: float) -> UsageReport | None:
    """The account's main windows from `x-codex-primary-*` / `x-codex-secondary-*` headers.

    Other families (`x-codex-other-...`, `x-<model>-primary-...`) are per-model limits and are
    deliberately not read.
    """
    windows = []
    for which in ("primary", "secondary"):
        prefix = f"x-codex-{which}-"
        windows.append(
            _window(
                headers.get(prefix + "used-percent"),
                headers.get(prefix + "window-minutes"),
                headers.get(prefix + "reset-at"),
                now,
            )
        )
    if windows == [None, None]:
        return None
    return UsageReport(windows[0], windows[1])


def _event_window(raw: Any, now: float) -> WindowReport | None:
    if not isinstance(raw, Mapping):
        return None
    reset = reset_time(raw.get("reset_at"), now)
    if reset is None:
        reset = seconds_ahead(raw.get("reset_after_seconds"), now)
    pct = percent(raw.get("used_percent"))
    if pct is None:
        return None
    return WindowReport(pct, _minutes(raw.get("window_minutes")), reset)


def _is_main_family(event: Mapping[str, Any]) -> bool:
    name = event.get("metered_limit_name", event.get("limit_name"))
    return name is None or name == "codex"


def from_event(event: Any, now: float) -> UsageReport | None:
    """A `codex.rate_limits` event (SSE data or WebSocket frame), already JSON-decoded."""
    if not isinstance(event, Mapping) or event.get("type") != "codex.rate_limits":
        return None
    if not _is_main_family(event):
        return None
    limits = event.get("rate_limits")
    if not isinstance(limits, Mapping):
        return None
    primary = _event_window(limits.get("primary"), now)
    secondary = _event_window(limits.get("secondary"), now)
    plan = event.get("plan_type")
    if primary is None and secondary is None:
        return None
    return UsageReport(primary, secondary, plan if isinstance(plan, str) else None)


def limit_from_error(error: Any, now: float, usage: UsageReport | None = None) -> LimitHit | None:
    """The `error` object of a 429/quota answer, as a block with its reset time."""
    if not isinstance(error, Mapping):
        return None
    kind = error.get("type")
    if not isinstance(kind, str) or kind not in USAGE_LIMIT_TYPES | QUOTA_TYPES:
        kind = error.get("code")
    if not isinstance(kind, str) or kind not in USAGE_LIMIT_TYPES | QUOTA_TYPES:
        return None
    resets = reset_time(error.get("resets_at"), now)
    if resets is None:
        resets = seconds_ahead(error.get("resets_in_seconds"), now)
    if resets is None:
        resets = int(now) + DEFAULT_COOLDOWN
    plan = error.get("plan_type")
    return LimitHit(kind, resets, plan if isinstance(plan, str) else None, usage)


def from_error_body(body: bytes | str, now: float) -> LimitHit | None:
    """An HTTP 429/403 body such as `{"error": {"type": "usage_limit_reached", ...}}`."""
    parsed = loads(body)
    if not isinstance(parsed, Mapping):
        return None
    return limit_from_error(parsed.get("error"), now)


def from_status_429(body: bytes | str, now: float) -> LimitHit:
    """A 429 always blocks for a while, even with an empty or unreadable body."""
    hit = from_error_body(body, now)
    return hit or LimitHit("rate_limited", int(now) + DEFAULT_COOLDOWN)


def from_frame(text: bytes | str, now: float) -> UsageReport | LimitHit | None:
    """A WebSocket text frame from the upstream: a rate-limits event or a 429 error frame."""
    if isinstance(text, bytes):
        if b"codex.rate_limits" not in text and b"error" not in text:
            return None  # the common case: a model event, not worth decoding
    elif "codex.rate_limits" not in text and "error" not in text:
        return None
    event = loads(text)
    if not isinstance(event, Mapping):
        return None
    if event.get("type") == "codex.rate_limits":
        return from_event(event, now)
    if event.get("type") == "error" and event.get("status_code") in (429, 403):
        headers = event.get("headers")
        usage = (
            from_headers({str(k).lower(): str(v) for k, v in headers.items()}, now)
            if isinstance(headers, Mapping)
            else None
        )
        hit = limit_from_error(event.get("error"), now, usage)
        if hit is None and event.get("status_code") == 429:
            hit = LimitHit("rate_limited", int(now) + DEFAULT_COOLDOWN, None, usage)
        return hit
    return None


def loads(data: bytes | str) -> Any:
    """json.loads that answers None instead of raising (and refuses absurd sizes)."""
    if len(data) > 4 * 1024 * 1024:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
