"""The status table as people see it: columns, reasons, colour, alignment."""

from __future__ import annotations

import re
from typing import Any

import pytest

from addon import report
from addon.pool import Pool
from addon.state import State, Status
from tests.unit.conftest import NOW, AccountFactory

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def row(name: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "plan": "plus",
        "email": "",
        "status": "active",
        "reason": "",
        "primary_used_percent": None,
        "primary_reset_at": None,
        "secondary_used_percent": None,
        "secondary_reset_at": None,
        "blocked_until": None,
        "requests": 0,
        "last_used_at": None,
        "priority": 0,
        "max_primary_percent": 100.0,
        "max_secondary_percent": 100.0,
        "next_pick": False,
    }
    return base | changes


def rows() -> list[dict[str, Any]]:
    return [
        row(
            "work",
            primary_used_percent=72.0,
            primary_reset_at=int(NOW) + 2 * 3600 + 14 * 60,
            secondary_used_percent=41.0,
            secondary_reset_at=int(NOW) + 3 * 86400 + 4 * 3600,
            requests=128,
            last_used_at=int(NOW) - 40,
            next_pick=True,
        ),
        row(
            "spare",
            plan="team",
            status="rate_limited",
            reason="rate limited",
            primary_used_percent=100.0,
            blocked_until=int(NOW) + 49 * 60,
            requests=7,
        ),
        row(
            "lapsed",
            status="reauth_required",
            reason="needs re-login: refresh_token_reused",
            requests=90,
        ),
        row("old", status="paused", reason="paused", max_primary_percent=80.0, priority=2),
    ]


def lines_of(text: str) -> dict[str, str]:
    """The table's line for each account, by name."""
    out = {}
    for line in text.splitlines():
        words = re.sub(r"<[0-9;]+>", "", line).replace("→", " ").split()
        if words:
            out.setdefault(words[0], line)
    return out


def test_one_line_per_account_with_everything_at_a_glance() -> None:
    text = report.table(rows(), NOW)
    by_name = lines_of(text)
    work = by_name["work"]
    assert work.startswith("→")
    for needle in ("plus", "active", "███████░░░  72%", "in 2h 14m", "41%", "in 3d 4h", "128"):
        assert needle in work, needle
    assert "40s ago" in work
    assert "rate_limited in 49m" in by_name["spare"]
    assert "██████████ 100%" in by_name["spare"]
    assert "reauth_required" in by_name["lapsed"]
    assert "paused" in by_name["old"]
    assert "never" in by_name["old"]


def test_why_an_account_is_skipped_and_the_fix() -> None:
    text = report.table(rows(), NOW)
    notes = [line for line in text.splitlines() if line.startswith("! ")]
    assert notes == [
        "! lapsed: needs re-login: refresh_token_reused; fix: python -m addon import "
        "AUTH_JSON --name lapsed --replace"
    ]


def test_steering_column_only_when_some_account_is_steered() -> None:
    text = report.table(rows(), NOW)
    assert "STEERING" in text.splitlines()[0]
    assert "prio 2, 5h cap 80%" in lines_of(text)["old"]
    plain = report.table(rows()[:3], NOW)
    assert "STEERING" not in plain


def test_columns_line_up_with_and_without_colour() -> None:
    plain = report.table(rows(), NOW)
    coloured = report.table(rows(), NOW, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured
    assert ANSI.sub("", coloured) == plain
    header, *body = plain.splitlines()
    column = header.index("5H WINDOW")
    for line in body[:4]:
        assert line[column] in "█░·", line


def test_colours_say_the_state_and_the_level() -> None:
    coloured = lines_of(
        ANSI.sub(lambda m: f"<{m.group(0)[2:-1]}>", report.table(rows(), NOW, True))
    )
    assert "<32>active" in coloured["work"]  # green
    assert "<33>███████░░░  72%" in coloured["work"]  # 70-90 %: yellow
    assert "<31>██████████ 100%" in coloured["spare"]  # full: red
    assert "<33>rate_limited" in coloured["spare"]
    assert "<31>reauth_required" in coloured["lapsed"]
    assert "<2>paused" in coloured["old"]  # dim


def test_nothing_usable_says_when_it_comes_back() -> None:
    blocked = [r for r in rows() if r["reason"]]
    text = report.table(blocked, NOW)
    assert "No account can take requests now" in text
    assert "in 49m" in text.splitlines()[-1]
    paused = report.table([row("a", status="paused", reason="paused")], NOW)
    assert "paused, needs a new login or backs off" in paused


def test_empty_pool_says_how_to_add_one() -> None:
    assert "python -m addon import AUTH_JSON --name NAME" in report.table([], NOW)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (40, "in 40s"),
        (59 * 60, "in 59m"),
        (2 * 3600 + 14 * 60, "in 2h 14m"),
        (3 * 86400, "in 3d 0h"),
    ],
)
def test_until(seconds: int, text: str) -> None:
    assert report.until(NOW + seconds, NOW) == text


def test_with_real_pool_rows(make_account: AccountFactory) -> None:
    accounts = [
        make_account("full", primary=95.0, secondary=50.0, requests=3),
        make_account("fresh", primary=5.0, secondary=1.0),
        make_account("gone", status=Status.REAUTH_REQUIRED, status_reason="refresh_token_reused"),
        make_account("limited", primary=60.0, block_until=int(NOW) + 600),
    ]
    text = report.table(Pool(State(accounts=accounts)).rows(NOW), NOW)
    by_name = lines_of(text)
    assert by_name["full"].startswith("→")  # fill_first: the fullest usable account
    assert "rate_limited in 10m" in by_name["limited"]
    assert "refresh_token_reused" in text
    assert "rt_secret" not in text and "eyJ" not in text
