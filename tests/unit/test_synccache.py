"""synccache.py: an incremental save writes exactly what a full merge and dump would."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.merge import merge
from addon.pool import Pool
from addon.state import Block, Conversation, Credentials, State, Status
from addon.statefile import FOOTER, HEADER, StateFile, dumps, parse
from addon.synccache import SyncCache, _plain_section, _tomli_w_section, section
from addon.usage import LimitHit, UsageReport, WindowReport
from tests.unit.conftest import NOW, build_account


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def test_pieces_are_the_bytes_dumps_writes() -> None:
    accounts = [build_account(f"a{i}", primary=i * 3.5, secondary=i) for i in range(5)]
    accounts[1].block = Block(until=int(NOW) + 5, reason="usage_limit_reached", observed_at=NOW)
    state = State(
        accounts=accounts,
        conversations=[
            Conversation(key=key(i), account_id=accounts[i % 5].id, seen_at=NOW + i / 3)
            for i in range(7)
        ],
    )
    assert b"".join(SyncCache().pieces(state, HEADER, FOOTER)).decode() == dumps(state)
    assert b"".join(SyncCache().pieces(State(), HEADER, FOOTER)).decode() == dumps(State())


def test_short_entries_are_written_as_sections_with_the_same_data() -> None:
    account = build_account("s").model_copy(update={"credentials": Credentials(access_token="t")})
    state = State(
        accounts=[account], conversations=[Conversation(key="k", account_id="i", seen_at=1.0)]
    )
    text = b"".join(SyncCache().pieces(state, HEADER, FOOTER)).decode()
    assert "[[conversations]]" in text  # tomli_w would have written this one inline
    assert parse(text, Path("x")) == state


def test_section_renames_nested_tables() -> None:
    text = section("accounts", {"name": "a\n[x.b]", "credentials": {"access_token": "t"}})
    assert text == (
        '\n[[accounts]]\nname = "a\\n[x.b]"\n\n[accounts.credentials]\naccess_token = "t"\n'
    )


CONVERSATION_OPS = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0, 7.0])),
    max_size=40,
)


SCALARS = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
KEYS = st.one_of(
    st.sampled_from(["id", "name", "reset_at", "a-b"]), st.text(min_size=1, max_size=6)
)
VALUES = st.one_of(
    SCALARS,
    st.dictionaries(KEYS, SCALARS, max_size=4),
    st.dictionaries(KEYS, st.dictionaries(KEYS, SCALARS, max_size=2), max_size=2),
    st.lists(SCALARS, max_size=3),
)


@settings(max_examples=500)
@given(kind=st.sampled_from(["accounts", "conversations"]), data=st.dictionaries(KEYS, VALUES))
def test_a_section_is_tomli_ws_text(kind: str, data: dict) -> None:
    """Formatted directly or by tomli_w, a section is exactly what tomli_w writes."""
    try:
        expected = _tomli_w_section(kind, data)
    except ValueError:
        with pytest.raises(ValueError):
            section(kind, data)
        return
    assert section(kind, data) == expected


def test_accounts_and_conversations_take_the_direct_way() -> None:
    account = build_account("a", primary=12.5, secondary=3, block_until=int(NOW) + 60)
    conversation = Conversation(key="k" * 32, account_id=account.id, seen_at=NOW + 0.25)
    for kind, item in (("accounts", account), ("conversations", conversation)):
        data = item.model_dump(mode="json", exclude_none=True)
        assert _plain_section(kind, data) == _tomli_w_section(kind, data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONVERSATION_OPS, st.integers(1, 12), st.booleans())
def test_conversations_merge_into_the_written_list_exactly(
    ops: list, bound: int, full: bool
) -> None:
    """Sightings (some at the very same time), over the table's bound: the incremental merge
    of the conversations gives merge_conversations' list, order included. (Merging only the
    sightings since the last save, as the saver does between full checks, may order two
    sightings made at the very same time differently: the pool's clock never repeats.)"""
    import tempfile

    from addon import merge as merging

    saved = merging.MAX_CONVERSATIONS
    merging.MAX_CONVERSATIONS = bound
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.toml"
            StateFile(path).edit(
                lambda s: s.accounts.extend(build_account(f"a{i}") for i in range(4))
            )
            file = StateFile(path)
            pool = Pool(file.load())
            now = NOW
            for conversation, owner, step in ops:
                now += step if full else step + 0.25
                pool._set_owner(key(conversation), pool.accounts[owner], now)
                if conversation % 3:
                    continue
                known = file._known
                assert known is not None
                table = pool.affinity.table.copy()
                expected = merge(pool.state, known[1], {}, table)
                touched = pool.unsaved_conversations
                pool.unsaved_accounts, pool.unsaved_conversations = set(), {}
                if full or touched is None:  # as the saver does: all of them when unknown
                    partial = table
                else:
                    partial = {k: table[k] for k in touched if k in table}
                merged, _ = file.sync(pool.state, {}, partial, None if full else set())
                assert merged.conversations == expected.conversations
    finally:
        merging.MAX_CONVERSATIONS = saved


OPS = st.lists(
    st.tuples(
        st.sampled_from(["route", "usage", "limit", "pause", "direct", "conversation", "rename"]),
        st.integers(0, 10**6),
        st.sampled_from(["tracked", "tracked", "full", "other writer", "none"]),
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6), OPS)
def test_incremental_saves_equal_full_merges(count: int, ops: list) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.toml"
        StateFile(path).edit(
            lambda s: s.accounts.extend(build_account(f"a{i}", primary=1.0) for i in range(count))
        )
        file = StateFile(path)
        pool = Pool(file.load(), rng=random.Random(1))
        now = NOW + 100.0  # after every stamp build_account gives: a clock that only moves on
        for op, n, save in ops:
            account = pool.accounts[n % len(pool.accounts)]
            now += 1
            if op == "route":
                pool.record_route(account, now)
            elif op == "usage":
                report = UsageReport(WindowReport(n % 101, 300, int(now) + 99), None)
                pool.record_usage(account, report, now)
            elif op == "limit":
                pool.record_limit(account, LimitHit("usage_limit_reached", int(now) + 60), now)
            elif op == "pause":
                pool.mark(account, Status.PAUSED if n % 2 else Status.ACTIVE)
            elif op == "direct":  # changed in place, not through the pool
                account.last_used_at = int(now)
                pool.unsaved_accounts = None  # what the saver's periodic full check is for
            elif op == "conversation":
                pool._set_owner(key(n % 9), account, now)
            elif op == "rename" and pool.state.by_name(f"r{n}") is None:
                pool.rename(account.name, f"r{n}")
            if save == "none":
                continue
            if save == "other writer":  # another writer changed the file meanwhile
                StateFile(path).edit(lambda s, n=n, now=now: other_writer(s, n, now))
            known = file._known
            assert known is not None
            disk = parse(path.read_text(), path)
            theirs = known[1] if disk == known[1] else disk
            table = pool.affinity.table.copy()
            unsaved = pool.unsaved_requests.copy()
            expected = merge(pool.state.model_copy(deep=True), theirs, unsaved, table)
            pool.unsaved_requests.clear()
            changed, touched = pool.unsaved_accounts, pool.unsaved_conversations
            pool.unsaved_accounts, pool.unsaved_conversations = set(), {}
            if save == "tracked" and changed is not None and touched is not None:
                assert theirs is known[1]
                # what the saver does between full checks: only what the pool changed
                partial = {k: table[k] for k in touched if k in table}
                merged, external = file.sync(pool.state, unsaved, partial, changed)
            else:
                merged, external = file.sync(pool.state, unsaved, table)
            assert merged == expected
            assert parse(path.read_text(), path) == expected
            if external is not None:
                whole = Pool(pool.state.model_copy(deep=True))  # what adopting everything gives
                whole.unsaved_requests = pool.unsaved_requests.copy()
                whole.affinity.table = pool.affinity.table.copy()
                whole.adopt(merged)
                pool.adopt(merged, external)  # only what the other writer changed
                assert pool.state.accounts == whole.state.accounts
                assert dict(pool.affinity.table) == dict(whole.affinity.table)


def other_writer(state: State, n: int, now: float) -> None:
    """What the CLI or a second proxy may change: counts, status, settings, conversations
    (status and settings stamped by the clock the pool's own pause and rename use)."""
    account = state.accounts[n % len(state.accounts)]
    account.requests += n % 5
    if n % 3 == 0:
        account.status = Status.PAUSED if account.status is Status.ACTIVE else Status.ACTIVE
        account.status_at = time.time()
    if n % 4 == 1:
        account.priority, account.settings_at = n % 7, time.time()
    if n % 5 == 2:
        owner = state.accounts[(n + 1) % len(state.accounts)].id
        state.conversations.append(Conversation(key=key(n % 9), account_id=owner, seen_at=now))


def test_a_state_with_many_entries_saves_again_quickly(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    accounts = [build_account(f"a{i}", primary=1.0) for i in range(2000)]
    StateFile(path).edit(lambda s: s.accounts.extend(accounts))
    file = StateFile(path)
    pool = Pool(file.load())
    table = {key(i): (pool.accounts[i % 2000].id, NOW + i) for i in range(5000)}
    file.sync(pool.state, {}, table)
    started = time.perf_counter()
    pool.record_route(pool.accounts[7], NOW)
    file.sync(pool.state, {pool.accounts[7].id: 1}, table | {key(-1): (pool.accounts[0].id, NOW)})
    again = time.perf_counter() - started
    disk = parse(path.read_text(), path)
    assert disk.accounts[7].requests == 1 and len(disk.conversations) == 5001
    assert again < 0.5, again  # a full merge and dump of this state takes seconds


def test_a_failed_write_undoes_the_in_place_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from addon import statefile

    path = tmp_path / "state.toml"
    StateFile(path).edit(lambda s: s.accounts.extend(build_account(f"a{i}") for i in range(3)))
    file = StateFile(path)
    pool = Pool(file.load())
    for i in range(5):
        pool._set_owner(key(i), pool.accounts[i % 3], NOW + i)
    file.sync(pool.state, {}, pool.affinity.table.copy())
    known = file._known
    assert known is not None
    before = [c.model_copy() for c in known[1].conversations]
    # new sightings: one moves, one is new; then the rename over the file fails
    pool._set_owner(key(1), pool.accounts[2], NOW + 10)
    pool._set_owner(key(9), pool.accounts[0], NOW + 11)
    partial = {k: pool.affinity.table[k] for k in (key(1), key(9))}

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", fail)
    with pytest.raises(OSError):
        file.sync(pool.state, {}, partial, set())
    monkeypatch.undo()
    assert known[1].conversations == before  # what the file holds, still
    expected = merge(pool.state, known[1], {}, pool.affinity.table.copy())
    merged, _ = file.sync(pool.state, {}, partial, set())
    assert merged.conversations == expected.conversations
    assert parse(path.read_text(), path).conversations == expected.conversations


@given(st.lists(st.sampled_from([1.0, 2.0, 2.5, 3.0]), max_size=3000))
def test_sorting_in_steps_gives_sorted_order_exactly(keys: list[float]) -> None:
    from addon.synccache import _sorted

    items = list(enumerate(keys))  # equal keys keep their order, as with sorted()
    assert _sorted(items, key=lambda item: item[1]) == sorted(items, key=lambda item: item[1])
