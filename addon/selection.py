"""Which accounts may serve a request, and which one each strategy picks. Pure functions."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from enum import StrEnum

from addon.state import Account, Plan, Status
from addon.usage import DEFAULT_COOLDOWN


class Strategy(StrEnum):
    FILL_FIRST = "fill_first"
    CAPACITY_WEIGHTED = "capacity_weighted"


# Weekly capacity in credits by plan (codex-lb's estimates); unknown plans count as free.
WEEKLY_CAPACITY: dict[Plan, float] = {
    Plan.FREE: 1134.0,
    Plan.PLUS: 7560.0,
    Plan.TEAM: 7560.0,
    Plan.BUSINESS: 7560.0,
    Plan.EDU: 7560.0,
    Plan.PROLITE: 37800.0,
    Plan.PRO: 50400.0,
    Plan.ENTERPRISE: 50400.0,
    Plan.UNKNOWN: 1134.0,
}


def used(account: Account, which: str, now: float | None = None) -> float:
    """A window's used percent; 0 once the window has reset (given `now`): stored usage from
    before a reset must not keep an account capped or unweighted (a stale block)."""
    window = account.primary if which == "primary" else account.secondary
    if window is None or (now is not None and window.reset_at and window.reset_at <= now):
        return 0.0
    return window.used_percent


def blocked_until(account: Account, now: float) -> int | None:
    """When the upstream will take this account again, if it is blocked now."""
    ends = []
    if account.block and account.block.until > now:
        ends.append(account.block.until)
    for window in (account.primary, account.secondary):
        if window is None or window.used_percent < 100:
            continue
        # An exhausted window without a reset time is retried after a cooldown.
        until = window.reset_at or int(window.observed_at) + DEFAULT_COOLDOWN
        if until > now:
            ends.append(until)
    return max(ends) if ends else None


def skip_reason(account: Account, now: float) -> str | None:
    """Why this account may not serve now, or None when it is eligible."""
    if account.status is Status.PAUSED:
        return "paused"
    if account.status is Status.REAUTH_REQUIRED:
        return "needs re-login" + (f": {account.status_reason}" if account.status_reason else "")
    if blocked_until(account, now) is not None:
        return "rate limited"
    if account.backoff is not None and account.backoff.until > now:
        if account.backoff.cause:
            return f"backing off after {account.backoff.errors} error(s): {account.backoff.cause}"
        return f"backing off after {account.backoff.errors} upstream error(s)"
    return None


def capped(account: Account, now: float | None = None) -> bool:
    return (
        used(account, "primary", now) >= account.max_primary_percent
        or used(account, "secondary", now) >= account.max_secondary_percent
    )


def candidates(
    accounts: Sequence[Account], now: float, exclude: Collection[str] = ()
) -> list[Account]:
    """Eligible accounts in the best priority tier, preferring those under their caps."""
    eligible = [a for a in accounts if a.id not in exclude and skip_reason(a, now) is None]
    uncapped = [a for a in eligible if not capped(a, now)]
    pool = uncapped or eligible
    if not pool:
        return []
    best = min(a.priority for a in pool)
    return [a for a in pool if a.priority == best]


def fill_first_key(account: Account, now: float | None = None) -> tuple[float, float, str]:
    """Smallest key wins: the fullest 5 h window, then the fullest weekly window, then name."""
    return (-used(account, "primary", now), -used(account, "secondary", now), account.name)


def weight(account: Account, now: float | None = None) -> float:
    # The weekly window; without one, the 5 h window stands in; without either, unused.
    which = "secondary" if account.secondary is not None else "primary"
    fraction = used(account, which, now)
    return WEEKLY_CAPACITY[account.plan] * (1 - min(fraction, 100.0) / 100)


def least_used_key(account: Account, now: float | None = None) -> tuple[float, float, str]:
    return (used(account, "secondary", now), used(account, "primary", now), account.name)


def pick(
    strategy: Strategy,
    pool: Sequence[Account],
    rng: random.Random | None = None,
    now: float | None = None,
) -> Account | None:
    if not pool:
        return None
    if strategy is Strategy.FILL_FIRST:
        return min(pool, key=lambda a: fill_first_key(a, now))
    weights = [weight(a, now) for a in pool]
    if sum(weights) <= 0:
        return min(pool, key=lambda a: least_used_key(a, now))
    return (rng or random).choices(pool, weights=weights, k=1)[0]


def choose(
    strategy: Strategy,
    accounts: Sequence[Account],
    now: float,
    rng: random.Random | None = None,
    exclude: Collection[str] = (),
) -> Account | None:
    return pick(strategy, candidates(accounts, now, exclude), rng, now)
