"""quota-router: the mitmproxy script. `mitmdump -s addon/router.py`.

This layer only translates flows into calls on the pool (addon/pool.py) and back; the rules
live in the core modules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# mitmproxy runs this file as a script with only addon/ on sys.path: make `addon.*` importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mitmproxy import command, connection, ctx, exceptions, http  # noqa: E402
from mitmproxy.flow import Error  # noqa: E402

from addon import answers, deferred, heap, messages, placeholder, routing, usage  # noqa: E402
from addon.affinity import client_key, conversation_key, header_conversation_key  # noqa: E402
from addon.dashboard import Dashboard  # noqa: E402
from addon.failover import RETRY, Failover  # noqa: E402
from addon.pool import Choice, Pool, PoolError  # noqa: E402
from addon.refresh import (  # noqa: E402
    DEFAULT_TOKEN_URL,
    RETRY_AHEAD_SECONDS,
    WAIT_FOR_ANSWER_SECONDS,
    Refreshed,
    Refresher,
    RefreshFailed,
    must_wait,
    needs_refresh,
    refresh_persisted,
)
from addon.report import table  # noqa: E402
from addon.saver import Saver  # noqa: E402
from addon.selection import Strategy, skip_reason  # noqa: E402
from addon.sse import SSETap  # noqa: E402
from addon.state import Account, Credentials, Status  # noqa: E402
from addon.statefile import DEFAULT_NAME, StateFile, StateFileError, expand  # noqa: E402
from addon.streamnotice import StreamNotices  # noqa: E402

logger = logging.getLogger(__name__)

META = "quota_router"  # flow.metadata: which account serves the flow (ids and names only)
AUTH_HOST = "auth.openai.com"
TOKEN_PATH = "/oauth/token"
# How mitmproxy words a flow the client ended, or someone killed, before its answer (lower
# case): no fault of the account (Codex gives up on side calls that wait for a slow token
# refresh, and cancels calls still connecting when it exits). mitmproxy also words an HTTP/2
# reset by the server "stream reset by client": not counted either.
NOT_UPSTREAMS_FAULT = (
    "client disconnected",
    "stream reset by client",
    Error.KILLED_MESSAGE.lower(),
)
REFRESH_THREADS = 8  # token refreshes of different accounts at once
BACKGROUND_REFRESHES = 2  # of them, refreshes no request waits for
SAID_AGAIN_AFTER = 60.0  # seconds before the same local answer is a warning again


def _expand(value: str, option: str) -> Path:
    try:
        return expand(value)
    except ValueError as e:
        raise exceptions.OptionsError(f"{option}: {e}") from None


def _is_http_url(value: str) -> bool:
    try:
        url = urllib.parse.urlsplit(value)
    except ValueError:
        return False
    return (
        url.scheme in ("https", "http")
        and bool(url.hostname)
        and not any(c.isspace() or not c.isprintable() for c in value)
    )


class Router:
    def __init__(self) -> None:
        self.pool = Pool()
        self.strategy = Strategy.FILL_FIRST
        self.file: StateFile | None = None
        self.saver: Saver | None = None
        self.refresher = Refresher(self._refresh)
        # Refreshes get threads of their own: a hanging token endpoint must not hold up the
        # saver's, which run in asyncio's default executor.
        self._refresh_threads = concurrent.futures.ThreadPoolExecutor(
            REFRESH_THREADS, thread_name_prefix="quota-router-refresh"
        )
        self._task: asyncio.Task[None] | None = None
        # The client's request as it arrived, per in-flight routed flow, for failover.
        self._pristine: dict[str, http.Request] = {}
        # Routed flows whose request still carries a pooled token (masked when answered).
        self._unmasked: dict[str, http.HTTPFlow] = {}
        self._log_routes = False  # a log line per routed request (termlog_verbosity=debug)
        self._notices = StreamNotices()
        self._unusable: list[str] = []  # what was wrong with the options at start-up
        self._failover = Failover(lambda: self.pool, lambda: self.strategy, self._fresh)
        # Per account: its refresh in flight (or last), when it started, and its last transient
        # failure and when (the next try waits RETRY_AHEAD_SECONDS).
        self._refreshing: dict[str, asyncio.Task[object]] = {}
        self._queued: set[str] = set()  # background refreshes waiting for their turn
        self._said: dict[str, float] = {}  # local answers logged as warnings, and when
        self._background_slots = asyncio.Semaphore(BACKGROUND_REFRESHES)
        self._started: dict[str, float] = {}
        self._failed: dict[str, RefreshFailed] = {}
        self._failed_at: dict[str, float] = {}

    # -- options ---------------------------------------------------------------------------
    def load(self, loader):  # type: ignore[no-untyped-def]
        self._notices.install()
        loader.add_option(
            "router_state",
            str,
            "",
            f"Path of quota-router's TOML state file (default: {DEFAULT_NAME} in confdir).",
        )
        loader.add_option(
            "router_strategy",
            str,
            Strategy.FILL_FIRST.value,
            "How quota-router picks an account: fill_first or capacity_weighted.",
        )
        loader.add_option(
            "router_token_url",
            str,
            DEFAULT_TOKEN_URL,
            "Where quota-router refreshes pooled accounts' tokens.",
        )
        loader.add_option(
            "router_probe_interval",
            int,
            60,
            "Seconds between probe requests while every account is rate limited.",
        )
        self._unusable = deferred.apply(loader.master.options, "router_")
        for problem in self._unusable:  # mitmproxy exits: an error was logged at start-up
            logger.error("quota-router cannot start: %s", problem)

    def configure(self, updated: set[str]) -> None:
        if self._unusable:
            return  # start-up failed and was reported; mitmproxy is exiting
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if self._task is not None:
                raise  # a live change (mitmweb Options, `set`): reject it, keep the old value
            # At start-up: one clear line, and mitmproxy exits because an error was logged.
            logger.error("quota-router cannot start: %s", e)

    def _configure(self, updated: set[str]) -> None:
        if "router_strategy" in updated:
            try:
                self.strategy = Strategy(ctx.options.router_strategy)
            except ValueError:
                choices = ", ".join(s.value for s in Strategy)
                raise exceptions.OptionsError(
                    f"router_strategy: unknown strategy {ctx.options.router_strategy!r} "
                    f"(choose one of: {choices})"
                ) from None
        if "router_token_url" in updated and not _is_http_url(ctx.options.router_token_url):
            raise exceptions.OptionsError(
                f"router_token_url: {ctx.options.router_token_url!r} is not an http(s) URL"
            )
        if "router_probe_interval" in updated and not ctx.options.router_probe_interval >= 1:
            raise exceptions.OptionsError(
                "router_probe_interval: must be at least 1 second, "
                f"not {ctx.options.router_probe_interval}"
            )
        if "termlog_verbosity" in updated:
            self._log_routes = getattr(ctx.options, "termlog_verbosity", "") == "debug"
        if "router_state" in updated or "confdir" in updated:
            self._open(self._state_path())
        self.pool.probe_interval = ctx.options.router_probe_interval

    def _state_path(self) -> Path:
        if ctx.options.router_state:
            return _expand(ctx.options.router_state, "router_state")
        return _expand(ctx.options.confdir, "confdir") / DEFAULT_NAME

    def _open(self, path: Path) -> None:
        if self.file is not None and self.file.path == path:
            return
        file = StateFile(path)
        try:
            state = file.load()
        except StateFileError as e:
            raise exceptions.OptionsError(f"router_state: {e}") from None
        if self.saver is not None:
            self.saver.flush()  # the old file keeps what was learnt so far
        self.file, self.pool = file, Pool(state)
        self.saver = Saver(self.pool, file, after_first_save=heap.settle)
        if self._task is not None:
            self._restart_saver()
            self._announce(live=True)

    def running(self) -> None:
        if self.file is None:
            return  # start-up failed and was reported; mitmproxy is exiting
        if self.file.is_loose():
            logger.warning(
                "quota-router: %s can be read by other users; it holds credentials (chmod 600 it)",
                self.file.path,
            )
        # Before any traffic: the selection index and the first save are built now (none for
        # an empty pool: a proxy with no accounts creates no file), and everything start-up
        # built is settled out of the garbage collector's way.
        self.pool.index(time.time())
        if self.saver is not None and self.pool.accounts:
            self.saver.prime()
        heap.settle(collect=True)
        self._restart_saver()
        self._announce()

    def _announce(self, live: bool = False) -> None:
        """The ready line; after a live change of state file, which file and what it holds
        (a mistyped path must not turn routing off unseen)."""
        assert self.file is not None
        count, path = len(self.pool.accounts), self.file.path
        if not live:
            if count:
                logger.info(
                    "quota-router ready: %d account(s), strategy %s, state %s",
                    count,
                    self.strategy.value,
                    path,
                )
            else:
                logger.info(
                    "quota-router ready: no accounts in %s, passing all traffic through untouched",
                    path,
                )
        elif count:
            logger.info("quota-router now uses %s: %d account(s)", path, count)
        else:
            logger.warning(
                "quota-router now uses %s: no accounts in it (%s), passing all traffic through "
                "untouched",
                path,
                "no such file" if not path.exists() else "empty pool",
            )

    def _restart_saver(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.saver is not None:
            self._task = asyncio.get_running_loop().create_task(self.saver.run())

    def done(self) -> None:
        self._notices.remove()
        # Flows still in flight are written to `-w` files at shutdown: mask them first.
        for flow in list(self._unmasked.values()):
            self._mask(flow)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for task in self._refreshing.values():
            task.cancel()
        if self.saver is not None:
            self.saver.flush()
        self._refresh_threads.shutdown(wait=False)
        heap.release()

    # -- requests --------------------------------------------------------------------------
    def _is_routed(self, flow: http.HTTPFlow) -> bool:
        req = flow.request
        return routing.is_routed(req.scheme, req.host, req.port, req.path, req.headers)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if self._is_placeholder_refresh(flow):
            return
        if not self.pool.accounts or not self._is_routed(flow):
            return
        try:
            await self._route(flow)
        except Exception:
            # Never let the client's own credentials through by accident.
            logger.exception("quota-router: internal error while routing %s", flow.request.path)
            self._answer(flow, answers.unavailable("internal_error", "quota-router failed"))

    def _is_placeholder_refresh(self, flow: http.HTTPFlow) -> bool:
        """A client refreshing its placeholder login gets a new placeholder from us."""
        req = flow.request
        if req.path.split("?", 1)[0] != TOKEN_PATH or req.pretty_host != AUTH_HOST:
            return False
        body = usage.loads(req.get_content(strict=False) or b"")
        if not isinstance(body, dict) or not placeholder.is_placeholder(body.get("refresh_token")):
            return False
        flow.response = messages.json_response(200, placeholder.refresh_reply(body))
        flow.marked = ":key:"
        flow.comment = "quota-router renewed the client's placeholder login"
        logger.info("quota-router: renewed a client's placeholder login locally")
        return True

    async def _route(self, flow: http.HTTPFlow) -> None:
        req, now = flow.request, time.time()
        headers = messages.header_dict(req.headers)
        is_websocket = headers.get("upgrade", "").lower() == "websocket"
        # Decoded (zstd, for Codex) and searched only when needed: Codex names the
        # conversation in the headers.
        body = messages.once(
            lambda: b"" if is_websocket else (req.get_content(strict=False) or b"")
        )
        conversation = header_conversation_key(headers)
        if conversation is None:
            conversation = conversation_key(headers, routing.prompt_cache_key(body()))
        model = routing.is_model_request(req.path)
        client = client_key(headers)
        client_id = headers.get("chatgpt-account-id", "")
        pinned = flow.metadata.get(RETRY)

        for _ in range(len(self.pool.accounts) + 1):
            if isinstance(pinned, dict):
                account = self.pool.by_id(pinned["account_id"])
                if account is None:
                    self._answer(flow, answers.unavailable("account_gone", "account removed"))
                    return
                choice = Choice(account, self.strategy, pinned.get("note", "failover"))
            else:
                decision = self._decide(body, conversation, model, client, now, is_websocket)
                if not isinstance(decision, Choice):
                    if is_websocket:
                        # A refused handshake ends Codex's turn with "exceeded retry limit";
                        # a 426 sends it to HTTP, where this answer shows as it should.
                        decision = dataclasses.replace(decision, status=426)
                    elif routing.is_accounts_check(req.path) and client_id:
                        decision = answers.accounts_check_for_the_client(client_id, decision)
                    self._answer(flow, decision)
                    return
                choice = decision
            if await self._fresh(choice.account):
                current = self.pool.by_id(choice.account.id)  # adopt() may have replaced it
                if current is not None:
                    choice = Choice(current, choice.strategy, choice.reason)
                    break
            if pinned:
                self._answer(flow, answers.unavailable("refresh_failed", "token refresh failed"))
                return
        else:
            self._answer(flow, self.pool.refusal(now))
            return

        account = choice.account
        if not pinned and not is_websocket:
            self._pristine[flow.id] = messages.snapshot(req)
        flow.metadata[META] = {
            "account_id": account.id,
            "account": account.name,
            "client_account_id": client_id,
            "credentials_at": account.credentials.updated_at,
            "conversation": conversation or "",
            "probe": choice.reason == "probe",
            "pin": is_websocket and bool(conversation),  # at 101, see _decide
        }
        if model and client is not None and not pinned:
            self.pool.affinity.set(client, account.id, now)  # the client's other calls follow
        self._apply(flow, account.credentials)
        self._unmasked[flow.id] = flow
        self.pool.record_route(account, now)
        if choice.reason.startswith("moved"):
            logger.warning("quota-router: conversation %s", choice.reason)
        flow.comment = choice.comment
        if self._log_routes:
            # Only asked for: a log record costs more than routing the request (mitmproxy
            # hands every record to every addon). The decision is in the flow's comment.
            logger.debug(
                "quota-router: %s %s -> %s (%s)",
                req.method,
                req.path.split("?", 1)[0],
                account.name,
                flow.comment,
            )

    def _decide(
        self,
        body: Callable[[], bytes],
        conversation: str | None,
        model: bool,
        client: str | None,
        now: float,
        websocket: bool = False,
    ) -> Choice | answers.Refusal:
        if not model:
            # No quota spent: limits do not matter, a working login does. Codex fails the whole
            # run when accounts/check or the models list is refused, even to say "limit".
            key = conversation or client
            return self.pool.choose_any(self.strategy, now, key) or self.pool.refusal(now)
        refusal = self._bound_elsewhere(body, conversation, now, websocket)
        if refusal is not None:
            return refusal
        # A handshake the upstream refuses (a limit, a login gone bad) must not give the
        # conversation to that account: it is pinned once the socket opens (101).
        return self.pool.choose(self.strategy, now, conversation, pin=not websocket)

    def _bound_elsewhere(
        self, body: Callable[[], bytes], conversation: str | None, now: float, websocket: bool
    ) -> answers.Refusal | None:
        """A request that refers to another account's state cannot move: say so clearly."""
        owner = self.pool.owner(conversation, now)
        if owner is None:
            return None
        why = skip_reason(owner, now)
        if why is None:
            return None
        if websocket:
            # A handshake carries no turn: whether the turn refers to its account's state
            # (encrypted reasoning, as real Codex models send) shows only once it is sent on
            # the socket, too late to choose. Refused with 426, Codex sends it over HTTP, where
            # its body decides: moved, or refused saying why.
            return answers.over_http(owner.name, why)
        if not routing.has_account_bound_refs(body()):
            return None
        return self.pool.stuck(owner, why, now)

    def _apply(self, flow: http.HTTPFlow, credentials: Credentials) -> None:
        values = {b"authorization": f"Bearer {credentials.access_token}".encode()}
        if credentials.account_id:
            values[b"chatgpt-account-id"] = credentials.account_id.encode()
        messages.set_headers(flow.request.headers, values)

    def _answer(self, flow: http.HTTPFlow, refusal: answers.Refusal) -> None:
        flow.response = http.Response.make(
            refusal.status, refusal.content(), {"content-type": refusal.content_type}
        )
        flow.marked = ":no_entry:"
        flow.comment = f"quota-router answered {refusal.status}: {refusal.reason}"
        # One Codex run asks a dozen times (models, plugins, the turn, ...): the same answer
        # is a warning once a minute, and a debug line in between.
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._said.get(refusal.reason, -SAID_AGAIN_AFTER) >= SAID_AGAIN_AFTER:
            level = logging.WARNING
            if len(self._said) > 100:
                self._said.clear()
            self._said[refusal.reason] = now
        logger.log(
            level,
            "quota-router: %s %s answered locally: %s",
            flow.request.method,
            flow.request.path.split("?", 1)[0],
            refusal.reason,
        )

    # -- token refresh ---------------------------------------------------------------------
    async def _fresh(self, account: Account, force: bool = False) -> bool:
        """Make sure the account's access token is usable; False when it cannot be."""
        now = time.time()
        if not force and not needs_refresh(account.credentials, now):
            return True
        if account.status is Status.REAUTH_REQUIRED:
            return False  # its refresh token was refused already: trying again cannot help
        urgent = force or must_wait(account.credentials, now)
        task = self._refresh_task(account, now, urgent)
        if not urgent:
            return True  # refreshing in the background: the old token serves meanwhile
        result: Refreshed | RefreshFailed | None = None
        # All requests together wait WAIT_FOR_ANSWER_SECONDS at most from the refresh's start;
        # the refresh itself goes on (a token endpoint that answers late has already spent
        # the old refresh token: its answer must still be stored).
        budget = WAIT_FOR_ANSWER_SECONDS - (now - self._started.get(account.id, now))
        if task is not None and budget > 0:
            with contextlib.suppress(TimeoutError):
                result = await asyncio.wait_for(asyncio.shield(task), budget)
        if isinstance(result, Refreshed):
            return True
        if isinstance(result, RefreshFailed) and result.permanent:
            return False  # marked and said by _refresh
        failed = self._failed.get(account.id)
        if result is None and task is not None:
            cause = "token refresh waiting for its answer"
        else:
            cause = failed.reason if failed else "token refresh failed"
        return self._old_token_or_backoff(account, force, cause)

    def _old_token_or_backoff(self, account: Account, force: bool, cause: str) -> bool:
        """No new token for this request: the old one while it lasts, else the account backs
        off so that the request (and the next ones) go elsewhere. Once per backoff, however
        many requests waited: one failed refresh is one error."""
        now = time.time()  # after the wait
        account = self.pool.by_id(account.id) or account  # adopt() may have replaced it
        expires = account.credentials.expires_at
        if not force and expires is not None and expires > now + 5:
            return True
        if account.backoff is None or account.backoff.until <= now:
            self.pool.record_error(account, now, cause)
        return False

    def _refresh_task(
        self, account: Account, now: float, urgent: bool
    ) -> asyncio.Task[object] | None:
        """The account's refresh in flight, else a new one; None while its last one failed
        less than RETRY_AHEAD_SECONDS ago (not tried again yet). Refreshes nobody waits for
        take turns (BACKGROUND_REFRESHES at once), so that many tokens entering their refresh
        margin together cannot fill the refresh threads; an `urgent` one never waits for them."""
        running = self._refreshing.get(account.id)
        if running is not None and not running.done():
            if not (urgent and account.id in self._queued):
                return running
            running.cancel()  # still waiting for its turn: start it now instead
        failed = self._failed.get(account.id)
        if failed is not None and now - self._failed_at.get(account.id, 0.0) < RETRY_AHEAD_SECONDS:
            return None
        refresh = self.refresher.refresh(account.id, account.credentials)
        if urgent:
            self._started[account.id] = now
        else:
            self._queued.add(account.id)
        task = asyncio.get_running_loop().create_task(
            refresh if urgent else self._in_turn(account.id, refresh)
        )
        self._refreshing[account.id] = task  # held: the loop keeps only weak references
        return task

    async def _in_turn(self, account_id: str, refresh: Awaitable[object]) -> object:
        try:
            async with self._background_slots:
                self._queued.discard(account_id)
                self._started[account_id] = time.time()
                return await refresh
        finally:
            self._queued.discard(account_id)
            if inspect.iscoroutine(refresh):
                refresh.close()  # cancelled before its turn: never started

    async def _refresh(
        self, account_id: str, credentials: Credentials
    ) -> Refreshed | RefreshFailed:
        verify = not ctx.options.ssl_insecure
        url = ctx.options.router_token_url
        if self.file is None:
            return RefreshFailed(False, "no state file")
        # In a worker thread, under the account's refresh lock; the new pair is on disk
        # before it is used.
        result, persisted = await asyncio.get_running_loop().run_in_executor(
            self._refresh_threads,
            functools.partial(refresh_persisted, self.file, account_id, credentials, url, verify),
        )
        account = self.pool.by_id(account_id)
        if account is None:
            return result
        # Said here, once per refresh, however many requests wait for it.
        if isinstance(result, Refreshed):
            self._failed.pop(account_id, None)
            self.pool.set_credentials(account, result)
            if not persisted and (self.saver is None or not await self.saver.save()):
                logger.error(
                    "quota-router: new tokens for %s are held in memory only until the state "
                    "file can be written",
                    account.name,
                )
            if result.fetched:
                logger.info("quota-router: refreshed the tokens of %s", account.name)
            else:
                logger.info(
                    "quota-router: took the new tokens of %s from the state file (refreshed or "
                    "imported elsewhere)",
                    account.name,
                )
        elif result.permanent:
            self.pool.mark(account, Status.REAUTH_REQUIRED, result.reason)
            logger.error("quota-router: %s needs a new login (%s)", account.name, result.reason)
        else:
            self._failed[account_id], self._failed_at[account_id] = result, time.time()
            logger.warning("quota-router: %s: %s", account.name, result.reason)
        return result

    # -- responses -------------------------------------------------------------------------
    def _account(self, flow: http.HTTPFlow) -> Account | None:
        info = flow.metadata.get(META)
        return self.pool.by_id(info["account_id"]) if isinstance(info, dict) else None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        account = self._account(flow)
        if account is None:
            return
        self._mask(flow)  # sent: a long stream must not keep the token in view meanwhile
        now = time.time()
        headers = messages.header_dict(flow.response.headers)
        report = usage.from_headers(headers, now)
        if report is not None:
            self.pool.record_usage(account, report, now)
        content_type = headers.get("content-type", "")
        if (
            flow.response.status_code == 200
            and content_type.startswith("text/event-stream")
            and RETRY not in flow.metadata  # a failover copy is handed over whole
        ):
            flow.response.stream = SSETap(
                lambda event: self._learn_event(account.id, event),
                headers.get("content-encoding", ""),
            )
            self._notices.quiet(flow.client_conn.peername)

    def _learn_event(self, account_id: str, event: dict[str, object]) -> None:
        account = self.pool.by_id(account_id)
        now = time.time()
        report = usage.from_event(event, now)
        if account is not None and report is not None:
            self.pool.record_usage(account, report, now)

    async def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        account = self._account(flow)
        if account is None:
            return
        pristine = self._pristine.pop(flow.id, None)
        info = flow.metadata[META]
        if info.get("probe") and flow.response.status_code == 426:
            self.pool.last_probe = 0.0  # the handshake told nothing about limits: next may probe
        if info.get("pin") and flow.response.status_code == 101:
            self.pool.pin(info["conversation"], account, time.time())
        try:
            self._learn(flow, account)
            body = messages.body(flow.response)
            reason = routing.retry_reason(flow.response.status_code, body)
            if reason is not None and pristine is not None:
                await self._failover.run(flow, flow.metadata[META], account, pristine, reason)
            elif reason is not None and reason.startswith("401") and RETRY not in flow.metadata:
                # Not replayable (a WebSocket handshake): refresh now, so the client's own
                # retry, which comes next, finds fresh tokens (or another account).
                if account.credentials.updated_at == flow.metadata[META]["credentials_at"]:
                    await self._fresh(account, force=True)
            elif (
                flow.response.status_code == 200
                and routing.is_accounts_check(flow.request.path)
                and body
            ):
                info = flow.metadata[META]
                mapped = routing.map_account_ids(
                    body, account.credentials.account_id, info["client_account_id"]
                )
                if mapped is not None:
                    flow.response.content = mapped
        finally:
            self._mask(flow)

    def _learn(self, flow: http.HTTPFlow, account: Account) -> None:
        """Record what this answer says about the account."""
        assert flow.response is not None
        response, now = flow.response, time.time()
        status = response.status_code
        content = messages.body(response)
        if status == 429 or (status in (402, 403) and content):
            hit = (
                usage.from_status_429(content, now)
                if status == 429
                else usage.from_error_body(content, now)
            )
            if hit is not None:
                self._limited(account, hit, now)
        elif status >= 500:
            until = self.pool.record_error(account, now)
            logger.warning(
                "quota-router: %s got %d upstream; backing off for %.0f s",
                account.name,
                status,
                until - now,
            )
        elif status < 400:
            self.pool.record_success(account)
            if RETRY in flow.metadata and b"codex.rate_limits" in content:
                tap = SSETap(lambda event: self._learn_event(account.id, event))
                tap.feed(content)
                tap.feed(b"\n\n")

    def error(self, flow: http.HTTPFlow) -> None:
        self._pristine.pop(flow.id, None)
        account = self._account(flow)
        cause = flow.error.msg.lower() if flow.error else ""
        if (
            account is not None
            and flow.response is None
            and flow.client_conn.timestamp_end is None  # else the client left first
            and not cause.startswith(NOT_UPSTREAMS_FAULT)
        ):
            self.pool.record_error(account, time.time())
        self._mask(flow)

    # -- WebSocket -------------------------------------------------------------------------
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if message.from_client or not message.is_text:
            return
        account = self._account(flow)
        if account is None:
            return
        now = time.time()
        learnt = usage.from_frame(message.content, now)
        if isinstance(learnt, usage.UsageReport):
            self.pool.record_usage(account, learnt, now)
        elif isinstance(learnt, usage.LimitHit):
            self._limited(account, learnt, now)
            self._reconnect_elsewhere(flow, message, account, now)

    def _limited(self, account: Account, hit: usage.LimitHit, now: float) -> None:
        self.pool.record_limit(account, hit, now)
        logger.warning(
            "quota-router: %s is limited (%s) until %s",
            account.name,
            hit.kind,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hit.resets_at)),
        )

    def _reconnect_elsewhere(
        self, flow: http.HTTPFlow, message: Any, account: Account, now: float
    ) -> None:
        """Turn a limit error into one Codex retries on a new connection, which is then
        routed to another account: the user's turn survives. Without another eligible
        account the limit error goes through, and Codex shows its usage-limit message."""
        info = flow.metadata[META]
        decision = self.pool.choose(
            self.strategy, now, info["conversation"] or None, exclude=[account.id]
        )
        if not isinstance(decision, Choice):
            return
        message.content = json.dumps(answers.reconnect_frame(account.name)).encode()
        flow.marked = ":repeat:"
        flow.comment = Choice(
            account, self.strategy, "limit reached: client sent elsewhere"
        ).comment
        logger.warning(
            "quota-router: %s hit its limit on a WebSocket; the client reconnects to %s",
            account.name,
            decision.account.name,
        )

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._mask(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._notices.forget(client.peername)

    def _mask(self, flow: http.HTTPFlow) -> None:
        """Keep the pooled token out of flow files, HAR exports and mitmweb once it is sent."""
        if self._unmasked.pop(flow.id, None) is None:
            return  # never given a pooled token (only _route gives one), or masked already
        messages.mask_bearer(flow.request.headers)

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows; never a secret."""
        now = time.time()
        rows = self.pool.rows(now)
        for row, account in zip(rows, self.pool.accounts, strict=True):
            row["history"] = self.pool.history.points(account.id, now)
        return {
            "now": now,
            "strategy": self.strategy.value,
            "state_file": str(self.file.path) if self.file else None,
            "saving_error": self.saver.error if self.saver else None,
            "accounts": rows,
        }

    # -- commands --------------------------------------------------------------------------
    @command.command("router.status")
    def status(self) -> str:
        """The pool: each account's state, windows, resets and requests."""
        text = table(self.pool.rows(time.time()))
        if self.saver is not None and self.saver.error:
            since = time.ctime(self.saver.error_since or time.time())
            text += f"\nSAVING FAILS since {since}: {self.saver.error}"
        return text

    @command.command("router.pause")
    def pause(self, name: str) -> None:
        """Stop routing to an account (persisted)."""
        self._operate(self.pool.pause, name, "paused")

    @command.command("router.resume")
    def resume(self, name: str) -> None:
        """Route to a paused account again (persisted)."""
        self._operate(self.pool.resume, name, "resumed")

    @command.command("router.set")
    def steer(self, name: str, priority: int, max_primary: str, max_secondary: str) -> None:
        """Set an account's priority (lower first) and its 5 h / weekly caps in percent."""
        caps = []
        for label, text in (("max_primary", max_primary), ("max_secondary", max_secondary)):
            try:
                caps.append(float(text))
            except ValueError:
                raise exceptions.CommandError(f"{label}: {text!r} is not a number") from None
        self._operate(lambda n: self.pool.configure(n, priority, *caps), name, "set")

    @command.command("router.rename")
    def rename(self, old: str, new: str) -> None:
        """Rename an account (persisted)."""
        self._operate(lambda n: self.pool.rename(n, new), old, f"renamed to {new}:")

    def _operate(self, method, name: str, verb: str) -> None:  # type: ignore[no-untyped-def]
        try:
            method(name)
        except PoolError as e:
            raise exceptions.CommandError(str(e)) from None
        logger.info("quota-router: %s %s", verb, name)


router = Router()
addons = [router, Dashboard(router.snapshot)]
