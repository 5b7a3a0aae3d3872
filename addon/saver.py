"""Keeps the state file in step with the pool, off the event loop.

A background task wakes every `interval` seconds; when the pool changed, or another writer
changed the file, it merges and writes in a worker thread. Failures are loud, never fatal: the
proxy keeps routing from memory and tries again on the next tick.

The worker thread runs at normal priority. At SCHED_IDLE the event loop would take its CPU at
once on waking (fewer stalls on a VM whose idle vCPUs wake slowly), but on a machine other work
keeps busy such a thread gets almost no CPU, while holding the file's lock that the CLI and
token refreshes (which persist the new pair before using it) wait for.

The worker thread shares the GIL and the CPU with the event loop, so its work is kept small:
it redoes only what the pool says changed (statefile.StateFile.sync with `changed`; every
FULL_CHECK_EVERY seconds, and after adopting another writer's file, it compares everything
instead), and after a save that took T seconds of the thread's CPU, what every request teaches
(usage, counts, new conversations) waits T/MAX_SHARE (at most MAX_INTERVAL) for the next one:
saving a large pool under load never takes more than that share of the process's time. A change
the pool calls urgent (a limit, a login, an operator's change) is saved at the next `interval`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from addon.merge import Outside
from addon.pool import Pool
from addon.state import State
from addon.statefile import StateFile, StateFileError

try:
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD  # Linux
except (ImportError, AttributeError):
    _RUSAGE_THREAD = None

logger = logging.getLogger(__name__)

FULL_CHECK_EVERY = 60.0  # seconds between saves that compare every account
MAX_SHARE = 0.01  # of the CPU time routine saving may take, averaged over saves
MAX_INTERVAL = 10.0  # seconds: however long one save took (reading another writer's big file)
# While a save runs, the interpreter switches threads this often (default 5 ms): the event
# loop, waiting for the GIL the saving thread holds, then waits at most this long. Set from the
# event loop's thread before the save starts: a thread already waiting for the GIL keeps the
# interval it started waiting with (CPython), so setting it in the worker costs one full 5 ms.
SWITCH_INTERVAL = 0.0001


def _thread_time() -> float:
    """CPU seconds this thread spent, in Python and in the kernel (writing, replacing and
    fsyncing a large file is kernel time: CPU the proxy does not get either)."""
    if _RUSAGE_THREAD is not None:
        usage = resource.getrusage(_RUSAGE_THREAD)
        return usage.ru_utime + usage.ru_stime
    return time.thread_time()


@contextmanager
def switching(interval: float = SWITCH_INTERVAL) -> Iterator[None]:
    """The switch interval for work in a worker thread; enter it on the event loop's thread."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class Saver:
    def __init__(
        self,
        pool: Pool,
        file: StateFile,
        interval: float = 0.5,
        after_first_save: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.file = file
        self.interval = interval
        # Called once, on the event loop, when a save first succeeds (unless `prime` was that
        # save): what it built (the file's copy of every account, the save cache) lasts.
        self.after_first_save = after_first_save
        self.saved_changes = pool.version
        self.error: str | None = None  # shown by `status` while saving fails
        self.error_since: float | None = None
        self._lock = asyncio.Lock()
        self.cost = 0.0  # CPU seconds the last save took in its thread
        self._last_full = 0.0  # time.monotonic() of the last save that compared everything

    async def run(self) -> None:
        while True:
            await self._wait(self.pause())
            try:
                await self.tick()
            except Exception:  # the saver must outlive any surprise
                logger.exception("quota-router: unexpected error while saving state")

    def pause(self) -> float:
        """Seconds until the next tick: the interval, or longer after an expensive save."""
        return max(self.interval, min(MAX_INTERVAL, self.cost / MAX_SHARE))

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or until the pool has an urgent change (checked every interval:
        the pool knows nothing of the event loop)."""
        deadline = time.monotonic() + seconds
        while True:
            await asyncio.sleep(min(self.interval, max(0.0, deadline - time.monotonic())))
            if self.pool.urgent or time.monotonic() >= deadline:
                return

    async def tick(self) -> None:
        external = await asyncio.to_thread(self._external)
        if external or self.pool.version != self.saved_changes:
            await self.save(external)

    async def save(self, external: bool | None = None) -> bool:
        """Merge and write now. True when the file holds everything the pool had at the call.
        `external`: whether another writer changed the file (None: not known yet)."""
        async with self._lock:
            if external is None:
                external = await asyncio.to_thread(self._external)
            changes = self.pool.version
            urgent, self.pool.urgent = self.pool.urgent, False
            unsaved = self._take_unsaved()
            changed, conversations = self._take_changes(external)
            try:
                with switching():
                    merged, outside = await asyncio.to_thread(
                        self._sync, unsaved, conversations, changed
                    )
            except (StateFileError, OSError) as e:
                self.pool.urgent |= urgent
                self.pool.unsaved_requests.update(unsaved)
                self.pool.unsaved_accounts = self.pool.unsaved_conversations = None
                self._failed(e)
                return False
            self._saved(changes)
            if outside is not None:
                self.pool.adopt(merged, outside)
            if self.after_first_save is not None:
                settle, self.after_first_save = self.after_first_save, None
                settle()
            return True

    def prime(self) -> bool:
        """The first save, blocking, before any traffic (the router's start-up): it builds what
        every later save reuses (the file's copy of every account, the save cache: a second of
        CPU at 10,000 accounts), so that is done before the proxy serves, and alive when the
        router settles start-up's objects (addon/heap.py). `after_first_save` is then not
        called: the caller settles after this. False when it failed."""
        try:
            merged, outside = self._blocking_save()
        except (StateFileError, OSError) as e:
            # A warning: an error logged during start-up makes mitmproxy exit, and routing from
            # memory works. The saver retries with the first change, and says so as an error.
            logger.warning(
                "quota-router: cannot save state at start-up (%s); routing continues and the "
                "save is retried",
                self._describe(e),
            )
            return False
        self.after_first_save = None
        if outside is not None:  # another writer changed the file since it was loaded
            self.pool.adopt(merged, outside)
        return True

    def flush(self) -> bool:
        """The final, blocking save at shutdown."""
        if self.pool.version == self.saved_changes and not self._external():
            return True
        try:
            self._blocking_save()
        except (StateFileError, OSError) as e:
            self._failed(e)
            return False
        return True

    def _blocking_save(self) -> tuple[State, Outside | None]:
        changes = self.pool.version
        unsaved = self._take_unsaved()
        try:
            result = self.file.sync(self.pool.state, unsaved, self.pool.affinity.table)
        except BaseException:
            self.pool.unsaved_requests.update(unsaved)
            raise
        self._saved(changes)
        return result

    def _external(self) -> bool:
        """Whether another writer changed the file (a stat: off the event loop)."""
        try:
            return self.file.changed_since_known()
        except (StateFileError, OSError):
            return True  # the save itself will say what is wrong

    def _take_changes(
        self, external: bool
    ) -> tuple[set[str] | None, Mapping[str, tuple[str, float]]]:
        """What changed since the last save: the ids of changed accounts (None: compare all)
        and the conversations to merge (all of them, or only those set since). After another
        writer's change, everything is merged."""
        pool, now = self.pool, time.monotonic()
        changed, touched = pool.unsaved_accounts, pool.unsaved_conversations
        pool.unsaved_accounts, pool.unsaved_conversations = set(), {}
        table = pool.affinity.table
        if changed is None or external or now - self._last_full >= FULL_CHECK_EVERY:
            changed, self._last_full = None, now
        if touched is None or external:
            return changed, table.copy()  # O(n) but a C-level copy
        # Conversations change only through the pool, which keeps track: the others are in
        # the file already.
        return changed, {key: table[key] for key in touched if key in table}

    def _sync(
        self,
        unsaved: Counter[str],
        conversations: Mapping[str, tuple[str, float]],
        changed: set[str] | None,
    ) -> tuple[State, Outside | None]:
        """The worker thread's part, timed in CPU seconds."""
        started = _thread_time()
        try:
            return self.file.sync(self.pool.state, unsaved, conversations, changed)
        finally:
            self.cost = _thread_time() - started

    def _take_unsaved(self) -> Counter[str]:
        unsaved, self.pool.unsaved_requests = self.pool.unsaved_requests, Counter()
        return unsaved

    def _saved(self, changes: int) -> None:
        self.saved_changes = changes
        if self.file.recreated:
            logger.warning(
                "quota-router: %s was deleted while the proxy runs; written again from memory "
                "(to start over, delete it while the proxy is stopped)",
                self.file.path,
            )
        if self.error is not None:
            logger.warning("quota-router: state saved again to %s", self.file.path)
        self.error, self.error_since = None, None

    def _describe(self, e: StateFileError | OSError) -> str:
        return str(e) if isinstance(e, StateFileError) else f"{self.file.path}: {e.strerror or e}"

    def _failed(self, e: StateFileError | OSError) -> None:
        message = self._describe(e)
        if message != self.error:  # loud once per distinct problem, not once per tick
            logger.error(
                "quota-router: cannot save state (%s); routing continues from memory and the "
                "save is retried",
                message,
            )
        self.error = message
        self.error_since = self.error_since or time.time()
