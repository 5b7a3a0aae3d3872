"""Usage history for the dashboard's chart: spacing, age limit, bounded memory."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addon.history import MAX_AGE, SPACING, History

NOW = 1_800_000_000.0


def test_defaults_keep_six_hours_at_one_point_per_thirty_seconds() -> None:
    history = History()
    assert (history.max_age, history.spacing) == (MAX_AGE, SPACING) == (6 * 3600, 30.0)
    assert history.max_points == 721


def test_points_closer_than_the_spacing_update_the_last_point() -> None:
    history = History(spacing=30)
    history.add("a", NOW, 10.0, 1.0)
    history.add("a", NOW + 10, 12.0, 1.5)
    history.add("a", NOW + 29, 15.0, None)
    assert history.points("a", NOW + 29) == [(NOW, 15.0, None)]
    history.add("a", NOW + 30, 20.0, 2.0)
    assert history.points("a", NOW + 30) == [(NOW, 15.0, None), (NOW + 30, 20.0, 2.0)]


def test_old_points_are_not_shown() -> None:
    history = History(max_age=100, spacing=10)
    history.add("a", NOW, 1.0, 1.0)
    history.add("a", NOW + 50, 2.0, 2.0)
    assert [p[0] for p in history.points("a", NOW + 100)] == [NOW, NOW + 50]
    assert [p[0] for p in history.points("a", NOW + 101)] == [NOW + 50]
    assert history.points("unknown", NOW) == []


def test_each_series_is_bounded() -> None:
    history = History(max_age=100, spacing=10)
    for i in range(1000):
        history.add("a", NOW + 10 * i, float(i % 100), None)
    assert len(history.series["a"]) == history.max_points == 11
    assert history.points("a", NOW + 9990)[-1] == (NOW + 9990, 99.0, None)


def test_quiet_accounts_are_forgotten() -> None:
    history = History(max_age=100, spacing=10)
    history.add("removed", NOW, 1.0, 1.0)
    history.add("kept", NOW + 50, 1.0, 1.0)
    history.add("kept", NOW + 150, 2.0, 2.0)
    assert set(history.series) == {"kept"}
    history.forget("kept")
    history.forget("never-there")
    assert history.series == {}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        History(spacing=0)
    with pytest.raises(ValueError):
        History(max_age=-1)


def test_reading_while_another_thread_writes() -> None:
    history = History(max_age=500, spacing=1)
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            history.add("a", NOW + i, 1.0, 1.0)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(2000):
            history.points("a", NOW)  # must never raise "mutated during iteration"
    finally:
        stop.set()
        writer.join()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.floats(0, 5000),
            st.none() | st.floats(0, 100),
        ),
        max_size=300,
    )
)
def test_spacing_and_bounds_hold_for_any_sequence(
    events: list[tuple[str, float, float | None]],
) -> None:
    history = History(max_age=600, spacing=30)
    clock = NOW
    for account, step, used in events:
        clock += step / 100  # time only moves forward
        history.add(account, clock, used, used)
    for account, points in history.series.items():
        assert len(points) <= history.max_points
        times = [p[0] for p in points]
        assert all(b - a >= 30 for a, b in itertools.pairwise(times))
        assert all(clock - p[0] <= 600 for p in history.points(account, clock))


def test_a_report_keeps_an_account_from_being_forgotten_whatever_the_order() -> None:
    history = History(max_age=100, spacing=10)
    for name in ("a", "b", "c"):
        history.add(name, NOW, 1.0, 1.0)
    history.add("a", NOW + 60, 2.0, 2.0)  # "a" reported again: "b" and "c" are now the oldest
    history.add("c", NOW + 105, 3.0, 3.0)  # "b" has been quiet for over 100 s
    assert list(history.series) == ["a", "c"]
    history.add("c", NOW + 170, 4.0, 4.0)  # and now "a" has too
    assert list(history.series) == ["c"]
