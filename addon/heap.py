"""Keep the long-lived pool out of the garbage collector's full collections.

CPython's full (oldest-generation) collection walks every object it tracks, on the thread that
triggered it, holding the GIL. A 10,000-account pool is ~200,000 such objects (the accounts,
the state file's copy of them to merge with, the save cache, the selection index), and under
load a full collection came every 10 to 30 s and stopped the event loop for ~200 ms (bare
mitmdump's own: ~45 ms). What start-up builds lives as long as the pool (the router saves
once before any traffic, so that includes what saving reuses), so it is moved where no
collection looks (`gc.freeze`). Objects frozen are still freed when nothing refers to them;
only a reference cycle among them is never reclaimed (a script that mitmproxy reloads leaves
its old module behind, say), so settling follows a full collection, before any traffic. When
start-up's save failed, the first save that succeeds settles what it built without one (that
keeps what was in flight then, once, rather than stop the loop for a full collection).
"""

from __future__ import annotations

import gc


def settle(collect: bool = False) -> None:
    """Exempt every object alive now from later collections (after a full one: `collect`)."""
    if collect:
        gc.collect()
    gc.freeze()


def release() -> None:
    """Undo `settle`: the objects are collected as usual again (at shutdown, or when the
    router is unloaded and the process goes on)."""
    gc.unfreeze()
