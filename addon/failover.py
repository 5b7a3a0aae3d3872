"""Failover: a request refused on one account goes again on another, before any byte of the
refusal reaches the client (or, after a 401, on the same account with fresh tokens).

Only plain HTTP requests are replayed (a WebSocket handshake cannot be; the router turns a
limit on a WebSocket into a reconnect instead). A request that refers to state only its first
account holds (previous_response_id and the like) stays where it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.addons.clientplayback import ReplayHandler

from addon import messages, routing
from addon.pool import Choice, Pool
from addon.selection import Strategy
from addon.state import Account

logger = logging.getLogger(__name__)

RETRY = "quota_router_retry"  # flow.metadata on a failover copy: the account it is pinned to
MAX_ATTEMPTS = 3  # tries per request, the first included (fewer when the pool is smaller)

Fresh = Callable[[Account, bool], Awaitable[bool]]  # (account, force) -> tokens usable


class Failover:
    def __init__(
        self, pool: Callable[[], Pool], strategy: Callable[[], Strategy], fresh: Fresh
    ) -> None:
        # Getters: the router replaces its pool when router_state changes.
        self._pool, self._strategy, self._fresh = pool, strategy, fresh

    async def run(
        self,
        flow: http.HTTPFlow,
        info: dict[str, Any],
        first: Account,
        pristine: http.Request,
        reason: str,
    ) -> None:
        """Try other accounts (at most MAX_ATTEMPTS tries in all); the first good answer
        replaces the flow's response, else the flow keeps the latest refusal. `info` is the
        flow's routing record: it names the account that served the answer in the end."""
        if RETRY in flow.metadata:
            return
        pool, strategy = self._pool(), self._strategy()
        movable = not routing.has_account_bound_refs(pristine.get_content(strict=False) or b"")
        tried = [first.id]
        account: Account | None = first
        refreshed = False
        for _ in range(min(MAX_ATTEMPTS, len(pool.accounts) + 1) - 1):
            target: Account | None = None
            if reason.startswith("401") and not refreshed and account is not None:
                refreshed = True
                if account.credentials.updated_at != info["credentials_at"] or await self._fresh(
                    account, True
                ):
                    target = account
            if target is None:
                if not movable:
                    return
                decision = pool.choose(
                    strategy, time.time(), info["conversation"] or None, exclude=tried
                )
                if not isinstance(decision, Choice):
                    return
                target = decision.account
            note = f"failover {first.name} → {target.name} after {reason}"
            copy = await _replay(flow, pristine, target, note)
            target = pool.by_id(target.id) or target  # adopt() may have replaced it
            if copy.response is None:
                pool.record_error(target, time.time())
                reason = "connection failed"
            else:
                next_reason = routing.retry_reason(
                    copy.response.status_code, messages.body(copy.response)
                )
                if next_reason is None:
                    flow.response = copy.response
                    flow.marked = ":repeat:"
                    flow.comment = Choice(target, strategy, note).comment
                    info.update(account_id=target.id, account=target.name)
                    logger.warning("quota-router: %s", note)
                    return
                reason = next_reason
                flow.response = copy.response  # the latest answer, if nothing better comes
            tried.append(target.id)
            account = target


async def _replay(
    flow: http.HTTPFlow, pristine: http.Request, target: Account, note: str
) -> http.HTTPFlow:
    """The client's request as it arrived, sent again through mitmproxy (every addon sees
    it; the router routes it to `target`, the account it is pinned to)."""
    copy = flow.copy()
    copy.request = pristine.copy()
    copy.response = None
    copy.error = None
    copy.comment = note
    copy.marked = ":repeat:"
    copy.is_replay = "request"
    copy.metadata = {RETRY: {"account_id": target.id, "note": note}}
    await ReplayHandler(copy, ctx.options).replay()
    return copy
