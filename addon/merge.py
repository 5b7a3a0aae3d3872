"""Merge two versions of the state: what this process holds and what is on disk now.

The disk decides which accounts exist (only the CLI adds or removes them). Within an account,
each group of fields keeps the side that changed it last, and request counts add up: the disk's
count plus what this process routed since it last saved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from addon.state import Account, Backoff, Block, Conversation, State, Window

# The most conversations kept in the file; the in-memory table has its own bound.
MAX_CONVERSATIONS = 20_000


def _newer_window(mine: Window | None, theirs: Window | None) -> Window | None:
    if mine is None or theirs is None:
        return mine or theirs
    return mine if mine.observed_at > theirs.observed_at else theirs


def _newer_backoff(mine: Backoff | None, theirs: Backoff | None) -> Backoff | None:
    if mine is None or theirs is None:
        return mine or theirs
    return mine if mine.observed_at >= theirs.observed_at else theirs


def _live_block(mine: Account, theirs: Account, windows: list[Window | None]) -> Block | None:
    blocks = [b for b in (mine.block, theirs.block) if b is not None]
    if not blocks:
        return None
    block = max(blocks, key=lambda b: b.observed_at)
    # A block one side already cleared (fresh usage showed headroom) stays cleared.
    later = [w for w in windows if w is not None and w.observed_at > block.observed_at]
    if later and all(w.used_percent < 100 for w in later):
        return None
    return block


@dataclass(frozen=True, slots=True)
class Outside:
    """What another writer changed in the file since this process last read or wrote it.

    `accounts` maps the id of each account it changed to its position in the file's list (and
    in the merged one); None when that is not known (the first read) or when accounts were
    added, removed or reordered: then the caller takes in everything. `conversations` holds the
    entries it wrote that this process had not.
    """

    accounts: dict[str, int] | None
    conversations: dict[str, tuple[str, float]]


def outside_changes(known: State | None, theirs: State) -> Outside:
    """Compare the file as read with what this process knew of it (in the worker thread: the
    event loop then takes in only what differs)."""
    conversations = {c.key: (c.account_id, c.seen_at) for c in theirs.conversations}
    if known is None:
        return Outside(None, conversations)
    for c in known.conversations:
        if conversations.get(c.key) == (c.account_id, c.seen_at):
            del conversations[c.key]
    if len(known.accounts) != len(theirs.accounts):
        return Outside(None, conversations)
    changed: dict[str, int] = {}
    for pos, (old, new) in enumerate(zip(known.accounts, theirs.accounts, strict=True)):
        if old.id != new.id:
            return Outside(None, conversations)
        if old is not new and old != new:
            changed[new.id] = pos
    return Outside(changed, conversations)


def merge_account(mine: Account, theirs: Account, unsaved_requests: int) -> Account:
    merged = theirs.model_copy()
    if mine.credentials.updated_at > theirs.credentials.updated_at:
        merged.credentials = mine.credentials
        merged.plan, merged.email = mine.plan, mine.email
    if mine.status_at > theirs.status_at:
        merged.status, merged.status_reason = mine.status, mine.status_reason
        merged.status_at = mine.status_at
    if mine.settings_at > theirs.settings_at:
        merged.name, merged.priority = mine.name, mine.priority
        merged.max_primary_percent = mine.max_primary_percent
        merged.max_secondary_percent = mine.max_secondary_percent
        merged.settings_at = mine.settings_at
    merged.primary = _newer_window(mine.primary, theirs.primary)
    merged.secondary = _newer_window(mine.secondary, theirs.secondary)
    merged.block = _live_block(mine, theirs, [merged.primary, merged.secondary])
    # A backoff is short-lived; whichever side saw the latest error decides.
    merged.backoff = _newer_backoff(mine.backoff, theirs.backoff)
    merged.requests = theirs.requests + unsaved_requests
    used = [t for t in (mine.last_used_at, theirs.last_used_at) if t is not None]
    merged.last_used_at = max(used) if used else None
    return merged


def merge_conversations(
    mine: Mapping[str, tuple[str, float]], theirs: list[Conversation], accounts: set[str]
) -> list[Conversation]:
    """Union of both tables; the newer sighting wins; only accounts that still exist."""
    table = {c.key: (c.account_id, c.seen_at) for c in theirs}
    for key, (account_id, seen_at) in mine.items():
        if key not in table or table[key][1] < seen_at:
            table[key] = (account_id, seen_at)
    newest = sorted(table.items(), key=lambda item: item[1][1])[-MAX_CONVERSATIONS:]
    return [
        Conversation(key=key, account_id=account_id, seen_at=seen_at)
        for key, (account_id, seen_at) in newest
        if account_id in accounts
    ]


def merge_accounts(
    own: Mapping[str, Account], theirs: list[Account], unsaved_requests: Mapping[str, int]
) -> list[Account]:
    """The file's accounts (it decides which exist), each merged with this process's."""
    return [
        merge_account(own[a.id], a, unsaved_requests.get(a.id, 0))
        if a.id in own
        else a.model_copy()
        for a in theirs
    ]


def merge(
    mine: State,
    theirs: State,
    unsaved_requests: Mapping[str, int],
    conversations: Mapping[str, tuple[str, float]] | None = None,
    *,
    merge_list: Callable[
        [Mapping[str, Account], list[Account], Mapping[str, int]], list[Account]
    ] = merge_accounts,
    merge_table: Callable[
        [Mapping[str, tuple[str, float]], list[Conversation], set[str]], list[Conversation]
    ] = merge_conversations,
) -> State:
    """`conversations` is this process's affinity table; None keeps the file's as it is.

    `merge_list` and `merge_table` stand in for merge_accounts and merge_conversations: the
    state file passes versions that give the same results faster (synccache.SyncCache).
    """
    own = {a.id: a for a in list(mine.accounts)}
    accounts = merge_list(own, theirs.accounts, unsaved_requests)
    _undo_colliding_renames(accounts, theirs.accounts)
    ids = {a.id for a in accounts}
    kept = merge_table(conversations or {}, theirs.conversations, ids)
    # Every item is a validated Account / Conversation already: validating the lists again
    # (State(...)) only checks their types, in one uninterruptible step of ~10 ms for 30,000
    # items that would hold up the event loop while a worker thread saves.
    state = State.model_construct(version=theirs.version, accounts=accounts, conversations=kept)
    state._unique()  # what State's own validator checks
    return state


def _undo_colliding_renames(merged: list[Account], theirs: list[Account]) -> None:
    """A rename on one side that collides with a name on the other keeps the file's name:
    two accounts with one name would make every later merge (and save) fail."""
    if len({a.name for a in merged}) == len(merged):
        return  # the common case, found in one pass
    while True:
        count = Counter(a.name for a in merged)
        clashes = [
            (a, old)
            for a, old in zip(merged, theirs, strict=True)
            if count[a.name] > 1 and a.name != old.name
        ]
        if not clashes:
            return
        for account, old in clashes:
            account.name = old.name
