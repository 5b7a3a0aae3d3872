"""saver.py: saves only what changed, checks everything now and then, never hogs the process."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from pathlib import Path

import pytest

from addon import saver as saver_module
from addon.pool import Pool
from addon.saver import Saver
from addon.state import Status, Window
from addon.statefile import StateFile
from addon.usage import UsageReport, WindowReport
from tests.unit.conftest import build_account


def on_disk(path: Path) -> dict[str, object]:
    state = StateFile(path).read()
    assert state is not None
    return {a.name: a for a in state.accounts}


def setup(path: Path) -> tuple[Pool, Saver]:
    StateFile(path).edit(lambda s: s.accounts.extend([build_account("a"), build_account("b")]))
    file = StateFile(path)
    pool = Pool(file.load())
    return pool, Saver(pool, file)


def test_saves_between_full_checks_write_what_the_pool_changed(state_path: Path) -> None:
    pool, saver = setup(state_path)
    assert asyncio.run(saver.save())  # the first one compares everything
    a = pool.get("a")
    pool.record_route(a, 1_800_000_000)
    pool.record_usage(a, UsageReport(WindowReport(42.0), None), 1_800_000_000)
    pool.pause("b")
    assert asyncio.run(saver.save())
    disk = on_disk(state_path)
    assert disk["a"].requests == 1  # type: ignore[attr-defined]
    assert disk["a"].primary.used_percent == 42.0  # type: ignore[attr-defined]
    assert disk["b"].status is Status.PAUSED  # type: ignore[attr-defined]


def test_a_change_made_behind_the_pool_is_saved_by_the_next_full_check(
    state_path: Path,
) -> None:
    pool, saver = setup(state_path)
    asyncio.run(saver.save())
    seen = Window(used_percent=77.0, observed_at=time.time())
    pool.get("a").primary = seen  # not through the pool: not tracked
    pool.record_route(pool.get("b"), 1_800_000_000)  # something else to save
    asyncio.run(saver.save())
    assert on_disk(state_path)["a"].primary != seen  # type: ignore[attr-defined]
    saver._last_full -= saver_module.FULL_CHECK_EVERY  # a minute later
    pool.record_route(pool.get("b"), 1_800_000_001)
    asyncio.run(saver.save())
    assert on_disk(state_path)["a"].primary == seen  # type: ignore[attr-defined]


def test_the_first_successful_save_is_announced_once(
    state_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    StateFile(state_path).edit(lambda s: s.accounts.append(build_account("a")))
    file = StateFile(state_path)
    pool = Pool(file.load())
    calls: list[bool] = []
    saver = Saver(pool, file, after_first_save=lambda: calls.append(file.read() is not None))

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file, "sync", fail)
    assert saver.prime() is False  # start-up's save failed: routing goes on
    # Only a warning then (an error logged during start-up makes mitmproxy exit); the next
    # save that fails says it as an error.
    [warning] = [r for r in caplog.records if "No space left" in r.getMessage()]
    assert warning.levelname == "WARNING" and "at start-up" in warning.getMessage()
    pool.record_route(pool.get("a"), 1_800_000_000)
    assert asyncio.run(saver.save()) is False
    assert [r.levelname for r in caplog.records if "No space left" in r.getMessage()] == [
        "WARNING",
        "ERROR",
    ]
    assert calls == []  # nothing was built that lasts
    monkeypatch.undo()
    assert asyncio.run(saver.save())
    assert calls == [True]  # after the save, on the caller's thread
    pool.record_route(pool.get("a"), 1_800_000_001)
    assert asyncio.run(saver.save())
    assert calls == [True]


def test_priming_is_the_first_save(state_path: Path) -> None:
    StateFile(state_path).edit(lambda s: s.accounts.append(build_account("a")))
    state_path.write_text(state_path.read_text() + "# hand-made\n")
    file = StateFile(state_path)
    pool = Pool(file.load())
    calls: list[None] = []
    saver = Saver(pool, file, after_first_save=lambda: calls.append(None))
    StateFile(state_path).edit(lambda s: s.accounts.append(build_account("b")))  # the CLI
    assert saver.prime()
    assert "# hand-made" not in state_path.read_text()
    assert [a.name for a in pool.accounts] == ["a", "b"]  # taken in as by any save
    pool.record_route(pool.get("a"), 1_800_000_000)
    assert asyncio.run(saver.save())
    assert calls == []  # the caller of prime settles, not the saver


def test_a_failed_save_keeps_the_counts_and_checks_everything_next(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, saver = setup(state_path)
    asyncio.run(saver.save())
    pool.record_route(pool.get("a"), 1_800_000_000)

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saver.file, "sync", fail)
    assert asyncio.run(saver.save()) is False
    assert pool.unsaved_requests[pool.get("a").id] == 1
    assert pool.unsaved_accounts is None  # the next save compares every account
    monkeypatch.undo()
    assert asyncio.run(saver.save())
    assert on_disk(state_path)["a"].requests == 1  # type: ignore[attr-defined]


def test_the_switch_interval_is_lowered_before_the_worker_starts(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the loop's thread: a loop already waiting for the GIL keeps the old interval."""
    seen: list[float] = []
    real = asyncio.to_thread

    async def recording(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(sys.getswitchinterval())
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(saver_module.asyncio, "to_thread", recording)
    pool, saver = setup(state_path)
    pool.record_route(pool.accounts[0], 1.0)
    assert asyncio.run(saver.save())
    # The merge-and-write thread was started with it (the interpreter keeps microseconds).
    assert min(seen) == pytest.approx(saver_module.SWITCH_INTERVAL, rel=0.01)


def test_saving_restores_the_interpreter_switch_interval(state_path: Path) -> None:
    before = sys.getswitchinterval()
    _pool, saver = setup(state_path)
    asyncio.run(saver.save())
    assert sys.getswitchinterval() == before
    assert saver.cost >= 0


def ticks_of(saver: Saver, count: int, urgent_after: int | None = None) -> list[float]:
    """When the saver's first `count` ticks ran (time.monotonic), each tick taking 10 ms of
    CPU; after tick number `urgent_after`, the pool gets an urgent change."""
    times: list[float] = []

    async def tick() -> None:
        times.append(time.monotonic())
        saver.cost = 0.01
        saver.pool.urgent = len(times) == urgent_after
        if len(times) == count:
            raise asyncio.CancelledError

    saver.tick = tick  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(saver.run())
    return times


def test_an_expensive_save_spaces_out_the_routine_ones(state_path: Path) -> None:
    _pool, saver = setup(state_path)
    saver.interval = 0.01
    start = time.monotonic()
    first, second = ticks_of(saver, 2)
    assert first - start >= saver.interval
    # 10 ms of the thread's CPU: the next routine save waits 1/MAX_SHARE times that.
    assert second - first >= 0.01 / saver_module.MAX_SHARE
    saver.cost = 100.0  # reading a huge file another writer changed: not a reason to wait long
    assert saver.pause() == saver_module.MAX_INTERVAL


def test_an_urgent_change_is_saved_at_the_next_interval(state_path: Path) -> None:
    _pool, saver = setup(state_path)
    saver.interval = 0.01
    first, second = ticks_of(saver, 2, urgent_after=1)
    assert saver.pause() == pytest.approx(1.0)  # what a routine change would have waited
    assert second - first < 0.5


def test_a_save_takes_the_urgency_and_a_failed_one_gives_it_back(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, saver = setup(state_path)
    pool.pause("a")
    assert pool.urgent
    assert asyncio.run(saver.save())
    assert not pool.urgent
    pool.pause("b")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saver.file, "sync", fail)
    assert asyncio.run(saver.save()) is False
    assert pool.urgent  # retried at the next interval, not after a long pause


def test_a_save_costs_the_thread_time_in_python_and_in_the_kernel(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a large file is kernel time: CPU the proxy does not get either."""
    pool, saver = setup(state_path)
    readings = iter([(1.0, 2.0), (1.25, 2.5)])

    def getrusage(who: int) -> object:
        utime, stime = next(readings)
        return types.SimpleNamespace(ru_utime=utime, ru_stime=stime)

    monkeypatch.setattr(saver_module, "_RUSAGE_THREAD", 1)
    monkeypatch.setattr(saver_module.resource, "getrusage", getrusage)
    pool.record_route(pool.get("a"), 1_800_000_000)
    assert asyncio.run(saver.save())
    assert saver.cost == pytest.approx(0.75)


def test_an_affinity_entry_set_directly_is_saved_too(state_path: Path) -> None:
    pool, saver = setup(state_path)
    asyncio.run(saver.save())
    pool.affinity.set("client-key", pool.get("a").id, 1_800_000_000)  # not via choose()
    pool.record_route(pool.get("a"), 1_800_000_000)
    assert asyncio.run(saver.save())
    state = StateFile(state_path).read()
    assert state is not None
    assert [(c.key, c.account_id) for c in state.conversations] == [
        ("client-key", pool.get("a").id)
    ]


def test_a_state_file_deleted_under_the_proxy_is_written_back_and_said(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting the file to start over, while the proxy runs, leaves every credential
    written again: the log says so, and how to start over."""
    pool, saver = setup(state_path)
    assert asyncio.run(saver.save())
    state_path.unlink()
    with caplog.at_level("WARNING"):
        assert asyncio.run(saver.save())
    assert sorted(on_disk(state_path)) == ["a", "b"]
    said = [m for m in caplog.messages if "was deleted while the proxy runs" in m]
    assert said == [
        f"quota-router: {state_path} was deleted while the proxy runs; written again from "
        "memory (to start over, delete it while the proxy is stopped)"
    ]
    with caplog.at_level("WARNING"):
        caplog.clear()
        pool.record_route(pool.get("a"), 1_800_000_000)
        assert asyncio.run(saver.save())
    assert not [m for m in caplog.messages if "was deleted" in m]  # once
