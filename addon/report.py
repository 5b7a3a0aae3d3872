"""The status table for people (CLI `status`, mitmproxy command `router.status`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

BAR_WIDTH = 10
_COLOURS = {"active": "32", "rate_limited": "33", "paused": "2", "reauth_required": "31"}


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
    filled = round(percent / 100 * BAR_WIDTH)
    return "█" * filled + "░" * (BAR_WIDTH - filled) + f" {percent:3.0f}%"


def table(rows: Sequence[dict[str, Any]], now: float | None = None, colour: bool = False) -> str:
    now = time.time() if now is None else now
    if not rows:
        return "No accounts in the pool. Add one with: python -m addon import AUTH_JSON --name NAME"
    header = ["", "NAME", "PLAN", "STATE", "5H WINDOW", "RESET", "WEEK", "RESET", "REQS", "LAST"]
    lines = [header]
    for row in rows:
        state = row["status"]
        if row["reason"] and row["reason"] not in (state, "rate limited", "paused"):
            state += f" ({row['reason']})"
        if row["blocked_until"]:
            state += f" {until(row['blocked_until'], now)}"
        lines.append(
            [
                "→" if row["next"] else "",
                row["name"],
                row["plan"],
                state,
                bar(row["primary_used_percent"]),
                until(row["primary_reset_at"], now),
                bar(row["secondary_used_percent"]),
                until(row["secondary_reset_at"], now),
                str(row["requests"]),
                ago(row["last_used_at"], now),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        text = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        if colour and n > 0:
            code = _COLOURS.get(rows[n - 1]["status"], "0")
            text = f"\x1b[{code}m{text}\x1b[0m"
        elif colour:
            text = f"\x1b[1m{text}\x1b[0m"
        out.append(text)
    out.append("→ marks the account fill_first would pick next.")
    return "\n".join(out)
