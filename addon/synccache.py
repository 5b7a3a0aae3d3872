"""What the proxy's last save merged and wrote, so the next save redoes only what changed.

A save merges the pool with the file and writes the whole file (statefile.StateFile.sync). With
10,000 accounts and 20,000 conversations, doing all of that from scratch takes seconds of CPU
(pydantic copies, sorting, TOML formatting), twice a second. Between two saves of the same
process (nobody else wrote the file) almost nothing changed, and:

- an account that did not change since the last save, merged again with what that save wrote,
  gives what that save wrote (merging a merge result with the same side again changes
  nothing), so it is reused: the object and its TOML text;
- the conversations are the list written last plus this process's newer sightings: those are
  moved to their place in the (sorted) list, the rest is reused, objects and TOML text.

Which accounts changed comes from the pool (`changed`: the ids it changed, see Pool._changed),
or, when the caller does not say (`changed` is None: the first save, after adopting another
writer's file, and now and then as a check), from comparing every account's fields with those
of the last merge (a tuple of references, compared by identity first), so an account changed in
place by anyone is still saved then. With `changed`, the conversations passed may be only those
set since the last save: the others are in the file already.

Everything here gives what merge.merge_accounts / merge.merge_conversations / statefile.dumps
give (tests/unit/test_synccache.py checks it); whenever a shortcut does not apply (another
writer's file, two sightings at the very same time), the full computation runs.
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Mapping
from itertools import repeat
from typing import Any

import tomli_w

from addon import merge as merging
from addon.merge import merge_account
from addon.state import Account, Conversation, State

SLICE = 1000  # items per step of the C-speed loops (each step holds the GIL ~0.1 ms)


def snapshot(model: Any) -> tuple[Any, ...]:
    """A model's field values as they are now (one C-level copy: safe against another thread
    replacing fields meanwhile)."""
    return tuple(model.__dict__.values())


def section(kind: str, data: Mapping[str, Any]) -> str:
    """One element of a TOML array of tables, as tomli_w writes it in `[[kind]]` form."""
    fast = _plain_section(kind, data)
    return fast if fast is not None else _tomli_w_section(kind, data)


def _tomli_w_section(kind: str, data: Mapping[str, Any]) -> str:
    text = tomli_w.dumps({"x": data})
    if not text.startswith("[x]\n"):  # no plain fields: never for accounts or conversations
        raise ValueError(f"cannot write a {kind} entry without fields")
    # Strings never hold a raw newline (tomli_w escapes it), so this only renames the headers
    # of nested tables ([x.credentials] -> [accounts.credentials]).
    return f"\n[[{kind}]]\n" + text[4:].replace("\n[x.", f"\n[{kind}.")


# What tomli_w escapes in a string (TOML's basic strings may hold a raw tab), and its bare keys.
_ESCAPED = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _plain_literal(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return None if _ESCAPED.search(value) else f'"{value}"'
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    return None


def _plain_lines(data: Mapping[str, Any], lines: list[str]) -> list[tuple[str, Any]] | None:
    """The `key = value` lines of a table's plain fields; its sub-tables, or None when a
    field needs more than this (escapes, quoted keys, arrays, deeper tables)."""
    tables = []
    for key, value in data.items():
        if not _BARE_KEY.fullmatch(key):
            return None
        if type(value) is dict:
            tables.append((key, value))
            continue
        text = _plain_literal(value)
        if text is None:
            return None
        lines.append(f"{key} = {text}\n")
    return tables


def _plain_section(kind: str, data: Mapping[str, Any]) -> str | None:
    """section() for the common shape (plain fields and one level of tables, nothing to
    escape), formatted here: tomli_w escapes strings a character at a time in Python, ~170 us
    for an account with its tokens, and a busy save writes hundreds of entries. tomli_w's
    exact text (tests/unit/test_synccache.py checks it); None when the shape is not common."""
    lines = [f"\n[[{kind}]]\n"]
    tables = _plain_lines(data, lines)
    if tables is None or len(lines) == 1:
        return None  # not plain, or no plain field (tomli_w's rules and error apply)
    for key, table in tables:
        lines.append(f"\n[{kind}.{key}]\n")
        if _plain_lines(table, lines) != []:
            return None  # not plain, or a table within the table
    return "".join(lines)


def _seen(item: tuple[str, tuple[str, float]]) -> float:
    return item[1][1]


def _seen_at(conversation: Conversation) -> float:
    return conversation.seen_at


def _sorted(items: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    """sorted(items, key=key), in steps: slices sorted one by one (one C call each) and merged
    (stable, as sorted is). One sort of 20,000 items holds the GIL for milliseconds."""
    runs = [sorted(items[i : i + SLICE], key=key) for i in range(0, len(items), SLICE)]
    return runs[0] if len(runs) == 1 else list(heapq.merge(*runs, key=key))


class SyncCache:
    def __init__(self) -> None:
        self.changed: Collection[str] | None = None  # for the next merge; None: compare all
        # account id -> (fields of this process's account when merged, the merged account)
        self._merged: dict[str, tuple[tuple[Any, ...], Account]] = {}
        self._pending: dict[str, tuple[tuple[Any, ...], Account]] = {}
        self._replace_all = False  # the pending merge looked at every account
        # The lists last written (as the State on disk holds them), and where each account is.
        self._accounts: list[Account] | None = None
        self._positions: dict[str, int] = {}
        self._conversations: list[Conversation] | None = None
        self._table: dict[str, tuple[str, float]] = {}  # the conversations last written
        self._ids: set[str] = set()  # the account ids the conversations were filtered for
        self._next_table: dict[str, tuple[str, float]] | None = None
        # What _merge_into_written changed in place: (list, list steps, table entries, how
        # many items were retired before).
        self._undo: tuple[list[Conversation], list[Any], list[Any], int] | None = None
        # TOML text by id() of an account or conversation written (the object is kept, so its
        # id cannot be reused): merged accounts are never changed once written (the pool works
        # on copies) and conversations are frozen.
        self._text: dict[int, bytes] = {}
        self._alive: dict[int, Any] = {}
        self._retired: list[Any] = []  # replaced by the pending merge: their text goes

    # -- merging (stand-ins for merge.merge_accounts / merge.merge_conversations) ------------
    def merge_list(
        self,
        own: Mapping[str, Account],
        theirs: list[Account],
        unsaved_requests: Mapping[str, int],
    ) -> list[Account]:
        self._pending = {}
        if self.changed is not None and theirs is self._accounts:
            # The file is what the last save wrote: only the changed accounts need a merge.
            self._replace_all = False
            merged = list(theirs)
            for account_id in {*self.changed, *unsaved_requests}:
                pos = self._positions.get(account_id)
                if pos is not None and account_id in own:
                    merged[pos] = self._merge(own[account_id], theirs[pos], unsaved_requests)
                    if merged[pos] is not theirs[pos]:
                        self._retired.append(theirs[pos])
            return merged
        self._replace_all = True
        result = []
        for account in theirs:
            mine = own.get(account.id)
            if mine is None:
                result.append(account.model_copy())
                continue
            last = self._merged.get(account.id)
            if (
                not unsaved_requests.get(account.id)
                and last is not None
                and last[1] is account
                and last[0] == snapshot(mine)
            ):
                self._pending[account.id] = last
                result.append(account)  # unchanged since it was merged into what is on disk
            else:
                result.append(self._merge(mine, account, unsaved_requests))
                self._retired.append(account)
        return result

    def _merge(
        self, mine: Account, theirs: Account, unsaved_requests: Mapping[str, int]
    ) -> Account:
        # A copy first: the event loop may change `mine` while this thread merges.
        view = mine.model_copy()
        merged = merge_account(view, theirs, unsaved_requests.get(theirs.id, 0))
        self._pending[theirs.id] = (snapshot(view), merged)
        return merged

    def merge_table(
        self,
        mine: Mapping[str, tuple[str, float]],
        theirs: list[Conversation],
        accounts: set[str],
    ) -> list[Conversation]:
        self._next_table = None
        if theirs is self._conversations and accounts == self._ids:
            quick = self._merge_into_written(mine, theirs)
            if quick is not None:
                return quick
        return self._merge_table_fully(mine, theirs, accounts)

    def _merge_into_written(
        self, mine: Mapping[str, tuple[str, float]], theirs: list[Conversation]
    ) -> list[Conversation] | None:
        """The last list written, with this process's newer sightings moved into place; None
        when that might not give exactly merge_conversations' order (then it runs).

        The list and table written last are changed in place, not copied: a new 20,000-entry
        list per save would be walked by the garbage collector (milliseconds, holding the GIL)
        until it grows old. What is changed is logged, and undone when the save fails.
        """
        table = self._table
        changes = []
        for key, value in mine.items():
            old = table.get(key)
            if old is not value and (old is None or old[1] < value[1]):
                if value[0] not in self._ids:
                    return None
                changes.append((key, value, old))
        if not changes:
            self._next_table = table
            return theirs
        if len({value[1] for _key, value, _old in changes}) < len(changes):
            return None  # two sightings at one time: keep merge_conversations' order
        self._undo = (theirs, [], [], len(self._retired))
        steps, entries = self._undo[1], self._undo[2]
        for _key, _value, old in changes:  # out of the list first (it is sorted by seen_at)
            if old is not None:
                lo = bisect_left(theirs, old[1], key=_seen_at)
                hi = bisect_right(theirs, old[1], lo=lo, key=_seen_at)
                if hi - lo != 1:
                    self._rollback()
                    return None  # two sightings at one time: keep merge_conversations' order
                steps.append((lo, theirs[lo]))
                self._retired.append(theirs[lo])
                del theirs[lo]
        for key, value, old in changes:
            account_id, seen_at = value
            pos = bisect_left(theirs, seen_at, key=_seen_at)
            if pos < len(theirs) and theirs[pos].seen_at == seen_at:
                self._rollback()
                return None
            theirs.insert(pos, Conversation(key=key, account_id=account_id, seen_at=seen_at))
            steps.append((pos, None))
            entries.append((key, old))
            table[key] = value
        excess = len(theirs) - merging.MAX_CONVERSATIONS  # the oldest go (as they would)
        if excess > 0:
            cut = theirs[:excess]
            self._retired += cut
            for c in cut:
                entries.append((c.key, table.pop(c.key)))
            steps.append((-1, cut))
            del theirs[:excess]
        self._next_table = table
        return theirs

    def _rollback(self) -> None:
        """Undo what _merge_into_written changed in place."""
        if self._undo is None:
            return
        (written, steps, entries, retired), self._undo = self._undo, None
        del self._retired[retired:]
        for pos, item in reversed(steps):
            if pos == -1:
                written[0:0] = item
            elif item is None:
                del written[pos]
            else:
                written.insert(pos, item)
        for key, old in reversed(entries):
            if old is None:
                del self._table[key]
            else:
                self._table[key] = old

    def _merge_table_fully(
        self,
        mine: Mapping[str, tuple[str, float]],
        theirs: list[Conversation],
        accounts: set[str],
    ) -> list[Conversation]:
        """merge.merge_conversations, reusing the Conversation objects that did not change."""
        table = {c.key: (c.account_id, c.seen_at) for c in theirs}
        objects = {c.key: c for c in theirs}
        for key, (account_id, seen_at) in mine.items():
            if key not in table or table[key][1] < seen_at:
                table[key] = (account_id, seen_at)
        newest = _sorted(list(table.items()), key=_seen)[-merging.MAX_CONVERSATIONS :]
        result = []
        for key, (account_id, seen_at) in newest:
            if account_id not in accounts:
                continue
            c = objects.get(key)
            if c is None or c.account_id != account_id or c.seen_at != seen_at:
                c = Conversation(key=key, account_id=account_id, seen_at=seen_at)
            result.append(c)
        self._next_table = {c.key: (c.account_id, c.seen_at) for c in result}
        kept = set(map(id, result))
        self._retired += [c for c in theirs if id(c) not in kept]
        return result

    def commit(self, state: State) -> None:
        """`state` (what the merges above made) is now on disk."""
        if self._replace_all:
            self._merged = self._pending
            self._positions = {a.id: i for i, a in enumerate(state.accounts)}
            self._ids = set(self._positions)
        else:
            self._merged.update(self._pending)
        self._pending, self._undo = {}, None
        self._accounts = state.accounts
        if self._next_table is not None:
            self._table, self._next_table = self._next_table, None
            self._conversations = state.conversations
        for item in self._retired:  # keeps the text cache as big as the state, not bigger
            self._text.pop(id(item), None)
            self._alive.pop(id(item), None)
        self._retired = []
        if len(self._alive) > 2 * (len(state.accounts) + len(state.conversations)) + 64:
            keep = {id(item): item for item in (*state.accounts, *state.conversations)}
            self._text = {i: t for i, t in self._text.items() if i in keep}
            self._alive = {i: keep[i] for i in self._text}

    def discard(self) -> None:
        """The merge was not written."""
        self._rollback()
        self._pending, self._next_table, self._retired = {}, None, []

    def texts(self, state: State) -> dict[bytes, Any]:
        """The TOML text this process wrote for each account and conversation of `state` it
        wrote, to the object (sections.parse_reusing gives these back for unchanged text)."""
        text, alive = self._text, self._alive
        return {
            text[id(item)]: item
            for item in (*state.accounts, *state.conversations)
            if alive.get(id(item)) is item
        }

    # -- writing ---------------------------------------------------------------------------
    def pieces(self, state: State, header: str, footer: str = "") -> list[bytes]:
        """The file's bytes in pieces (joined, exactly statefile.dumps(state) when no array
        is short enough for tomli_w to write inline; otherwise the same TOML data)."""
        head: dict[str, Any] = {"version": state.version}
        if not state.accounts:
            head["accounts"] = []
        if not state.conversations:
            head["conversations"] = []
        pieces = [(header + tomli_w.dumps(head)).encode()]
        for kind, items in (("accounts", state.accounts), ("conversations", state.conversations)):
            # At C speed for the unchanged ones; b"" (no text yet) for the others. In slices:
            # one C call over 20,000 items would hold the GIL for milliseconds.
            known: list[bytes] = []
            for start in range(0, len(items), SLICE):
                ids = map(id, items[start : start + SLICE])
                known.extend(map(self._text.get, ids, repeat(b"")))
            missing = len(known) - sum(map(bool, known))
            start = 0
            while missing:
                i = known.index(b"", start)
                item = items[i]
                data = item.model_dump(mode="json", exclude_none=True)
                known[i] = self._text[id(item)] = section(kind, data).encode()
                self._alive[id(item)] = item
                missing, start = missing - 1, i + 1
            pieces.extend(known)
        if footer:
            pieces.append(footer.encode())
        return pieces
