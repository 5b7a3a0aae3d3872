"""pool.py: choosing through the pool, refusals, learning usage and limits, operator changes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from addon import usage
from addon.answers import Refusal
from addon.pool import Choice, Pool, PoolError, status_row
from addon.refresh import Refreshed
from addon.selection import Strategy, skip_reason
from addon.state import Plan, State, Status
from addon.usage import LimitHit, UsageReport, WindowReport

if TYPE_CHECKING:
    from conftest import AccountFactory

FILL = Strategy.FILL_FIRST


def pool_of(*accounts: object) -> Pool:
    return Pool(State(accounts=list(accounts)), rng=random.Random(5))  # type: ignore[arg-type]


def chosen_name(pool: Pool, now: float, strategy: Strategy = FILL) -> str:
    choice = pool.choose(strategy, now)
    assert isinstance(choice, Choice), choice
    return choice.account.name


def headroom(percent: float, now: float) -> UsageReport:
    return UsageReport(WindowReport(percent, 300, int(now) + 3600), None)


# -- choosing --------------------------------------------------------------------------------


def test_choose_returns_the_fill_first_pick(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A", primary=30), make_account("B", primary=5))
    choice = pool.choose(FILL, now)
    assert isinstance(choice, Choice)
    assert (choice.account.name, choice.strategy) == ("A", FILL)


def test_a_choice_reads_as_the_flows_comment(make_account: AccountFactory) -> None:
    both = make_account("work", primary=12.4, secondary=3)
    assert Choice(both, FILL).comment == "work · fill_first · 5h 12% · wk 3%"
    assert (
        Choice(make_account("new"), Strategy.CAPACITY_WEIGHTED, "affinity").comment
        == "new · capacity_weighted · affinity"
    )


@pytest.mark.parametrize("why", ["paused", "limited", "backing off"])
def test_calls_without_quota_never_move_a_conversation(
    make_account: AccountFactory, now: float, why: str
) -> None:
    a, b = make_account("A", primary=30), make_account("B", primary=5)
    pool = pool_of(a, b)
    assert chosen_name(pool, now) == "A"
    pool.choose(FILL, now, "thread-7")
    if why == "paused":
        pool.pause("A")
    elif why == "limited":
        pool.record_limit(a, LimitHit("usage_limit_reached", int(now) + 600), now)
    else:
        pool.record_error(a, now)
    side = pool.choose_any(FILL, now, "thread-7")
    # Served elsewhere, without taking the conversation along: its next turn decides.
    assert side is not None and side.account is b
    assert pool.owner("thread-7", now) is a


def test_calls_without_quota_stay_with_a_limited_holder_when_nothing_is_eligible(
    make_account: AccountFactory, now: float
) -> None:
    a, b = make_account("A", primary=30), make_account("B", primary=5)
    pool = pool_of(a, b)
    pool.choose(FILL, now, "thread-7")
    for account in (a, b):
        pool.record_limit(account, LimitHit("usage_limit_reached", int(now) + 600), now)
    side = pool.choose_any(FILL, now, "thread-7")
    assert side is not None and side.account is a  # no quota needed: the holder's login works
    assert pool.owner("thread-7", now) is a


def test_a_new_conversation_can_wait_until_the_caller_pins_it(
    make_account: AccountFactory, now: float
) -> None:
    a, b = make_account("A", primary=30), make_account("B", primary=5)
    pool = pool_of(a, b)
    choice = pool.choose(FILL, now, "thread-7", pin=False)
    assert isinstance(choice, Choice) and choice.account is a
    assert pool.owner("thread-7", now) is None  # not yet
    pool.pin("thread-7", a, now)
    assert pool.owner("thread-7", now) is a


def test_calls_without_quota_give_a_new_conversation_its_account(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(make_account("A", primary=30), make_account("B", primary=5))
    side = pool.choose_any(FILL, now, "thread-new")
    assert side is not None and pool.owner("thread-new", now) is side.account


def test_choose_refuses_when_every_account_is_paused(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(make_account("A", status=Status.PAUSED))
    refusal = pool.choose(FILL, now)
    assert isinstance(refusal, Refusal) and refusal.status == 400


def test_fill_first_follows_limits_and_fresh_usage(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(make_account("A", primary=30), make_account("B", primary=5), make_account("C"))
    assert chosen_name(pool, now) == "A"
    a = pool.get("A")
    body = json.dumps({"error": {"type": "usage_limit_reached", "resets_at": int(now) + 900}})
    hit = usage.from_error_body(body, now)
    assert hit is not None
    pool.record_limit(a, hit, now)
    assert chosen_name(pool, now + 1) == "B"
    # the upstream reset early: a response for A shows headroom, A is the fullest again
    pool.record_usage(a, headroom(31, now + 2), now + 2)
    assert chosen_name(pool, now + 3) == "A"


# -- refusals --------------------------------------------------------------------------------


def test_all_limited_refuses_like_codex_with_the_earliest_reset(
    make_account: AccountFactory, now: float
) -> None:
    t = int(now)
    pool = pool_of(
        make_account("A", plan=Plan.PRO, block_until=t + 900),
        make_account("B", plan=Plan.PLUS, primary=100, primary_reset_at=t + 200),
        make_account("C", plan=Plan.TEAM, secondary=100, secondary_reset_at=t + 7 * 3600),
    )
    refusal = pool.refusal(now)
    assert refusal.status == 429
    error = refusal.body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "usage_limit_reached"
    assert error["resets_at"] == t + 200
    assert error["resets_in_seconds"] == 200
    assert error["plan_type"] == "plus"
    assert isinstance(error["message"], str) and error["message"]
    assert json.loads(refusal.content()) == refusal.body


def test_limits_come_before_paused_and_reauth_accounts(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(
        make_account("P", status=Status.PAUSED),
        make_account("R", status=Status.REAUTH_REQUIRED),
        make_account("L", block_until=int(now) + 50),
    )
    refusal = pool.refusal(now)
    assert refusal.status == 429
    assert refusal.body["error"]["resets_at"] == int(now) + 50  # type: ignore[index]


def test_a_paused_account_with_an_old_limit_does_not_set_the_reset_time(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(
        make_account("P", status=Status.PAUSED, block_until=int(now) + 10),
        make_account("L", block_until=int(now) + 500),
    )
    assert pool.refusal(now).body["error"]["resets_at"] == int(now) + 500  # type: ignore[index]


def test_all_paused_refuses_with_a_400_saying_so_in_plain_text(
    make_account: AccountFactory, now: float
) -> None:
    """Not a 5xx: Codex retries those for half a minute before it shows the message, and
    resuming an account takes someone doing it. A 400's body Codex shows as it is."""
    pool = pool_of(make_account("A", status=Status.PAUSED), make_account("B", status=Status.PAUSED))
    refusal = pool.refusal(now)
    assert refusal.status == 400
    error = refusal.body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "all_accounts_paused"
    assert "paused" in str(error["message"]) and "resume" in str(error["message"])
    assert refusal.content() == str(error["message"]).encode()
    assert refusal.content_type == "text/plain; charset=utf-8"


@pytest.mark.parametrize("other", [Status.REAUTH_REQUIRED, Status.PAUSED])
def test_all_needing_login_refuses_with_a_400_saying_so(
    make_account: AccountFactory, now: float, other: Status
) -> None:
    pool = pool_of(
        make_account("A", status=Status.REAUTH_REQUIRED),
        make_account("B", status=other),
    )
    refusal = pool.refusal(now)
    assert refusal.status == 400 and refusal.plain
    error = refusal.body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "all_accounts_need_login"
    said = "is paused or needs" if other is Status.PAUSED else "each one needs a new login"
    assert said in str(error["message"])


# -- learning usage and limits ---------------------------------------------------------------


def test_record_usage_stores_windows_with_the_time_seen(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(make_account("A", primary=1, secondary=2))
    a = pool.get("A")
    changes = pool.changes
    pool.record_usage(a, UsageReport(WindowReport(42.5, 300, int(now) + 60), None), now)
    assert a.primary is not None and a.secondary is not None
    assert (a.primary.used_percent, a.primary.reset_at, a.primary.observed_at) == (
        42.5,
        int(now) + 60,
        now,
    )
    assert a.secondary.used_percent == 2  # not reported: kept
    assert pool.changes > changes


def test_a_repeated_report_within_a_second_is_not_news(
    make_account: AccountFactory, now: float
) -> None:
    """The SSE event repeats what the headers said a moment before: no second change."""
    pool = pool_of(make_account("A"))
    a = pool.get("A")
    report = UsageReport(WindowReport(42.5, 300, int(now) + 60), WindowReport(7.0, 10080, None))
    pool.record_usage(a, report, now)
    window, changes = a.primary, pool.version
    pool.record_usage(a, report, now + 0.5)
    assert pool.version == changes and a.primary is window
    pool.record_usage(a, UsageReport(WindowReport(42.5, 300, int(now) + 60), None), now + 0.5)
    assert pool.version == changes  # the part reported is the same
    pool.record_usage(a, UsageReport(WindowReport(43.0, 300, int(now) + 60), None), now + 0.6)
    assert pool.version > changes and a.primary is not None and a.primary.used_percent == 43.0
    changes = pool.version
    pool.record_usage(a, UsageReport(WindowReport(43.0, 300, int(now) + 60), None), now + 2)
    assert pool.version > changes and a.primary.observed_at == now + 2  # old news refreshed


def test_a_repeated_report_still_lifts_a_block(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A"))
    a = pool.get("A")
    report = UsageReport(WindowReport(42.5, 300, int(now) + 60), None)
    pool.record_usage(a, report, now)
    pool.record_limit(a, LimitHit("usage_limit_reached", int(now) + 600), now)
    pool.record_usage(a, report, now + 0.1)
    assert a.block is None


def test_record_limit_blocks_until_the_reset(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A"))
    a = pool.get("A")
    frame_usage = UsageReport(WindowReport(100.0, 300, int(now) + 300), None)
    pool.record_limit(a, LimitHit("usage_limit_reached", int(now) + 600, "plus", frame_usage), now)
    assert a.block is not None
    assert (a.block.until, a.block.reason) == (int(now) + 600, "usage_limit_reached")
    assert a.primary is not None and a.primary.used_percent == 100.0
    assert skip_reason(a, now + 599) == "rate limited"
    assert pool.refusal(now + 599).body["error"]["resets_at"] == int(now) + 600  # type: ignore[index]
    assert chosen_name(pool, now + 600) == "A"


def test_newer_usage_with_headroom_clears_a_block(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A", block_until=int(now) + 86400))
    a = pool.get("A")
    pool.record_usage(a, headroom(20, now), now)
    assert a.block is None
    assert chosen_name(pool, now) == "A"


@pytest.mark.parametrize(
    "report",
    [
        UsageReport(WindowReport(100.0, 300, None), None),
        UsageReport(WindowReport(20.0, 300, None), WindowReport(100.0, 10080, None)),
    ],
)
def test_usage_without_headroom_keeps_the_block(
    make_account: AccountFactory, now: float, report: UsageReport
) -> None:
    pool = pool_of(make_account("A", block_until=int(now) + 86400))
    a = pool.get("A")
    pool.record_usage(a, report, now)
    assert a.block is not None and a.block.until == int(now) + 86400


def test_record_route_counts_requests(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A", requests=7))
    a = pool.get("A")
    pool.record_route(a, now)
    pool.record_route(a, now + 5.7)
    assert a.requests == 9
    assert a.last_used_at == int(now + 5.7)
    assert pool.unsaved_requests[a.id] == 2


def routine(pool: Pool, change: Callable[[Pool], object]) -> bool:
    """Whether `change` leaves the pool without an urgent change to save."""
    pool.urgent = False
    change(pool)
    return not pool.urgent


def test_what_every_request_teaches_is_routine(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A"), make_account("B"))
    a = pool.get("A")
    assert routine(pool, lambda p: p.record_route(a, now))
    assert routine(pool, lambda p: p.record_usage(a, headroom(30, now), now))
    assert routine(pool, lambda p: p.record_error(a, now))
    assert routine(pool, lambda p: p.record_success(a))
    assert routine(pool, lambda p: p.choose(FILL, now, "a conversation"))


def test_limits_logins_and_operator_changes_are_urgent(
    make_account: AccountFactory, now: float
) -> None:
    pool = pool_of(make_account("A"), make_account("B", block_until=int(now) + 600))
    a, b = pool.get("A"), pool.get("B")
    hit = LimitHit("usage_limit_reached", int(now) + 600)
    assert not routine(pool, lambda p: p.record_limit(a, hit, now))
    assert not routine(pool, lambda p: p.record_usage(b, headroom(20, now), now))  # block lifted
    assert not routine(pool, lambda p: p.mark(a, Status.REAUTH_REQUIRED, "refresh refused"))
    refreshed = Refreshed(a.credentials.model_copy(update={"access_token": "new"}), None, None)
    assert not routine(pool, lambda p: p.set_credentials(a, refreshed))
    assert not routine(pool, lambda p: p.pause("B"))
    assert not routine(pool, lambda p: p.configure("B", priority=3))
    assert not routine(pool, lambda p: p.rename("B", "C"))


# -- operator changes ------------------------------------------------------------------------


def test_pause_and_resume(make_account: AccountFactory, now: float) -> None:
    pool = pool_of(make_account("A", primary=50), make_account("B", primary=10))
    assert pool.pause("A").status is Status.PAUSED
    assert pool.get("A").status_at > 0
    assert chosen_name(pool, now) == "B"
    assert pool.resume("A").status is Status.ACTIVE
    assert chosen_name(pool, now) == "A"


def test_resume_refuses_an_account_that_needs_a_login(make_account: AccountFactory) -> None:
    pool = pool_of(make_account("A", status=Status.REAUTH_REQUIRED))
    with pytest.raises(PoolError, match="import"):
        pool.resume("A")
    assert pool.get("A").status is Status.REAUTH_REQUIRED


@pytest.mark.parametrize("method", ["get", "pause", "resume"])
def test_an_unknown_name_is_a_clear_error(make_account: AccountFactory, method: str) -> None:
    pool = pool_of(make_account("alpha"), make_account("beta"))
    with pytest.raises(PoolError) as caught:
        getattr(pool, method)("gamma")
    assert "'gamma'" in str(caught.value) and "alpha, beta" in str(caught.value)


def test_an_unknown_name_suggests_a_close_one_or_lists_a_few(
    make_account: AccountFactory,
) -> None:
    pool = pool_of(*(make_account(f"team{i:02d}") for i in range(20)), make_account("work"))
    with pytest.raises(PoolError, match=r"no account named 'wrok' \(did you mean 'work'\?\)"):
        pool.get("wrok")
    with pytest.raises(PoolError) as caught:
        pool.get("zzz")
    assert str(caught.value) == (
        "no account named 'zzz' (known: team00, team01, team02, team03, team04, team05, "
        "team06, team07 and 13 more)"
    )


def test_by_id_finds_accounts(make_account: AccountFactory) -> None:
    a = make_account("A")
    pool = pool_of(a)
    assert pool.by_id(a.id) is a
    assert pool.by_id("nope") is None


# -- status rows -----------------------------------------------------------------------------

ROW_KEYS = {
    "name",
    "plan",
    "status",
    "primary_used_percent",
    "primary_reset_at",
    "secondary_used_percent",
    "secondary_reset_at",
    "requests",
    "last_used_at",
}


def test_rows_show_usage_and_mark_the_next_pick(make_account: AccountFactory, now: float) -> None:
    t = int(now)
    pool = pool_of(
        make_account("A", plan=Plan.PRO, primary=30, secondary=60, requests=3),
        make_account("B", primary=5),
        make_account("C", status=Status.PAUSED),
        make_account("D", block_until=t + 60),
        make_account("E", status=Status.REAUTH_REQUIRED),
    )
    rows = {r["name"]: r for r in pool.rows(now)}
    assert all(set(r) >= ROW_KEYS for r in rows.values())
    a = rows["A"]
    assert (a["plan"], a["status"], a["requests"]) == ("pro", "active", 3)
    assert (a["primary_used_percent"], a["primary_reset_at"]) == (30.0, t + 3600)
    assert (a["secondary_used_percent"], a["secondary_reset_at"]) == (60.0, t + 5 * 86400)
    assert rows["B"]["secondary_used_percent"] is None
    assert [n for n, r in rows.items() if r["next_pick"]] == ["A"]
    assert {n: r["status"] for n, r in rows.items()} == {
        "A": "active",
        "B": "active",
        "C": "paused",
        "D": "rate_limited",
        "E": "reauth_required",
    }
    assert rows["D"]["blocked_until"] == t + 60


def test_a_row_shows_a_window_past_its_reset_as_empty(
    make_account: AccountFactory, now: float
) -> None:
    row = status_row(make_account("A", primary=10, primary_reset_at=int(now) - 1), now)
    assert row["primary_used_percent"] == 0.0  # the window reset: its old usage is gone
    assert row["primary_reset_at"] is None


def test_rows_never_hold_a_token(make_account: AccountFactory, now: float) -> None:
    account = make_account("A", primary=10)
    text = json.dumps(pool_of(account).rows(now))
    creds = account.credentials
    for secret in (creds.access_token, creds.refresh_token):
        assert secret not in text
