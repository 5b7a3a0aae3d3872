"""report.py: the status table and its small formatters."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

import pytest

from addon import report
from addon.pool import Pool
from addon.state import Plan, State, Status

if TYPE_CHECKING:
    from conftest import AccountFactory

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "now"),
        (-30, "now"),
        (1, "in 1s"),
        (40, "in 40s"),
        (59.9, "in 59s"),
        (60, "in 1m"),
        (5 * 60 + 30, "in 5m"),
        (3600, "in 1h 00m"),
        (2 * 3600 + 14 * 60 + 5, "in 2h 14m"),
        (86400, "in 1d 0h"),
        (3 * 86400 + 4 * 3600 + 59 * 60, "in 3d 4h"),
    ],
)
def test_until(seconds: float, text: str, now: float) -> None:
    assert report.until(now + seconds, now) == text


def test_until_unknown(now: float) -> None:
    assert report.until(None, now) == "-"


@pytest.mark.parametrize(
    ("seconds_ago", "text"),
    [(90, "1m ago"), (2 * 3600 + 60, "2h 01m ago"), (5, "5s ago"), (0, "just now")],
)
def test_ago(seconds_ago: float, text: str, now: float) -> None:
    assert report.ago(now - seconds_ago, now) == text


def test_ago_never_and_future(now: float) -> None:
    assert report.ago(None, now) == "never"
    assert report.ago(now + 100, now) == "just now"  # a clock that ran ahead


@pytest.mark.parametrize(("percent", "filled"), [(0, 0), (4, 0), (50, 5), (96, 10), (100, 10)])
def test_bar_fills_in_proportion(percent: float, filled: int) -> None:
    text = report.bar(percent)
    assert text.count("█") == filled
    assert text.count("█") + text.count("░") == report.BAR_WIDTH
    assert text.endswith(f"{percent:3.0f}%")


def test_bar_for_unknown_usage() -> None:
    text = report.bar(None)
    assert "?" in text and "█" not in text
    assert len(text) == len(report.bar(50))


# -- the table -------------------------------------------------------------------------------


def test_an_empty_pool_says_how_to_add_an_account(now: float) -> None:
    text = report.table([], now)
    assert "import" in text and "--name" in text


def test_the_table_shows_every_account_and_marks_the_next_pick(
    make_account: AccountFactory, now: float
) -> None:
    pool = Pool(
        State(
            accounts=[
                make_account("alpha", plan=Plan.PRO, primary=30, secondary=60, requests=12),
                make_account("bravo", primary=5),
                make_account("charlie", status=Status.PAUSED),
                make_account("delta", block_until=int(now) + 125),
                make_account(
                    "echo", status=Status.REAUTH_REQUIRED, status_reason="refresh_token_reused"
                ),
            ]
        ),
        rng=random.Random(1),
    )
    text = report.table(pool.rows(now), now, colour=False)
    assert not ANSI.search(text)
    lines = text.splitlines()
    header = lines[0]
    assert "NAME" in header and "PLAN" in header
    names = ("alpha", "bravo", "charlie", "delta", "echo")
    by_name = {n: next(line for line in lines if f" {n} " in f" {line} ") for n in names}
    assert by_name["alpha"].startswith("→")
    assert not any(by_name[n].startswith("→") for n in ("bravo", "charlie", "delta", "echo"))
    alpha = by_name["alpha"]
    assert "pro" in alpha and " 30%" in alpha and " 60%" in alpha and "12" in alpha
    assert "in 1h 00m" in alpha  # the 5 h reset
    assert "in 5d 0h" in alpha  # the weekly reset
    assert "paused" in by_name["charlie"]
    assert "rate_limited" in by_name["delta"] and "in 2m" in by_name["delta"]
    assert "reauth_required" in by_name["echo"]
    assert "refresh_token_reused" in text  # why it needs a login is shown somewhere
    plan_column = header.index("PLAN")
    for name in ("alpha", "bravo", "charlie"):
        plan = "pro" if name == "alpha" else "plus"
        assert by_name[name].index(plan, len("→ " + name)) == plan_column


def test_colour_marks_the_table_only_when_asked(make_account: AccountFactory, now: float) -> None:
    pool = Pool(State(accounts=[make_account("alpha", primary=10)]))
    coloured = report.table(pool.rows(now), now, colour=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == report.table(pool.rows(now), now, colour=False)


def test_the_table_never_shows_a_token(make_account: AccountFactory, now: float) -> None:
    account = make_account("alpha", primary=10)
    text = report.table(Pool(State(accounts=[account])).rows(now), now)
    assert account.credentials.access_token not in text
    assert account.credentials.refresh_token not in text
