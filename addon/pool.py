"""The pool in memory: choosing an account, learning usage, operator changes, status rows.

The pool never touches the disk; saver.py and statefile.py persist it.
"""

from __future__ import annotations

import difflib
import logging
import random
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from addon import answers, selection
from addon.affinity import Affinity
from addon.history import History
from addon.index import FALLBACK, AccountIndex
from addon.merge import Outside, merge, merge_account
from addon.selection import Strategy
from addon.state import Account, Backoff, Block, Conversation, State, Status, Window
from addon.usage import LimitHit, UsageReport, WindowReport

logger = logging.getLogger(__name__)

# Growing backoff after upstream errors without a reset time: 2 s, 4 s, ... at most 5 min.
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 300.0
DEFAULT_PROBE_INTERVAL = 60.0


class _TrackedAffinity(Affinity):
    """The affinity table, noting which keys were set since the last save: a save then merges
    only those (the others are in the file already). Whoever sets an entry, it is noted."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: dict[str, None] | None = None  # keys in the order set; None: all

    def set(self, key: str, account_id: str, now: float) -> None:
        super().set(key, account_id, now)
        touched = self.touched
        if touched is not None:
            touched.pop(key, None)  # last set last, as in the table
            touched[key] = None
            if len(touched) > self.capacity:  # nobody saves: stop keeping track
                self.touched = None

    def load(self, conversations: Iterable[Conversation], now: float) -> None:
        super().load(conversations, now)
        self.touched = None  # a new table: the next save takes all of it


class PoolError(Exception):
    """A mistake by the operator (unknown account, bad value); the message says which."""


@dataclass(frozen=True, slots=True)
class Choice:
    account: Account
    strategy: Strategy
    reason: str = ""  # "affinity", "probe", "moved from X: why", or "" for a fresh pick

    @property
    def comment(self) -> str:
        """The decision as a flow's comment, with the usage known before the request:
        `work · fill_first · 5h 12% · wk 3%`, then the reason if there is one."""
        account, parts = self.account, [self.account.name, self.strategy.value]
        if account.primary:
            parts.append(f"5h {account.primary.used_percent:.0f}%")
        if account.secondary:
            parts.append(f"wk {account.secondary.used_percent:.0f}%")
        if self.reason:
            parts.append(self.reason)
        return " · ".join(parts)


LISTED = 8  # names an unknown-name error lists at most (a pool may hold thousands)


def _hint(name: str, accounts: list[Account]) -> str:
    names = [a.name for a in accounts]
    close = difflib.get_close_matches(name, names, n=3)
    if close:
        return "did you mean " + " or ".join(map(repr, close)) + "?"
    if len(names) > LISTED:
        return f"known: {', '.join(names[:LISTED])} and {len(names) - LISTED} more"
    return f"known: {', '.join(names) or 'none'}"


class Pool:
    def __init__(self, state: State | None = None, rng: random.Random | None = None) -> None:
        self.state = state or State()
        self.rng = rng or random.Random()
        # Requests routed since the last save, by account id: saving adds them to the file's
        # count instead of overwriting it, so two writers never lose each other's counts.
        self.unsaved_requests: Counter[str] = Counter()
        self.changes = 0  # bumped on every change; the saver compares it
        # A change since the last save that should not wait for a regular save (see _changed).
        self.urgent = False
        # What changed since the last save, so a save redoes only that (the saver takes and
        # resets these; None: unknown, check everything).
        self.unsaved_accounts: set[str] | None = set()
        self.affinity = _TrackedAffinity()
        self.affinity.load(self.state.conversations, time.time())
        self.probe_interval = DEFAULT_PROBE_INTERVAL
        self.last_probe = 0.0
        self._by_id = {a.id: a for a in self.accounts}
        # What choose() decides from: built on the first decision (the CLI's short-lived
        # pools never pay for it), kept up to date by _changed() on every change that matters.
        self._fast: AccountIndex | None = None
        self.history = History()

    # -- reading --------------------------------------------------------------------------
    @property
    def accounts(self) -> list[Account]:
        return self.state.accounts

    def get(self, name: str) -> Account:
        account = self.state.by_name(name)
        if account is None:
            raise PoolError(f"no account named {name!r} ({_hint(name, self.accounts)})")
        return account

    def by_id(self, account_id: str) -> Account | None:
        return self._by_id.get(account_id)

    @property
    def version(self) -> int:
        """Changes worth saving: the pool's and the affinity table's."""
        return self.changes + self.affinity.changes

    # -- choosing -------------------------------------------------------------------------
    def choose(
        self,
        strategy: Strategy,
        now: float,
        conversation: str | None = None,
        exclude: Collection[str] = (),
        probe: bool = True,
        pin: bool = True,
    ) -> Choice | answers.Refusal:
        """The account for a request. `probe`: whether this request may probe a blocked pool
        (only model requests can tell whether a limit has lifted). `pin=False`: a new
        conversation is not given to the account yet (the caller does it with `pin` once the
        request has shown it will be served there)."""
        reason = ""
        if conversation is not None:
            owner = self.by_id(self.affinity.get(conversation, now) or "")
            if owner is not None:
                why = selection.skip_reason(owner, now)
                if why is None and owner.id not in exclude:
                    self._set_owner(conversation, owner, now)
                    return Choice(owner, strategy, "affinity")
                reason = f"moved from {owner.name}: {why or 'failed over'}"
        account = self._select(strategy, now, exclude)
        if account is None:
            account = self._probe(now, exclude) if probe else None
            if account is None:
                return self.refusal(now)
            reason = "probe"
        if conversation is not None and pin:
            self._set_owner(conversation, account, now)
        return Choice(account, strategy, reason)

    def pin(self, conversation: str, account: Account, now: float) -> None:
        """The conversation now belongs to `account`."""
        self._set_owner(conversation, account, now)

    def _set_owner(self, conversation: str, account: Account, now: float) -> None:
        self.affinity.set(conversation, account.id, now)

    @property
    def unsaved_conversations(self) -> dict[str, None] | None:
        """Conversation keys set since the last save (None: unknown, save them all)."""
        return self.affinity.touched

    @unsaved_conversations.setter
    def unsaved_conversations(self, value: dict[str, None] | None) -> None:
        self.affinity.touched = value

    def index(self, now: float) -> AccountIndex:
        """The selection index, built now if the pool has none or changed its accounts (the
        router builds it at start-up, not in the first request)."""
        fast = self._fast
        if fast is None or fast.stale(self.accounts):
            fast = self._fast = AccountIndex(self.accounts, now)
        return fast

    def _select(self, strategy: Strategy, now: float, exclude: Collection[str]) -> Account | None:
        """selection.choose over the pool, from the index: O(log n) instead of O(n)."""
        account = self.index(now).choose(strategy, now, self.rng, exclude)
        if account is FALLBACK:
            return selection.choose(strategy, self.accounts, now, self.rng, exclude)
        return account  # type: ignore[no-any-return]

    def _changed(self, account: Account, choosing: bool = True, routine: bool = False) -> None:
        """Count a change worth saving; re-index the account when `choosing` may depend on it.
        Every change to an account goes through here. A `routine` change (what every request
        teaches: usage, counts, backoff) may wait for the saver's next regular save; any
        other (a limit, a login, an operator's change) makes the pool `urgent`."""
        self.changes += 1
        if not routine:
            self.urgent = True
        if self.unsaved_accounts is not None:
            self.unsaved_accounts.add(account.id)
        if choosing and self._fast is not None:
            self._fast.touch(account)

    def choose_any(self, strategy: Strategy, now: float, key: str | None = None) -> Choice | None:
        """For calls that use no model quota (models list, accounts/check, plugins): the
        account that holds the key while it is eligible, else what `choose` picks, else, when
        no account is eligible, the holder or another account with a working login (these
        calls need no quota).

        Only a key nobody holds yet is given to the account picked: these calls come before
        and between a conversation's turns, and moving the conversation is for its next model
        request to decide (one that refers to its account's state must not move)."""
        owner = self.owner(key, now)
        if owner is not None and selection.skip_reason(owner, now) is None:
            self._set_owner(key, owner, now)  # type: ignore[arg-type]  # an owner has a key
            return Choice(owner, strategy, "affinity")
        decision = self.choose(strategy, now, key if owner is None else None, probe=False)
        if isinstance(decision, Choice):
            return decision
        if owner is not None and owner.status is Status.ACTIVE:
            return Choice(owner, Strategy.FILL_FIRST, "not a model request")
        usable = [a for a in self.accounts if a.status is Status.ACTIVE]
        if not usable:
            return None
        account = min(usable, key=lambda a: selection.fill_first_key(a, now))
        if key is not None and owner is None:
            self._set_owner(key, account, now)
        return Choice(account, Strategy.FILL_FIRST, "not a model request")

    def owner(self, conversation: str | None, now: float) -> Account | None:
        """The account that holds this conversation, if any."""
        if conversation is None:
            return None
        return self.by_id(self.affinity.get(conversation, now) or "")

    def _probe(self, now: float, exclude: Collection[str]) -> Account | None:
        """With the whole pool blocked, let one request through now and then to the account
        most likely to have recovered, so an early upstream reset is noticed (no stale blocks).
        """
        if now - self.last_probe < self.probe_interval:
            return None
        limited = [
            (until, a.name, a)
            for a in self.accounts
            if a.status is Status.ACTIVE
            and a.id not in exclude
            and (until := selection.blocked_until(a, now)) is not None
        ]
        if not limited:
            return None
        self.last_probe = now
        return min(limited, key=lambda item: (item[0], item[1]))[2]

    def stuck(self, owner: Account, why: str, now: float) -> answers.Refusal:
        """The answer to a request that refers to `owner`'s state (a previous response,
        encrypted reasoning) while `owner` cannot serve it (`why`)."""
        if self._select(Strategy.FILL_FIRST, now, (owner.id,)) is None:
            return self.refusal(now)  # nothing else could serve either: say what is wrong
        until = selection.blocked_until(owner, now)
        if until is not None:
            why = f"rate limited until {answers.clock(until)}"
        # Paused, needing a new login or limited last until someone acts or a reset comes.
        lasting = owner.status is not Status.ACTIVE or until is not None
        return answers.conversation_stuck(owner.name, why, lasting)

    def refusal(self, now: float) -> answers.Refusal:
        """Why nothing can serve: limits first (Codex shows the reset time), then the rest."""
        limited = [
            (until, a)
            for a in self.accounts
            if a.status is Status.ACTIVE and (until := selection.blocked_until(a, now)) is not None
        ]
        if limited:
            until, account = min(limited, key=lambda pair: pair[0])
            return answers.usage_limit(until, now, account.plan.value)
        backing_off = [
            a.backoff.until
            for a in self.accounts
            if a.status is Status.ACTIVE and a.backoff and a.backoff.until > now
        ]
        if backing_off:
            return answers.unavailable(
                "upstream_errors",
                "quota-router: every usable account failed upstream just now; retrying in "
                f"{max(1, round(min(backing_off) - now))} s",
            )
        if all(a.status is Status.PAUSED for a in self.accounts):
            return answers.needs_the_user(
                "all_accounts_paused",
                "quota-router: every pooled account is paused; resume one with "
                "`python -m addon resume NAME`.",
            )
        some = (
            "is paused or needs"
            if any(a.status is Status.PAUSED for a in self.accounts)
            else "needs"
        )
        return answers.needs_the_user(
            "all_accounts_need_login",
            f"quota-router: no pooled account can be used: each one {some} a new login "
            "(`python -m addon import AUTH_JSON --name NAME --replace`).",
        )

    # -- learning from the upstream -------------------------------------------------------
    def record_route(self, account: Account, now: float) -> None:
        account.requests += 1
        account.last_used_at = int(now)
        self.unsaved_requests[account.id] += 1
        self._changed(account, choosing=False, routine=True)

    def record_usage(self, account: Account, report: UsageReport, now: float) -> None:
        if account.block is None and _repeats(account, report, now):
            return  # the SSE event says what the headers said a moment ago
        if report.primary:
            account.primary = _window(report.primary, now)
        if report.secondary:
            account.secondary = _window(report.secondary, now)
        # Fresh evidence of headroom ends a block early (the upstream reset early, or a
        # reset credit was used): no stale blocks.
        reported = [w for w in (report.primary, report.secondary) if w is not None]
        lifted = account.block is not None and all(w.used_percent < 100 for w in reported)
        if lifted:
            logger.info("quota-router: %s has headroom again; block lifted", account.name)
            account.block = None
        self.history.add(
            account.id,
            now,
            account.primary.used_percent if account.primary else None,
            account.secondary.used_percent if account.secondary else None,
        )
        self._changed(account, routine=not lifted)

    def record_limit(self, account: Account, hit: LimitHit, now: float) -> None:
        if hit.usage:
            self.record_usage(account, hit.usage, now)
        account.block = Block(until=hit.resets_at, reason=hit.kind[:200], observed_at=now)
        # Fresh news of a limit is as good as a probe: the next one waits a full interval.
        self.last_probe = max(self.last_probe, now)
        self._changed(account)

    def record_error(self, account: Account, now: float, cause: str | None = None) -> float:
        """An error without a reset time (upstream, or `cause`): back off, longer each time.
        Returns until."""
        errors = account.backoff.errors + 1 if account.backoff else 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (errors - 1))
        account.backoff = Backoff(
            errors=errors, until=now + delay, observed_at=now, cause=cause and cause[:200]
        )
        self._changed(account, routine=True)
        return now + delay

    def record_success(self, account: Account) -> None:
        if account.backoff is not None:
            account.backoff = None
            self._changed(account, routine=True)

    def set_credentials(self, account: Account, refreshed: Any) -> None:
        account.credentials = refreshed.credentials
        if refreshed.plan is not None:
            account.plan = refreshed.plan
        if refreshed.email:
            account.email = refreshed.email
        self._changed(account)  # the plan sets the weight

    # -- operator changes -----------------------------------------------------------------
    def pause(self, name: str) -> Account:
        return self.set_status(name, Status.PAUSED)

    def resume(self, name: str) -> Account:
        if self.get(name).status is Status.REAUTH_REQUIRED:
            raise PoolError(
                f"{name!r} needs a new login, not a resume: log in with codex, then "
                f"`python -m addon import AUTH_JSON --name {name} --replace`"
            )
        return self.set_status(name, Status.ACTIVE)

    def configure(
        self,
        name: str,
        priority: int | None = None,
        max_primary: float | None = None,
        max_secondary: float | None = None,
    ) -> Account:
        """Change an account's steering settings; values are checked like the state file's."""
        account = self.get(name)
        changes = {
            "priority": priority,
            "max_primary_percent": max_primary,
            "max_secondary_percent": max_secondary,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            raise PoolError("nothing to change: give --priority, --max-primary or --max-secondary")
        try:
            checked = Account.model_validate(account.model_dump() | changes)
        except ValueError as e:
            raise PoolError(_first_problem(e)) from None
        for key in changes:
            setattr(account, key, getattr(checked, key))
        account.settings_at = time.time()
        self._changed(account)
        return account

    def rename(self, old: str, new: str) -> Account:
        account = self.get(old)
        if self.state.by_name(new) is not None:
            raise PoolError(f"an account named {new!r} exists already")
        try:
            Account.model_validate(account.model_dump() | {"name": new})
        except ValueError:
            raise PoolError(
                f"bad account name {new!r}: use letters, digits and . _ - @ + "
                "(at most 64, starting with a letter or digit)"
            ) from None
        account.name = new
        account.settings_at = time.time()
        self._changed(account)  # the name breaks fill_first ties
        return account

    def set_status(self, name: str, status: Status, reason: str = "") -> Account:
        return self.mark(self.get(name), status, reason)

    def mark(self, account: Account, status: Status, reason: str = "") -> Account:
        account.status = status
        account.status_reason = reason[:300]
        account.status_at = time.time()
        self._changed(account)
        return account

    def adopt(self, theirs: State, outside: Outside | None = None) -> None:
        """Take in what another writer (the CLI, a second proxy) put in the file: `theirs`
        is the merged state just written. With `outside` (what that writer changed), only that
        is merged again, so a CLI `pause` at 10,000 accounts costs the event loop microseconds,
        not a second; without it, everything."""
        # No change count here: the file already holds what this process had when it saved.
        if outside is not None and self._adopt_changes(theirs, outside):
            return
        self.state = merge(self.state, theirs, self.unsaved_requests, self.affinity.table)
        self._by_id = {a.id: a for a in self.accounts}
        if self._fast is not None and not self._fast.adopt(self.accounts):
            self._fast = None  # other accounts: the next decision re-indexes them
        self.unsaved_accounts = None  # the next save checks all (and all conversations:)
        self.affinity.load(self.state.conversations, time.time())

    def _adopt_changes(self, theirs: State, outside: Outside) -> bool:
        """Merge the accounts another writer changed into this pool's own objects, in place
        (the index and every reference stay valid), and take its newer conversations. False
        when the pool's accounts are not the file's (then the caller merges everything)."""
        mine, merged, accounts = self.accounts, theirs.accounts, outside.accounts
        if accounts is None or len(mine) != len(merged):
            return False
        for account_id, pos in accounts.items():
            if mine[pos].id != account_id or merged[pos].id != account_id:
                return False
        results = [
            (mine[pos], merge_account(mine[pos], merged[pos], self.unsaved_requests[account_id]))
            for account_id, pos in accounts.items()
        ]
        if any(a.name != r.name for a, r in results):  # a rename: names must stay unique
            names = [a.name for a in mine if a.id not in accounts] + [r.name for _, r in results]
            if len(set(names)) < len(names):
                return False
        for account, result in results:
            account.__dict__.update(result.__dict__)  # every field, already validated
            if self.unsaved_accounts is not None:
                self.unsaved_accounts.add(account.id)  # the next save compares it again
            if self._fast is not None:
                self._fast.touch(account)
        table, now = self.affinity.table, time.time()
        for key, (account_id, seen_at) in outside.conversations.items():
            current = table.get(key)
            fresh = now - seen_at <= self.affinity.ttl
            # At the same time the file's wins, as in merge_conversations.
            if fresh and account_id in self._by_id and (current is None or current[1] <= seen_at):
                table[key] = (account_id, seen_at)  # in the file already: not to be saved
        self.affinity.trim()
        return True

    # -- showing --------------------------------------------------------------------------
    def rows(self, now: float) -> list[dict[str, Any]]:
        """One dict per account: the `status --json` shape, never a secret."""
        upcoming = selection.choose(Strategy.FILL_FIRST, self.accounts, now, self.rng)
        return [status_row(a, now, a is upcoming) for a in self.accounts]


def _first_problem(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return f"{field}: {first['msg']}"
    return str(error)


# Within this many seconds, a report that repeats an account's windows is not news.
REPEAT_WITHIN = 1.0


def _repeats(account: Account, report: UsageReport, now: float) -> bool:
    for known, reported in (
        (account.primary, report.primary),
        (account.secondary, report.secondary),
    ):
        if reported is None:
            continue
        if (
            known is None
            or not 0 <= now - known.observed_at < REPEAT_WITHIN
            or known.used_percent != reported.used_percent
            or known.window_minutes != reported.window_minutes
            or known.reset_at != reported.reset_at
        ):
            return False
    return report.primary is not None or report.secondary is not None


def _window(report: WindowReport, now: float) -> Window:
    return Window(
        used_percent=report.used_percent,
        window_minutes=report.window_minutes,
        reset_at=report.reset_at,
        observed_at=now,
    )


def display_status(account: Account, now: float) -> str:
    if account.status is not Status.ACTIVE:
        return account.status.value
    if selection.blocked_until(account, now) is not None:
        return "rate_limited"
    if account.backoff is not None and account.backoff.until > now:
        return "backoff"
    return "active"


def status_row(account: Account, now: float, next_pick: bool = False) -> dict[str, Any]:
    def pct(window: Window | None) -> float | None:
        if window is None:
            return None
        return 0.0 if window.reset_at and window.reset_at <= now else window.used_percent

    def reset(window: Window | None) -> int | None:
        return window.reset_at if window and window.reset_at and window.reset_at > now else None

    return {
        "name": account.name,
        "plan": account.plan.value,
        "email": account.email,
        "status": display_status(account, now),
        "reason": selection.skip_reason(account, now) or "",
        "primary_used_percent": pct(account.primary),
        "primary_reset_at": reset(account.primary),
        "secondary_used_percent": pct(account.secondary),
        "secondary_reset_at": reset(account.secondary),
        "blocked_until": selection.blocked_until(account, now),
        "requests": account.requests,
        "last_used_at": account.last_used_at,
        "priority": account.priority,
        "max_primary_percent": account.max_primary_percent,
        "max_secondary_percent": account.max_secondary_percent,
        "next_pick": next_pick,
    }
