"""The status table for people (CLI `status`, mitmproxy command `router.status`).

One line per account: name, plan, state (and why it is skipped), a bar, percent and time to
reset for each window, requests routed, last use; an arrow marks the account fill_first would
pick next. With `colour=True` (a terminal that takes ANSI colours) the states and bars are
coloured; columns line up either way, because cells are padded before they are coloured.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

BAR_WIDTH = 10

# ANSI SGR codes.
BOLD, DIM, RED, GREEN, YELLOW, CYAN = "1", "2", "31", "32", "33", "36"
_STATE_STYLE = {
    "active": GREEN,
    "rate_limited": YELLOW,
    "backoff": YELLOW,
    "paused": DIM,
    "reauth_required": RED,
}
_PLAIN_REASONS = ("rate limited", "paused")  # already said by the state itself

Cell = tuple[str, str]  # (text, SGR style or "")


def until(moment: float | None, now: float) -> str:
    """`in 2h 14m`, `in 3d 4h`, `in 40s`; '-' when unknown."""
    if moment is None:
        return "-"
    left = int(moment - now)
    if left <= 0:
        return "now"
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"in {days}d {hours}h"
    if hours:
        return f"in {hours}h {minutes:02d}m"
    if minutes:
        return f"in {minutes}m"
    return f"in {seconds}s"


def ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    left = until(2 * now - moment, now)
    return left.replace("in ", "") + " ago" if left not in ("now", "-") else "just now"


def bar(percent: float | None) -> str:
    if percent is None:
        return "·" * BAR_WIDTH + "    ?"
    shown = min(max(percent, 0.0), 100.0)
    filled = round(shown / 100 * BAR_WIDTH)
    return "█" * filled + "░" * (BAR_WIDTH - filled) + f" {percent:3.0f}%"


def level(percent: float | None) -> str:
    """The colour of a usage level: green below 70 %, yellow below 90 %, red from 90 %."""
    if percent is None:
        return DIM
    if percent >= 90:
        return RED
    return YELLOW if percent >= 70 else GREEN


def state_text(row: dict[str, Any], now: float) -> str:
    """`active`, `paused`, `rate_limited in 42m`: short; the longer why goes in `notes`."""
    state = row["status"]
    if row.get("blocked_until"):
        state += f" {until(row['blocked_until'], now)}"
    return state


def note(row: dict[str, Any]) -> str | None:
    """Why an account is skipped, when its state does not say it all, and the fix if any."""
    reason = row.get("reason") or ""
    if not reason or reason in (row["status"], *_PLAIN_REASONS):
        return None
    text = f"{row['name']}: {reason}"
    if row["status"] == "reauth_required":
        text += f"; fix: python -m addon import AUTH_JSON --name {row['name']} --replace"
    return text


def _steering(row: dict[str, Any]) -> str:
    parts = []
    if row.get("priority"):
        parts.append(f"prio {row['priority']}")
    for key, label in (("max_primary_percent", "5h"), ("max_secondary_percent", "wk")):
        cap = row.get(key)
        if cap is not None and cap < 100:
            parts.append(f"{label} cap {cap:g}%")
    return ", ".join(parts)


def _row_cells(row: dict[str, Any], now: float, steer: bool) -> list[Cell]:
    primary, secondary = row["primary_used_percent"], row["secondary_used_percent"]
    cells: list[Cell] = [
        ("→" if row["next_pick"] else "", BOLD + ";" + CYAN),
        (row["name"], BOLD),
        (row["plan"], ""),
        (state_text(row, now), _STATE_STYLE.get(row["status"], "")),
        (bar(primary), level(primary)),
        (until(row["primary_reset_at"], now), DIM),
        (bar(secondary), level(secondary)),
        (until(row["secondary_reset_at"], now), DIM),
        (str(row["requests"]), ""),
        (ago(row["last_used_at"], now), ""),
    ]
    if steer:
        cells.append((_steering(row), DIM))
    return cells


def _paint(text: str, style: str, colour: bool) -> str:
    return f"\x1b[{style}m{text}\x1b[0m" if colour and style and text.strip() else text


def _pad(text: str, width: int, right: bool, last: bool) -> str:
    if right:
        return text.rjust(width)
    return text if last else text.ljust(width)


def _summary(rows: Sequence[dict[str, Any]], now: float) -> str:
    if any(not row.get("reason") for row in rows):
        return "→ marks the account fill_first would pick next."
    resets = [row["blocked_until"] for row in rows if row.get("blocked_until")]
    if resets:
        return (
            "No account can take requests now: clients get the usage-limit answer (429) "
            f"until the earliest reset, {until(min(resets), now)}."
        )
    return "No account can take requests now: each one is paused, needs a new login or backs off."


def table(rows: Sequence[dict[str, Any]], now: float | None = None, colour: bool = False) -> str:
    now = time.time() if now is None else now
    if not rows:
        return "No accounts in the pool. Add one with: python -m addon import AUTH_JSON --name NAME"
    steer = any(_steering(row) for row in rows)
    header = ["", "NAME", "PLAN", "STATE", "5H WINDOW", "RESET", "WEEK", "RESET", "REQS", "LAST"]
    if steer:
        header.append("STEERING")
    lines: list[list[Cell]] = [[(h, BOLD) for h in header]]
    lines += [_row_cells(row, now, steer) for row in rows]
    widths = [max(len(line[i][0]) for line in lines) for i in range(len(header))]
    right = {header.index("REQS")}
    out = []
    for line in lines:
        last = len(line) - 1
        cells = [
            _paint(_pad(text, widths[i], i in right, i == last), style, colour)
            for i, (text, style) in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    for row in rows:
        text = note(row)
        if text is not None:
            out.append(_paint(f"! {text}", _STATE_STYLE.get(row["status"], ""), colour))
    out.append(_paint(_summary(rows, now), DIM, colour))
    return "\n".join(out)
