"""selection.py: eligibility, priority tiers, caps, fill_first and capacity_weighted."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from addon import selection
from addon.selection import WEEKLY_CAPACITY, Strategy, blocked_until, choose, skip_reason
from addon.state import Account, Plan, Status
from addon.usage import DEFAULT_COOLDOWN

if TYPE_CHECKING:
    from conftest import AccountFactory

FILL = Strategy.FILL_FIRST
WEIGHTED = Strategy.CAPACITY_WEIGHTED


def names(accounts: list[Account]) -> list[str]:
    return [a.name for a in accounts]


def fill_first(accounts: list[Account], now: float) -> str | None:
    chosen = choose(FILL, accounts, now)
    return chosen.name if chosen else None


def draws(accounts: list[Account], now: float, rng: random.Random, n: int) -> Counter[str]:
    """How often capacity_weighted chose each account in n choices."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        chosen = choose(WEIGHTED, accounts, now, rng)
        assert chosen is not None
        counts[chosen.name] += 1
    return counts


class NoRandom(random.Random):
    """An rng that fails the test if a draw is made."""

    def choices(self, *args: object, **kwargs: object) -> list[Account]:  # type: ignore[override]
        raise AssertionError("a deterministic choice was expected, not a draw")


# -- fill_first ------------------------------------------------------------------------------


def test_fill_first_picks_the_fullest_5h_window(make_account: AccountFactory, now: float) -> None:
    pool = [
        make_account("A", primary=30),
        make_account("B", primary=5),
        make_account("C", primary=0),
    ]
    assert fill_first(pool, now) == "A"


def test_fill_first_is_stable_across_calls_and_orders(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("A", primary=30),
        make_account("B", primary=5),
        make_account("C", primary=0),
    ]
    assert {fill_first(pool, now) for _ in range(50)} == {"A"}
    assert {fill_first(list(order), now) for order in itertools.permutations(pool)} == {"A"}


@pytest.mark.parametrize(
    "leave",
    [
        {"block_until": 600},  # a 429 said so (seconds from now)
        {"primary": 100.0},  # its 5 h window is exhausted
        {"secondary": 100.0},  # its weekly window is exhausted
        {"status": Status.PAUSED},
        {"status": Status.REAUTH_REQUIRED},
    ],
    ids=["rate_limited", "primary_exhausted", "secondary_exhausted", "paused", "reauth"],
)
def test_fill_first_moves_to_the_next_highest_when_the_pick_leaves(
    make_account: AccountFactory, now: float, leave: dict[str, object]
) -> None:
    a = {"primary": 30.0} | leave
    if "block_until" in a:
        a["block_until"] = int(now) + 600
    pool = [make_account("A", **a), make_account("B", primary=5), make_account("C", primary=0)]
    assert fill_first(pool, now) == "B"


def test_fill_first_breaks_a_primary_tie_by_the_fuller_week(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("x29", primary=99, secondary=29),
        make_account("y98", primary=99, secondary=98),
        make_account("z93", primary=99, secondary=93),
    ]
    assert fill_first(pool, now) == "y98"


def test_fill_first_breaks_a_full_tie_by_name(make_account: AccountFactory, now: float) -> None:
    pool = [
        make_account("charlie", primary=40, secondary=10),
        make_account("alpha", primary=40, secondary=10),
        make_account("bravo", primary=40, secondary=10),
    ]
    for order in itertools.permutations(pool):
        assert fill_first(list(order), now) == "alpha"


def test_fill_first_counts_unknown_usage_as_zero(make_account: AccountFactory, now: float) -> None:
    assert fill_first([make_account("a"), make_account("b", primary=0.5)], now) == "b"
    # unknown == 0: a tie, decided by name
    assert fill_first([make_account("b"), make_account("a", primary=0.0)], now) == "a"
    assert fill_first([make_account("a", primary=0.0), make_account("b")], now) == "a"
    # unknown weekly usage is 0 in the tie-break too
    pool = [make_account("a", primary=50), make_account("b", primary=50, secondary=1)]
    assert fill_first(pool, now) == "b"


def test_fill_first_never_draws(make_account: AccountFactory, now: float) -> None:
    pool = [make_account("a", primary=10), make_account("b", primary=20)]
    chosen = choose(FILL, pool, now, NoRandom())
    assert chosen is not None and chosen.name == "b"


# -- eligibility -----------------------------------------------------------------------------


def test_an_active_account_with_headroom_is_eligible(
    make_account: AccountFactory, now: float
) -> None:
    account = make_account(primary=99.9, secondary=99.9)
    assert skip_reason(account, now) is None
    assert blocked_until(account, now) is None


def test_paused_and_reauth_accounts_are_never_eligible(
    make_account: AccountFactory, now: float
) -> None:
    assert skip_reason(make_account(status=Status.PAUSED), now) == "paused"
    reason = skip_reason(
        make_account(status=Status.REAUTH_REQUIRED, status_reason="refresh_token_reused"), now
    )
    assert reason is not None
    assert "re-login" in reason and "refresh_token_reused" in reason
    assert choose(FILL, [make_account(status=Status.PAUSED)], now) is None
    assert choose(FILL, [make_account(status=Status.REAUTH_REQUIRED)], now) is None


def test_a_block_holds_until_its_time(make_account: AccountFactory, now: float) -> None:
    account = make_account(block_until=int(now) + 300)
    assert blocked_until(account, now) == int(now) + 300
    assert skip_reason(account, now) == "rate limited"
    assert choose(FILL, [account], now) is None
    assert blocked_until(account, now + 300) is None
    assert choose(FILL, [account], now + 300) is account


@pytest.mark.parametrize("which", ["primary", "secondary"])
def test_an_exhausted_window_blocks_until_its_reset(
    make_account: AccountFactory, now: float, which: str
) -> None:
    reset = int(now) + 1234
    account = make_account(**{which: 100.0, f"{which}_reset_at": reset})
    assert blocked_until(account, now) == reset
    assert choose(FILL, [account], reset - 1) is None
    assert choose(FILL, [account], reset) is account


def test_an_exhausted_window_without_a_reset_time_blocks_for_a_cooldown(
    make_account: AccountFactory, now: float
) -> None:
    account = make_account(primary=100.0, primary_reset_at=None, observed_at=now)
    assert blocked_until(account, now) == int(now) + DEFAULT_COOLDOWN
    assert blocked_until(account, now + DEFAULT_COOLDOWN) is None


def test_an_exhausted_window_that_already_reset_does_not_block(
    make_account: AccountFactory, now: float
) -> None:
    account = make_account(primary=100.0, primary_reset_at=int(now) - 1)
    assert blocked_until(account, now) is None


def test_the_latest_of_several_blocks_wins(make_account: AccountFactory, now: float) -> None:
    account = make_account(
        primary=100.0,
        primary_reset_at=int(now) + 100,
        secondary=100.0,
        secondary_reset_at=int(now) + 9000,
        block_until=int(now) + 500,
    )
    assert blocked_until(account, now) == int(now) + 9000


def test_nothing_eligible_gives_none(make_account: AccountFactory, now: float) -> None:
    assert choose(FILL, [], now) is None
    assert choose(WEIGHTED, [make_account(block_until=int(now) + 5)], now, random.Random(1)) is None


# -- priority tiers and caps -----------------------------------------------------------------


def test_the_best_priority_tier_is_served_first(make_account: AccountFactory, now: float) -> None:
    pool = [
        make_account("fuller", primary=90, priority=1),
        make_account("preferred", primary=10, priority=0),
        make_account("last", primary=95, priority=5),
    ]
    assert fill_first(pool, now) == "preferred"
    assert names(selection.candidates(pool, now)) == ["preferred"]


def test_the_next_tier_serves_when_the_best_tier_is_ineligible(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("p0", priority=0, status=Status.PAUSED),
        make_account("p0b", priority=0, block_until=int(now) + 60),
        make_account("p1-low", primary=10, priority=1),
        make_account("p1-high", primary=20, priority=1),
        make_account("p2", primary=99, priority=2),
    ]
    assert fill_first(pool, now) == "p1-high"


def test_capacity_weighted_draws_only_within_the_best_tier(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("p0", plan=Plan.PLUS, priority=0),
        make_account("p1", plan=Plan.PRO, priority=1),
    ]
    rng = random.Random(7)
    assert set(draws(pool, now, rng, 300)) == {"p0"}


@pytest.mark.parametrize(
    ("capped", "cap"),
    [
        ({"primary": 75.0}, {"max_primary_percent": 70.0}),
        ({"primary": 70.0}, {"max_primary_percent": 70.0}),  # at the cap counts as capped
        ({"secondary": 81.0}, {"max_secondary_percent": 80.0}),
    ],
)
def test_a_capped_account_waits_while_an_uncapped_one_is_eligible(
    make_account: AccountFactory,
    now: float,
    capped: dict[str, float],
    cap: dict[str, float],
) -> None:
    pool = [make_account("capped", **capped, **cap), make_account("free", primary=10)]
    assert fill_first(pool, now) == "free"
    rng = random.Random(3)
    assert set(draws(pool, now, rng, 200)) == {"free"}


def test_capped_accounts_still_serve_when_nothing_else_can(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("capped", primary=75, max_primary_percent=70),
        make_account("limited", primary=5, block_until=int(now) + 60),
    ]
    assert fill_first(pool, now) == "capped"


def test_caps_win_over_priority_tiers(make_account: AccountFactory, now: float) -> None:
    pool = [
        make_account("preferred", primary=75, max_primary_percent=70, priority=0),
        make_account("fallback", primary=10, priority=1),
    ]
    assert fill_first(pool, now) == "fallback"


def test_a_cap_below_usage_does_not_matter_when_usage_is_under_it(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("a", primary=69.9, max_primary_percent=70),
        make_account("b", primary=10),
    ]
    assert fill_first(pool, now) == "a"


def test_a_cap_stops_holding_once_its_window_has_reset(
    make_account: AccountFactory, now: float
) -> None:
    # The 5 h window that hit the cap reset a minute ago: the account has headroom again, so
    # its tier is served. (Stale usage must not keep it out; the router only learns its new
    # usage when the account serves a request.)
    pool = [
        make_account(
            "preferred",
            primary=90,
            primary_reset_at=int(now) - 60,
            max_primary_percent=70,
            priority=0,
        ),
        make_account("fallback", primary=10, priority=1),
    ]
    assert fill_first(pool, now) == "preferred"


# -- capacity_weighted -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "capacity"),
    [
        (Plan.FREE, 1134),
        (Plan.PLUS, 7560),
        (Plan.TEAM, 7560),
        (Plan.BUSINESS, 7560),
        (Plan.EDU, 7560),
        (Plan.PROLITE, 37800),
        (Plan.PRO, 50400),
        (Plan.ENTERPRISE, 50400),
        (Plan.UNKNOWN, 1134),
    ],
)
def test_weekly_capacity_by_plan(plan: Plan, capacity: float) -> None:
    assert WEEKLY_CAPACITY[plan] == capacity


def test_every_plan_has_a_capacity() -> None:
    assert set(WEEKLY_CAPACITY) == set(Plan)


def test_weight_is_capacity_times_weekly_headroom(make_account: AccountFactory) -> None:
    assert selection.weight(make_account(plan=Plan.PRO, primary=90, secondary=25)) == 37800
    assert selection.weight(make_account(plan=Plan.PLUS, secondary=100)) == 0
    assert selection.weight(make_account(plan=Plan.PLUS, secondary=0)) == 7560


def test_weight_falls_back_to_primary_then_zero(make_account: AccountFactory) -> None:
    assert selection.weight(make_account(plan=Plan.PLUS, primary=40)) == pytest.approx(4536)
    assert selection.weight(make_account(plan=Plan.PRO)) == 50400


def test_all_zero_weights_take_the_least_used(make_account: AccountFactory, now: float) -> None:
    # weeks at 100 % that already reset (so not blocked), but nobody has reported since
    old = int(now) - 10
    pool = [
        make_account("a", primary=60, secondary=100, secondary_reset_at=old),
        make_account("b", primary=20, secondary=100, secondary_reset_at=old),
        make_account("c", primary=100, primary_reset_at=old),  # weight falls back to primary
    ]
    assert all(selection.weight(a) == 0 for a in pool)
    chosen = selection.pick(WEIGHTED, pool, NoRandom())
    assert chosen is not None and chosen.name == "c"  # lowest weekly usage (unknown = 0)
    chosen = selection.pick(WEIGHTED, pool[:2], NoRandom())
    assert chosen is not None and chosen.name == "b"  # then the lower 5 h usage


def test_a_zero_weight_account_is_never_drawn_while_others_have_weight(
    make_account: AccountFactory,
) -> None:
    pool = [
        make_account("empty", plan=Plan.PRO, secondary=100),
        make_account("some", plan=Plan.FREE, secondary=99),
    ]
    rng = random.Random(11)
    picked = [selection.pick(WEIGHTED, pool, rng) for _ in range(500)]
    assert {a.name for a in picked if a is not None} == {"some"}
    assert None not in picked


def binomial_band(n: int, p: float, sds: float = 4.0) -> tuple[float, float]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sds * sd, mean + sds * sd


def test_capacity_weighted_draws_in_proportion_to_capacity(
    make_account: AccountFactory, now: float
) -> None:
    # Pro and Plus at the same usage: weights 25200 : 3780, i.e. 50400 : 7560.
    pool = [
        make_account("pro", plan=Plan.PRO, primary=50, secondary=50),
        make_account("plus", plan=Plan.PLUS, primary=50, secondary=50),
    ]
    n, p = 20_000, 50400 / (50400 + 7560)
    rng = random.Random(1234)
    counts = draws(pool, now, rng, n)
    low, high = binomial_band(n, p)  # +-4 binomial SD (~+-190): a 1-in-15 000 miss
    assert low <= counts["pro"] <= high, counts
    assert counts["pro"] + counts["plus"] == n


def test_capacity_weighted_matches_the_weights_by_chi_square(
    make_account: AccountFactory, now: float
) -> None:
    pool = [
        make_account("pro", plan=Plan.PRO, secondary=50),  # 25200
        make_account("plus", plan=Plan.PLUS, secondary=0),  # 7560
        make_account("plus80", plan=Plan.PLUS, secondary=80),  # 1512
        make_account("free", plan=Plan.FREE, primary=10),  # 1020.6 (falls back to primary)
    ]
    weights = [selection.weight(a) for a in pool]
    n = 20_000
    rng = random.Random(1234)
    counts = draws(pool, now, rng, n)
    expected = [n * w / sum(weights) for w in weights]
    chi2 = sum((counts[a.name] - e) ** 2 / e for a, e in zip(pool, expected, strict=True))
    assert chi2 < 16.27, (chi2, counts)  # chi-square, 3 degrees of freedom, p = 0.001


def test_capacity_weighted_draws_an_account_whose_week_has_reset(
    make_account: AccountFactory, now: float
) -> None:
    # The Pro account's week ran out and reset an hour ago: the stored 100 % is stale. It is
    # no longer blocked, and it must get traffic again (its real usage is about 0), not a
    # weight of 0 that keeps it idle until some request happens to refresh its usage.
    pool = [
        make_account("pro", plan=Plan.PRO, secondary=100, secondary_reset_at=int(now) - 3600),
        make_account("plus", plan=Plan.PLUS, secondary=50),
    ]
    assert blocked_until(pool[0], now) is None
    rng = random.Random(1234)
    counts = draws(pool, now, rng, 2000)
    assert counts["pro"] > 0, counts
