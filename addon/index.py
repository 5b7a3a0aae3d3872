"""A fast index of the pool for choosing: O(log n) per decision and per account change.

selection.py's pure functions are the rules; this index gives the same answers without
scanning the pool on every request:

- Accounts are grouped by (capped, priority). Only *ready* accounts (active, and past every
  block, exhausted window and backoff at the index's clock) are in a group; the best tier is
  the lowest priority with a non-empty uncapped group, else the lowest with a non-empty capped
  group (selection.candidates).
- Each group keeps its members sorted by `fill_first_key` (fill_first: the first one wins) and
  by `least_used_key` (capacity_weighted when every weight is 0), and a sum tree of weights
  over the accounts' positions in the pool (capacity_weighted: one draw walks down the tree,
  like `random.choices` bisects its cumulative weights: same order, one `rng.random()`).
- Accounts that will become ready just by time passing (a block or backoff ends) wait in a
  min-heap keyed by that time; each decision first moves the ones whose time has come.
- Whoever changes an account calls `touch(account)` (pool.py does, for every change that
  matters here). A pick whose account changed behind the index's back is re-indexed and the
  decision retried, so a stale entry can never route to a paused or blocked account.

A decision for a time earlier than what the index already took in (rare: a flow that awaited
and decides again with its old clock) cannot be answered from the index; `choose` then returns
FALLBACK and the caller uses selection.choose, the reference.

The one difference from the reference: the sum tree adds the weights in a different order than
`itertools.accumulate`, so for the same random number the draw may differ when it falls within
floating-point rounding (~1e-16 relative) of a boundary between two accounts. The distribution
is the same.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from sortedcontainers import SortedList  # a dependency of mitmproxy itself

from addon import selection
from addon.selection import Strategy
from addon.state import Account, Status
from addon.usage import DEFAULT_COOLDOWN

FALLBACK: Any = object()  # choose() could not answer for that time: use selection.choose
NEVER = -math.inf
# A clock more than this far behind what the index took in is a jump of the system clock: the
# index is rebuilt for it instead of falling back to the O(n) reference on every decision.
REBUILD_AFTER_JUMP = 5.0


def stamps(account: Account) -> list[float]:
    """Every time at which the passing of time alone may change how selection treats this
    account: a block or backoff ends, a window resets or its cooldown ends. Between two of
    them, skip_reason/capped/keys/weight evaluated at any time give the same answer."""
    found: list[float] = []
    if account.block is not None:
        found.append(account.block.until)
    if account.backoff is not None:
        found.append(account.backoff.until)
    for window in (account.primary, account.secondary):
        if window is not None:
            if window.reset_at:
                found.append(window.reset_at)
            else:
                found.append(int(window.observed_at) + DEFAULT_COOLDOWN)
    return found


def signature(account: Account) -> tuple[Any, ...]:
    """Every field the choice depends on (compared by identity first: cheap)."""
    return (
        account.status,
        account.primary,
        account.secondary,
        account.block,
        account.backoff,
        account.priority,
        account.max_primary_percent,
        account.max_secondary_percent,
        account.name,
        account.plan,
    )


class _SumTree:
    """Sums of non-negative weights over positions 0..size-1 (size a power of two), sparse:
    only nodes above a positive weight are stored. Each node is recomputed from its two
    children, so the sums never drift however often a weight changes."""

    __slots__ = ("nodes", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.nodes: dict[int, float] = {}

    @property
    def total(self) -> float:
        return self.nodes.get(1, 0.0)

    def set(self, pos: int, value: float) -> None:
        nodes = self.nodes
        node = self.size + pos
        if value > 0:
            nodes[node] = value
        else:
            nodes.pop(node, None)
        node >>= 1
        while node:
            total = nodes.get(2 * node, 0.0) + nodes.get(2 * node + 1, 0.0)
            if total > 0:
                nodes[node] = total
            else:
                nodes.pop(node, None)
            node >>= 1

    def fill(self, weights: dict[int, float]) -> None:
        """Set many positive weights at once (on an empty tree): O(n) instead of O(n log n)."""
        nodes, level = self.nodes, {self.size + pos: w for pos, w in weights.items()}
        while level:
            nodes.update(level)
            if 1 in level:
                break
            parents: dict[int, float] = {}
            for node in sorted(level):  # the left child first: the same sums as set() makes
                parents[node >> 1] = parents.get(node >> 1, 0.0) + level[node]
            level = parents

    def find(self, u: float) -> int:
        """The first position whose running sum exceeds u (0 <= u < total)."""
        get, node, size = self.nodes.get, 1, self.size
        while node < size:
            node *= 2
            weight = get(node, 0.0)
            # Right only with weight there: rounding must never land on a weight of 0.
            if u >= weight and get(node + 1, 0.0) > 0:
                u -= weight
                node += 1
        return node - size


class _Entry:
    __slots__ = ("account", "group", "next_change", "place", "pos", "sig")

    def __init__(self, account: Account, pos: int) -> None:
        self.account = account
        self.pos = pos
        self.group: _Group | None = None  # set while eligible
        # While eligible: (group key, fill_first key, least-used key, weight).
        self.place: tuple[Any, ...] | None = None
        self.next_change: float | None = None  # set while a heap item is due for it
        self.sig: tuple[Any, ...] = ()


class _Group:
    """The eligible accounts of one (capped, priority) pair."""

    __slots__ = ("fill", "key", "least", "members", "positive", "tree")

    def __init__(self, key: tuple[bool, int], tree_size: int) -> None:
        self.key = key
        self.members: set[int] = set()  # positions
        self.fill: SortedList = SortedList()  # (fill_first_key..., pos), when kept
        self.least: SortedList = SortedList()  # (least_used_key..., pos), when kept
        self.tree = _SumTree(tree_size)  # weights by position, when kept
        self.positive = 0  # members with a weight above 0, when kept


class AccountIndex:
    def __init__(self, accounts: Sequence[Account], now: float) -> None:
        self.source = accounts
        self.count = len(accounts)
        self.clock = now  # every entry was evaluated for this time (or an equivalent one)
        # The latest time stamp (see stamps()) already passed when an entry was evaluated:
        # for any time from here on, the entries' evaluations still hold (see choose).
        self.valid_from = NEVER
        self.tree_size = 1 << max(0, self.count - 1).bit_length()
        self.entries: dict[str, _Entry] = {}
        self.by_pos: list[_Entry] = []
        self.groups: dict[tuple[bool, int], _Group] = {}
        self.tiers: dict[bool, SortedList] = {False: SortedList(), True: SortedList()}
        self.heap: list[tuple[float, int]] = []  # (when, pos): re-evaluate; stale items skipped
        self.scheduled = 0
        self.dirty: dict[int, _Entry] = {}  # touched since the last decision, by position
        # The order structures of a strategy are kept only once it has been asked for: a pool
        # uses one strategy, and each kept structure costs time on every change.
        self.keeps_fill = False
        self.keeps_weights = False
        self._building = True
        for pos, account in enumerate(accounts):
            entry = _Entry(account, pos)
            self.entries[account.id] = entry
            self.by_pos.append(entry)
            self._place(entry)
        self._building = False
        heapq.heapify(self.heap)

    def adopt(self, accounts: Sequence[Account]) -> bool:
        """Take a new list of account objects for the same accounts in the same order (the
        pool adopted a merged state): O(n) comparisons instead of an O(n log n) rebuild on the
        event loop. False when the accounts differ (then rebuild)."""
        if len(accounts) != self.count or any(
            a.id != e.account.id for a, e in zip(accounts, self.by_pos, strict=True)
        ):
            return False
        self.source = accounts
        for account, entry in zip(accounts, self.by_pos, strict=True):
            entry.account = account
            if entry.sig != signature(account):
                self.dirty[entry.pos] = entry
        return True

    def stale(self, accounts: Sequence[Account]) -> bool:
        """True when the pool's list of accounts is not the one indexed (replaced or edited)."""
        return accounts is not self.source or len(accounts) != self.count

    # -- changes ---------------------------------------------------------------------------
    def touch(self, account: Account) -> None:
        """Re-index an account after a change of its status, usage, limits or settings (at
        the next decision: an account that changes twice in between is evaluated once)."""
        entry = self.entries.get(account.id)
        if entry is not None and entry.account is account:
            self.dirty[entry.pos] = entry
        # else: not an indexed account (the pool rebuilds when its list changes)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, {}
        for entry in dirty.values():
            self._place(entry)

    def _place(self, entry: _Entry) -> None:
        """Evaluate the account at the clock with selection.py's own functions, and move it
        in the structures only when where it belongs changed."""
        place = self._evaluate(entry)
        if place == entry.place:
            return
        if entry.place is not None:
            self._leave(entry)
        if place is not None:
            self._join(entry, place)

    def _evaluate(self, entry: _Entry) -> tuple[Any, ...] | None:
        account, clock = entry.account, self.clock
        entry.sig = signature(account)
        if account.status is not Status.ACTIVE:
            return None  # only a touch() brings it back
        passed, ahead = NEVER, math.inf
        for when in stamps(account):
            if when > clock:
                if when < ahead:
                    ahead = when
            elif when > passed:
                passed = when
        if passed > self.valid_from:
            self.valid_from = passed
        if ahead != math.inf:
            if entry.next_change != ahead:
                if entry.next_change is None:
                    self.scheduled += 1
                entry.next_change = ahead
                if self._building:
                    self.heap.append((ahead, entry.pos))  # heapified once at the end
                elif len(self.heap) > 2 * self.scheduled + 64:
                    self._compact_heap()  # drops the stale items, includes this one
                else:
                    heapq.heappush(self.heap, (ahead, entry.pos))
        elif entry.next_change is not None:
            entry.next_change = None  # its heap item goes stale
            self.scheduled -= 1
        if selection.skip_reason(account, clock) is not None:
            return None
        pos = entry.pos
        return (
            (selection.capped(account, clock), account.priority),
            (*selection.fill_first_key(account, clock), pos),
            (*selection.least_used_key(account, clock), pos),
            selection.weight(account, clock),
        )

    def _join(self, entry: _Entry, place: tuple[Any, ...]) -> None:
        key, fill_key, least_key, weight = place
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(key, self.tree_size)
            self.tiers[key[0]].add(key[1])
        group.members.add(entry.pos)
        if self.keeps_fill:
            group.fill.add(fill_key)
        if self.keeps_weights:
            group.least.add(least_key)
            if weight > 0:
                group.positive += 1
                group.tree.set(entry.pos, weight)
        entry.group, entry.place = group, place

    def _leave(self, entry: _Entry) -> None:
        group, place = entry.group, entry.place
        assert group is not None and place is not None
        entry.group = entry.place = None
        group.members.discard(entry.pos)
        if self.keeps_fill:
            group.fill.remove(place[1])
        if self.keeps_weights:
            group.least.remove(place[2])
            if place[3] > 0:
                group.positive -= 1
                group.tree.set(entry.pos, 0.0)
        if not group.members:
            self.tiers[group.key[0]].remove(group.key[1])
            del self.groups[group.key]

    def _keep(self, strategy: Strategy) -> None:
        """Start keeping the order structures a strategy needs (once)."""
        if strategy is Strategy.FILL_FIRST:
            if self.keeps_fill:
                return
            self.keeps_fill = True
            for group in self.groups.values():
                group.fill.update(self.by_pos[p].place[1] for p in group.members)  # type: ignore[index]
            return
        if self.keeps_weights:
            return
        self.keeps_weights = True
        for group in self.groups.values():
            places = [self.by_pos[p].place for p in group.members]
            group.least.update(place[2] for place in places)  # type: ignore[index]
            weights = {p: place[3] for p, place in zip(group.members, places, strict=True)}  # type: ignore[index]
            group.tree.fill({p: w for p, w in weights.items() if w > 0})
            group.positive = sum(1 for w in weights.values() if w > 0)

    def _compact_heap(self) -> None:
        self.heap = [(e.next_change, e.pos) for e in self.by_pos if e.next_change is not None]
        heapq.heapify(self.heap)

    def _advance(self, now: float) -> None:
        """Move the clock to `now`, re-evaluating the accounts with a time stamp passed."""
        self.clock = now
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, pos = heapq.heappop(heap)
            entry = self.by_pos[pos]
            if entry.next_change == when:
                entry.next_change = None
                self.scheduled -= 1
                self._place(entry)

    def _rebuild(self, now: float) -> None:
        fill, weights = self.keeps_fill, self.keeps_weights
        self.__init__(self.source, now)  # type: ignore[misc]
        for strategy, kept in ((Strategy.FILL_FIRST, fill), (Strategy.CAPACITY_WEIGHTED, weights)):
            if kept:
                self._keep(strategy)

    # -- choosing --------------------------------------------------------------------------
    def choose(
        self,
        strategy: Strategy,
        now: float,
        rng: random.Random,
        exclude: Collection[str] = (),
    ) -> Account | None:
        """selection.choose(strategy, accounts, now, rng, exclude), or FALLBACK."""
        if now > self.clock:
            self._advance(now)
        if self.dirty:
            self._flush()
        if now < self.valid_from:
            # Some entry was evaluated after a time stamp that `now` lies before.
            if self.valid_from - now > REBUILD_AFTER_JUMP:
                self._rebuild(now)
            else:
                return FALLBACK
        self._keep(strategy)
        for _ in range(8):
            entry = self._pick(strategy, rng, exclude)
            if entry is None:
                return None
            if entry.sig == signature(entry.account):
                return entry.account
            # Changed without a touch(): re-index it and decide again.
            self._place(entry)
            if now < self.valid_from:
                break
        return FALLBACK

    def _pick(
        self, strategy: Strategy, rng: random.Random, exclude: Collection[str]
    ) -> _Entry | None:
        if not exclude:  # the common case
            tiers = self.tiers[False] or self.tiers[True]
            if not tiers:
                return None
            group = self.groups[(tiers is self.tiers[True], tiers[0])]
            skip: set[int] = set()
        else:
            excluded = [
                e for i in exclude if (e := self.entries.get(i)) is not None and e.group is not None
            ]
            best = self._best_group(excluded)
            if best is None:
                return None
            group = best
            skip = {e.pos for e in excluded if e.group is group}
        if strategy is Strategy.FILL_FIRST:
            return self._first(group.fill, skip)
        if not skip:  # the common case, without the bookkeeping for skipped positions
            if group.positive <= 0:
                return self._first(group.least, skip)
            return self.by_pos[group.tree.find(rng.random() * group.tree.total)]
        weights = {p: self._weight(p) for p in skip}
        if group.positive - sum(1 for w in weights.values() if w > 0) <= 0:
            return self._first(group.least, skip)  # every weight is 0: the least used
        tree = group.tree
        for pos in skip:
            tree.set(pos, 0.0)
        try:
            return self.by_pos[tree.find(rng.random() * tree.total)]
        finally:
            for pos, weight in weights.items():
                tree.set(pos, weight)

    def _weight(self, pos: int) -> float:
        place = self.by_pos[pos].place
        return place[3] if place is not None else 0.0

    def _best_group(self, excluded: list[_Entry]) -> _Group | None:
        gone = Counter(e.group.key for e in excluded if e.group is not None)
        for capped in (False, True):
            for priority in self.tiers[capped]:
                key = (capped, priority)
                if len(self.groups[key].members) > gone[key]:
                    return self.groups[key]
        return None

    def _first(self, ordered: SortedList, skip: set[int]) -> _Entry | None:
        for key in ordered:
            if key[-1] not in skip:
                return self.by_pos[key[-1]]
        return None
