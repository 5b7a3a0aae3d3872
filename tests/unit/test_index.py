"""index.py: the fast choosing structure agrees with selection.py (the reference) always."""

from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon import selection
from addon.index import FALLBACK, AccountIndex, _SumTree
from addon.pool import Pool
from addon.selection import Strategy
from addon.state import Plan, State, Status
from addon.usage import LimitHit, UsageReport, WindowReport
from tests.unit.conftest import NOW, build_account

if TYPE_CHECKING:
    from conftest import AccountFactory

FILL = Strategy.FILL_FIRST
WEIGHTED = Strategy.CAPACITY_WEIGHTED


def agree(pool: Pool, now: float, exclude: tuple[str, ...] = (), seed: int = 0) -> None:
    """The pool's (indexed) decision equals the reference's, for both strategies."""
    for strategy in Strategy:
        mine, ref = random.Random(seed), random.Random(seed)
        pool.rng = mine
        fast = pool._select(strategy, now, exclude)
        slow = selection.choose(strategy, pool.accounts, now, ref, exclude)
        assert (fast and fast.name) == (slow and slow.name), (strategy, now, exclude)
        # the same random numbers were drawn (the rng streams stay in step)
        assert mine.random() == ref.random()


# -- examples --------------------------------------------------------------------------------


def test_fill_first_order_tiers_and_caps(make_account: AccountFactory, now: float) -> None:
    pool = Pool(
        State(
            accounts=[
                make_account("a", primary=30, secondary=10),
                make_account("b", primary=30, secondary=20),
                make_account("c", primary=80, max_primary_percent=70),
                make_account("d", primary=90, priority=1),
            ]
        )
    )
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]
    assert pool._select(FILL, now, ("b",)) is not None
    pool.configure("a", priority=-1)
    assert pool._select(FILL, now, ()).name == "a"  # type: ignore[union-attr]
    pool.pause("a")
    pool.pause("b")
    assert pool._select(FILL, now, ()).name == "d"  # uncapped tier 1 beats capped tier 0
    pool.pause("d")
    assert pool._select(FILL, now, ()).name == "c"  # only a capped one is left
    agree(pool, now)


def test_exclusions_fall_through_to_the_next_tier(make_account: AccountFactory, now: float) -> None:
    a, b = make_account("a", primary=50), make_account("b", primary=5, priority=2)
    pool = Pool(State(accounts=[a, b]))
    assert pool._select(FILL, now, (a.id,)) is b
    assert pool._select(FILL, now, (a.id, b.id)) is None
    assert pool._select(WEIGHTED, now, (a.id,)) is b
    agree(pool, now, (a.id,))


def test_a_block_ends_by_time_alone(make_account: AccountFactory, now: float) -> None:
    pool = Pool(
        State(
            accounts=[
                make_account("full", primary=90, block_until=int(now) + 100),
                make_account("idle", primary=1),
            ]
        )
    )
    assert pool._select(FILL, now, ()).name == "idle"  # type: ignore[union-attr]
    assert pool._select(FILL, now + 99.9, ()).name == "idle"  # type: ignore[union-attr]
    assert pool._select(FILL, now + 100, ()).name == "full"  # type: ignore[union-attr]
    agree(pool, now + 100)


def test_an_exhausted_window_without_reset_cools_down(
    make_account: AccountFactory, now: float
) -> None:
    pool = Pool(State(accounts=[make_account("a")]))
    account = pool.accounts[0]
    pool.record_usage(account, UsageReport(WindowReport(100.0), None), now)
    assert pool._select(FILL, now + 1, ()) is None
    assert pool._select(FILL, now + 61, ()) is account
    agree(pool, now + 61)


def test_backoff_and_success(make_account: AccountFactory, now: float) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=40), make_account("b")]))
    a = pool.get("a")
    pool._select(FILL, now, ())
    until = pool.record_error(a, now)
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]
    assert pool._select(FILL, until, ()) is a
    pool.record_error(a, until)
    assert pool._select(FILL, until + 0.5, ()).name == "b"  # type: ignore[union-attr]
    pool.record_success(a)
    assert pool._select(FILL, until + 0.5, ()) is a


def test_a_decision_for_an_earlier_time_still_agrees(
    make_account: AccountFactory, now: float
) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=90, block_until=int(now) + 10)]))
    assert pool._select(FILL, now + 20, ()) is not None
    # a flow that waited decides with its older clock: the block still held then
    assert pool._select(FILL, now + 5, ()) is None
    assert pool._select(FILL, now + 20, ()) is not None


def test_a_clock_jump_backwards_rebuilds(make_account: AccountFactory, now: float) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=90, block_until=int(now) + 10)]))
    assert pool._select(FILL, now + 3600, ()) is not None
    assert pool._select(FILL, now, ()) is None
    assert pool._fast is not None and pool._fast.clock == now


def test_a_change_made_behind_the_index_is_noticed_at_pick_time(
    make_account: AccountFactory, now: float
) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=50), make_account("b", primary=5)]))
    assert pool._select(FILL, now, ()).name == "a"  # type: ignore[union-attr]
    pool.get("a").status = Status.PAUSED  # not through the pool: no touch()
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]


def test_an_edited_account_list_rebuilds(make_account: AccountFactory, now: float) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=5)]))
    assert pool._select(FILL, now, ()).name == "a"  # type: ignore[union-attr]
    pool.state.accounts.append(make_account("b", primary=50))
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]


def test_all_zero_weights_take_the_least_used(make_account: AccountFactory, now: float) -> None:
    t = int(now)
    pool = Pool(
        State(
            accounts=[
                make_account("a", secondary=100, secondary_reset_at=t - 10, primary=5),
                make_account("b", secondary=100, secondary_reset_at=t - 10, primary=3),
            ]
        )
    )
    agree(pool, now)


def test_the_sum_tree_never_drifts() -> None:
    tree = _SumTree(8)
    rng = random.Random(3)
    for _ in range(10_000):
        tree.set(rng.randrange(8), rng.choice([0.0, 0.1, 1e-9, 7560.0, 1e6]))
    for pos in range(8):
        tree.set(pos, 0.0)
    assert tree.nodes == {} and tree.total == 0.0
    tree.set(5, 2.0)
    assert [tree.find(u) for u in (0.0, 1.999)] == [5, 5]


def test_the_index_is_o_log_n_in_structure() -> None:
    accounts = [build_account(f"a{i}", primary=i % 97) for i in range(2000)]
    index = AccountIndex(accounts, NOW)
    assert index.tree_size == 2048
    assert len(index.heap) <= 2 * index.scheduled + 64
    assert index.choose(FILL, NOW, random.Random(1)) is selection.choose(FILL, accounts, NOW)


def test_fallback_is_only_for_earlier_times() -> None:
    accounts = [build_account("a", block_until=int(NOW) + 3)]
    index = AccountIndex(accounts, NOW + 4)
    assert index.choose(FILL, NOW + 2, random.Random(1)) is FALLBACK


# -- property: random pools, random changes --------------------------------------------------

PERCENTS = st.one_of(st.none(), st.sampled_from([0.0, 10.0, 50.0, 69.9, 70.0, 99.0, 100.0]))
OFFSETS = st.one_of(st.none(), st.integers(-400, 400))


@st.composite
def accounts(draw: st.DrawFn, count: int) -> list:
    made = []
    for i in range(count):
        primary, secondary = draw(PERCENTS), draw(PERCENTS)
        p_reset, s_reset, block = draw(OFFSETS), draw(OFFSETS), draw(OFFSETS)
        account = build_account(
            f"a{i}",
            plan=draw(st.sampled_from([Plan.FREE, Plan.PLUS, Plan.PRO, Plan.UNKNOWN])),
            primary=primary,
            secondary=secondary,
            primary_reset_at=None if p_reset is None else int(NOW) + p_reset,
            secondary_reset_at=None if s_reset is None else int(NOW) + s_reset,
            observed_at=NOW - draw(st.sampled_from([0, 30, 90])),
            status=draw(st.sampled_from([Status.ACTIVE] * 4 + [Status.PAUSED])),
            block_until=None if block is None else int(NOW) + block,
            priority=draw(st.sampled_from([0, 0, 1, 2])),
            max_primary_percent=draw(st.sampled_from([100.0, 100.0, 70.0])),
            max_secondary_percent=draw(st.sampled_from([100.0, 100.0, 50.0])),
        )
        made.append(account)
    return made


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "usage",
                "usage",
                "limit",
                "error",
                "success",
                "pause",
                "resume",
                "reauth",
                "configure",
                "rename",
                "tick",
                "tick",
                "back",
                "direct",
            ]
        ),
        st.integers(0, 10**6),
        st.sampled_from([0.0, 1.0, 30.0, 55.0, 70.0, 99.5, 100.0]),
        st.integers(-5, 500),
    ),
    max_size=40,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 12).flatmap(accounts), OPS, st.integers(0, 2**32))
def test_index_agrees_with_the_reference(pool_accounts: list, ops: list, seed: int) -> None:
    pool = Pool(State(accounts=copy.deepcopy(pool_accounts)), rng=random.Random(seed))
    now = NOW
    rng = random.Random(seed)
    agree(pool, now, seed=seed)
    for op, pick, percent, step in ops:
        account = pool.accounts[pick % len(pool.accounts)]
        if op == "usage":
            reset = int(now) + step if step > 0 else None
            second = WindowReport(percent / 2, 10080, reset) if pick % 3 else None
            pool.record_usage(account, UsageReport(WindowReport(percent, 300, reset), second), now)
        elif op == "limit":
            pool.record_limit(account, LimitHit("usage_limit_reached", int(now) + step), now)
        elif op == "error":
            pool.record_error(account, now)
        elif op == "success":
            pool.record_success(account)
        elif op == "pause":
            pool.pause(account.name)
        elif op == "resume" and account.status is not Status.REAUTH_REQUIRED:
            pool.resume(account.name)
        elif op == "reauth":
            pool.mark(account, Status.REAUTH_REQUIRED, "test")
        elif op == "configure":
            pool.configure(
                account.name,
                priority=pick % 3,
                max_primary=percent if percent > 0 else 100.0,
                max_secondary=100.0,
            )
        elif op == "rename":
            new = f"r{pick}"
            if pool.state.by_name(new) is None:
                pool.rename(account.name, new)
        elif op == "tick":
            now += abs(step) / 7
        elif op == "back":
            now -= abs(step) % 20 / 10  # a flow deciding with a slightly older clock
        elif op == "direct":  # a change behind the pool's back: only the picked one is checked
            account.backoff = None
            pool._changed(account)
        exclude = tuple(
            a.id for a in pool.accounts if rng.random() < 0.2 and op not in ("tick", "back")
        )
        agree(pool, now, exclude, seed=rng.randrange(2**32))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 65])
def test_weighted_draws_follow_the_reference_draw_for_draw(size: int) -> None:
    accounts = [
        build_account(
            f"a{i}", plan=[Plan.PLUS, Plan.PRO, Plan.FREE][i % 3], secondary=(i * 7) % 101
        )
        for i in range(size)
    ]
    pool = Pool(State(accounts=accounts))
    for seed in range(200):
        agree(pool, NOW, seed=seed)


def test_adopting_a_merged_state_keeps_the_index(make_account: AccountFactory, now: float) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=50), make_account("b", primary=5)]))
    assert pool._select(FILL, now, ()).name == "a"  # type: ignore[union-attr]
    fast = pool._fast
    paused = {"status": Status.PAUSED, "status_at": now + 1}
    theirs = State(
        accounts=[a.model_copy(update=paused if a.name == "a" else {}) for a in pool.accounts]
    )
    pool.adopt(theirs)  # the CLI paused "a"
    assert pool._fast is fast  # same accounts, same order: re-pointed, not rebuilt
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]
    agree(pool, now)
    pool.adopt(State(accounts=[pool.accounts[1].model_copy()]))  # "a" was removed
    assert pool._select(FILL, now, ()).name == "b"  # type: ignore[union-attr]
    agree(pool, now)


def test_the_index_built_ahead_is_the_one_the_first_decision_uses(
    make_account: AccountFactory, now: float
) -> None:
    pool = Pool(State(accounts=[make_account("a", primary=50), make_account("b", primary=5)]))
    built = pool.index(now)  # the router builds it at start-up
    assert pool._select(FILL, now, ()).name == "a"  # type: ignore[union-attr]
    assert pool._fast is built
    assert pool.index(now) is built
    pool.adopt(State(accounts=[make_account("c", primary=5)]))  # other accounts: re-indexed
    assert pool.index(now) is not built
