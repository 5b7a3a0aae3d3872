"""merge.py: this process's state + the file's state -> one state, newest side per field group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from addon.merge import merge, merge_account
from addon.state import Account, Block, Credentials, Plan, State, Status, Window

if TYPE_CHECKING:
    from conftest import AccountFactory


def window(percent: float, seen: float) -> Window:
    return Window(used_percent=percent, window_minutes=300, observed_at=seen)


def block(until: int, seen: float) -> Block:
    return Block(until=until, reason="usage_limit_reached", observed_at=seen)


def twin(account: Account, **changes: object) -> Account:
    """The same account (same id) as another writer holds it."""
    return account.model_copy(update=changes)


def creds(token: str, updated_at: float) -> Credentials:
    return Credentials(access_token=token, refresh_token="rt-" + token, updated_at=updated_at)


# -- which accounts exist --------------------------------------------------------------------


def test_the_file_decides_which_accounts_exist(make_account: AccountFactory) -> None:
    kept, removed, added = make_account("kept"), make_account("removed"), make_account("added")
    mine = State(accounts=[kept, removed])
    theirs = State(accounts=[twin(kept), added])
    merged = merge(mine, theirs, {removed.id: 5})
    assert [a.name for a in merged.accounts] == ["kept", "added"]
    assert [a.id for a in merged.accounts] == [kept.id, added.id]


def test_merge_does_not_change_its_inputs(make_account: AccountFactory, now: float) -> None:
    a = make_account("a", requests=1)
    mine = State(accounts=[twin(a, primary=window(50, now))])
    theirs = State(accounts=[twin(a, requests=10)])
    before = (mine.model_dump(), theirs.model_dump())
    merge(mine, theirs, {a.id: 3})
    assert (mine.model_dump(), theirs.model_dump()) == before


# -- field groups: the newer side wins -------------------------------------------------------


def test_newer_credentials_win_from_either_side(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    rotated = twin(a, credentials=creds("new", now), plan=Plan.PRO, email="new@example.com")
    stale = twin(a, credentials=creds("old", now - 50))
    # the proxy refreshed the token (mine is newer)
    merged = merge_account(rotated, stale, 0)
    assert merged.credentials.access_token == "new"
    assert (merged.plan, merged.email) == (Plan.PRO, "new@example.com")
    # the CLI imported a new login (theirs is newer)
    merged = merge_account(stale, rotated, 0)
    assert merged.credentials.access_token == "new"
    assert merged.plan is Plan.PRO


def test_newer_status_wins_from_either_side(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    paused = twin(a, status=Status.PAUSED, status_at=now)
    active = twin(a, status=Status.ACTIVE, status_at=now - 10)
    assert merge_account(active, paused, 0).status is Status.PAUSED  # the CLI paused it
    assert merge_account(paused, active, 0).status is Status.PAUSED  # kept while syncing
    resumed = twin(a, status=Status.ACTIVE, status_at=now + 10)
    assert merge_account(paused, resumed, 0).status is Status.ACTIVE


def test_reauth_reason_travels_with_the_status(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    mine = twin(a, status=Status.REAUTH_REQUIRED, status_reason="invalid_grant", status_at=now)
    merged = merge_account(mine, twin(a, status_at=now - 1), 0)
    assert (merged.status, merged.status_reason) == (Status.REAUTH_REQUIRED, "invalid_grant")


def test_newer_settings_win(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    mine = twin(a, priority=0, max_primary_percent=100.0, settings_at=now - 10)
    theirs = twin(
        a, priority=3, max_primary_percent=70.0, max_secondary_percent=80.0, settings_at=now
    )
    merged = merge_account(mine, theirs, 0)
    assert (merged.priority, merged.max_primary_percent, merged.max_secondary_percent) == (
        3,
        70.0,
        80.0,
    )
    merged = merge_account(theirs, mine, 0)
    assert merged.priority == 3


def test_each_window_keeps_the_newer_observation(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    mine = twin(a, primary=window(40, now), secondary=window(10, now - 100))
    theirs = twin(a, primary=window(30, now - 5), secondary=window(12, now - 50))
    merged = merge_account(mine, theirs, 0)
    assert merged.primary == window(40, now)
    assert merged.secondary == window(12, now - 50)
    only_mine = merge_account(mine, twin(a, primary=None, secondary=None), 0)
    assert (only_mine.primary, only_mine.secondary) == (mine.primary, mine.secondary)


# -- blocks ----------------------------------------------------------------------------------


def test_a_block_from_either_side_is_kept(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    blocked = twin(a, block=block(int(now) + 600, now))
    assert merge_account(blocked, twin(a), 0).block == blocked.block
    assert merge_account(twin(a), blocked, 0).block == blocked.block


def test_the_newer_block_wins(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    old, new = block(int(now) + 60, now - 30), block(int(now) + 9000, now)
    assert merge_account(twin(a, block=old), twin(a, block=new), 0).block == new
    assert merge_account(twin(a, block=new), twin(a, block=old), 0).block == new


def test_a_block_cleared_by_newer_usage_stays_cleared(
    make_account: AccountFactory, now: float
) -> None:
    a = make_account("a")
    on_disk = twin(a, block=block(int(now) + 86400, now - 60), primary=window(100, now - 60))
    # this process saw a response with headroom after the block and lifted it
    mine = twin(a, block=None, primary=window(15, now))
    assert merge_account(mine, on_disk, 0).block is None
    assert merge_account(on_disk, mine, 0).block is None  # the same from the other side


def test_a_block_stays_when_newer_usage_is_still_exhausted(
    make_account: AccountFactory, now: float
) -> None:
    a = make_account("a")
    on_disk = twin(a, block=block(int(now) + 86400, now - 60))
    mine = twin(a, primary=window(20, now), secondary=window(100, now))
    assert merge_account(mine, on_disk, 0).block == on_disk.block


def test_a_block_stays_when_the_usage_is_older_than_it(
    make_account: AccountFactory, now: float
) -> None:
    a = make_account("a")
    on_disk = twin(a, block=block(int(now) + 600, now))
    mine = twin(a, primary=window(20, now - 30))
    assert merge_account(mine, on_disk, 0).block == on_disk.block


# -- counters --------------------------------------------------------------------------------


def test_request_counts_add_up(make_account: AccountFactory) -> None:
    a = make_account("a")
    mine = State(accounts=[twin(a, requests=12)])  # 12 as this process last saw it
    theirs = State(accounts=[twin(a, requests=40)])  # another proxy added its own since
    merged = merge(mine, theirs, {a.id: 2})
    assert merged.accounts[0].requests == 42


def test_last_used_is_the_latest(make_account: AccountFactory, now: float) -> None:
    a = make_account("a")
    t = int(now)
    assert merge_account(twin(a, last_used_at=t), twin(a, last_used_at=t - 9), 0).last_used_at == t
    assert merge_account(twin(a, last_used_at=t - 9), twin(a, last_used_at=t), 0).last_used_at == t
    assert merge_account(twin(a, last_used_at=None), twin(a, last_used_at=t), 0).last_used_at == t
    assert merge_account(twin(a), twin(a), 0).last_used_at is None


# -- renames ---------------------------------------------------------------------------------


def test_a_rename_wins_when_its_settings_are_newer(
    make_account: AccountFactory, now: float
) -> None:
    a = make_account("old")
    merged = merge(State(accounts=[twin(a, name="new", settings_at=now)]), State(accounts=[a]), {})
    assert [x.name for x in merged.accounts] == ["new"]


def test_a_rename_onto_a_name_taken_in_the_file_keeps_the_file_name(
    make_account: AccountFactory, now: float
) -> None:
    # this proxy renamed x -> y while the CLI imported another account as y
    x, y = make_account("x"), make_account("y")
    mine = State(accounts=[twin(x, name="y", settings_at=now)])
    theirs = State(accounts=[x, y])
    merged = merge(mine, theirs, {x.id: 1})  # must not raise: that would fail every save
    assert [(a.id, a.name) for a in merged.accounts] == [(x.id, "x"), (y.id, "y")]
    assert merged.accounts[0].requests == 1
