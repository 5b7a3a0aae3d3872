"""bench/run.py's goals table: a noisy run must not show a throughput goal as met."""

from __future__ import annotations

from typing import Any

from bench.procs import TWIN
from bench.run import _goals, _throughput_table


def runs(rps: dict[str, float]) -> dict[str, Any]:
    """Throughput results with one round per configuration, over 1 connection."""
    return {
        "runs": {
            f"{name}@1": [{"rps": value, "p50_ms": 1.0, "p99_ms": 2.0}]
            for name, value in rps.items()
        },
        "rss_mib": dict.fromkeys(rps, 75.0),
    }


def verdicts(rps: dict[str, float]) -> dict[str, str]:
    """goal -> the 'met' column, for the throughput goals."""
    rows = [line.split(" | ") for line in _goals({"throughput": runs(rps)}) if "throughput" in line]
    return {row[0].lstrip("| "): row[2].rstrip(" |") for row in rows}


GOAL_1000 = "throughput, 1,000 accounts, 1 conn: >= 0.95 x bare"
GOAL_10000 = "throughput, 10,000 accounts, 1 conn: >= 0.9 x bare"
CONFIGS = {"bare": 100.0, "stream": 100.0, "addon-1000": 96.0, "addon-10000": 80.0}


def test_a_goal_is_met_when_the_twin_stays_within_the_noise_limit() -> None:
    found = verdicts({**CONFIGS, TWIN: 102.0})
    assert found == {GOAL_1000: "yes", GOAL_10000: "**no**"}


def test_a_noisy_run_cannot_show_a_goal_met() -> None:
    found = verdicts({**CONFIGS, TWIN: 90.0})
    assert found[GOAL_1000] == "not shown: the identical twin moved 10%"
    assert found[GOAL_10000] == "**no**"  # under the floor is reported, noisy or not


def test_a_run_without_a_twin_is_judged_on_its_figures() -> None:
    assert verdicts(CONFIGS) == {GOAL_1000: "yes", GOAL_10000: "**no**"}


def test_the_twin_is_explained_only_when_it_was_measured() -> None:
    class Settings:
        rounds, duration, concurrency = 1, 6.0, (1,)

    with_twin = "\n".join(_throughput_table(Settings(), runs({**CONFIGS, TWIN: 99.0})))
    without = "\n".join(_throughput_table(Settings(), runs(CONFIGS)))
    assert f"| {TWIN} | 1 | 99 | 0.990 |" in with_twin
    assert TWIN not in without
