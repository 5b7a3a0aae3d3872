"""Keeps the state file in step with the pool, off the event loop.

A background task wakes every `interval` seconds; when the pool changed, or another writer
changed the file, it merges and writes in a worker thread. Failures are loud, never fatal: the
proxy keeps routing from memory and tries again on the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from addon.pool import Pool
from addon.statefile import StateFile, StateFileError

logger = logging.getLogger(__name__)


class Saver:
    def __init__(self, pool: Pool, file: StateFile, interval: float = 0.5) -> None:
        self.pool = pool
        self.file = file
        self.interval = interval
        self.saved_changes = pool.version
        self.error: str | None = None  # shown by `status` while saving fails
        self.error_since: float | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # the saver must outlive any surprise
                logger.exception("quota-router: unexpected error while saving state")

    async def tick(self) -> None:
        external = await asyncio.to_thread(self.file.changed_since_known)
        if external or self.pool.version != self.saved_changes:
            await self.save()

    async def save(self) -> bool:
        """Merge and write now. True when the file holds everything the pool had at the call."""
        async with self._lock:
            changes = self.pool.version
            unsaved = self._take_unsaved()
            conversations = self.pool.affinity.table.copy()  # O(n) but a C-level copy
            try:
                merged, external = await asyncio.to_thread(
                    self.file.sync, self.pool.state, unsaved, conversations
                )
            except (StateFileError, OSError) as e:
                self.pool.unsaved_requests.update(unsaved)
                self._failed(e)
                return False
            self._saved(changes)
            if external:
                self.pool.adopt(merged)
            return True

    def flush(self) -> bool:
        """The final, blocking save at shutdown."""
        if self.pool.version == self.saved_changes and not self.file.changed_since_known():
            return True
        changes = self.pool.version
        unsaved = self._take_unsaved()
        try:
            self.file.sync(self.pool.state, unsaved, self.pool.affinity.table)
        except (StateFileError, OSError) as e:
            self.pool.unsaved_requests.update(unsaved)
            self._failed(e)
            return False
        self._saved(changes)
        return True

    def _take_unsaved(self) -> Counter[str]:
        unsaved, self.pool.unsaved_requests = self.pool.unsaved_requests, Counter()
        return unsaved

    def _saved(self, changes: int) -> None:
        self.saved_changes = changes
        if self.error is not None:
            logger.warning("quota-router: state saved again to %s", self.file.path)
        self.error, self.error_since = None, None

    def _failed(self, e: Exception) -> None:
        message = (
            str(e) if isinstance(e, StateFileError) else f"{self.file.path}: {e.strerror or e}"
        )
        if message != self.error:  # loud once per distinct problem, not once per tick
            logger.error(
                "quota-router: cannot save state (%s); routing continues from memory and the "
                "save is retried",
                message,
            )
        self.error = message
        self.error_since = self.error_since or time.time()
