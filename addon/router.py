"""quota-router: the mitmproxy script. `mitmdump -s addon/router.py`.

This layer only translates flows into calls on the pool (addon/pool.py) and back; the rules
live in the core modules.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

# mitmproxy runs this file as a script with only addon/ on sys.path: make `addon.*` importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mitmproxy import command, ctx, exceptions, http  # noqa: E402

from addon import answers, routing, usage  # noqa: E402
from addon.pool import Choice, Pool, PoolError  # noqa: E402
from addon.report import table  # noqa: E402
from addon.saver import Saver  # noqa: E402
from addon.selection import Strategy  # noqa: E402
from addon.sse import SSETap  # noqa: E402
from addon.state import Account  # noqa: E402
from addon.statefile import DEFAULT_NAME, StateFile, StateFileError  # noqa: E402
from addon.tokens import mask  # noqa: E402

logger = logging.getLogger(__name__)

META = "quota_router"  # flow.metadata key: account id/name and the client's own account id


def comment(account: Account, strategy: Strategy) -> str:
    parts = [account.name, strategy.value]
    if account.primary:
        parts.append(f"5h {account.primary.used_percent:.0f}%")
    if account.secondary:
        parts.append(f"wk {account.secondary.used_percent:.0f}%")
    return " · ".join(parts)


class Router:
    def __init__(self) -> None:
        self.pool = Pool()
        self.strategy = Strategy.FILL_FIRST
        self.file: StateFile | None = None
        self.saver: Saver | None = None
        self._task: asyncio.Task[None] | None = None

    # -- options ---------------------------------------------------------------------------
    def load(self, loader):  # type: ignore[no-untyped-def]
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

    def configure(self, updated: set[str]) -> None:
        if "router_strategy" in updated:
            try:
                self.strategy = Strategy(ctx.options.router_strategy)
            except ValueError:
                choices = ", ".join(s.value for s in Strategy)
                raise exceptions.OptionsError(
                    f"router_strategy: unknown strategy {ctx.options.router_strategy!r} "
                    f"(choose one of: {choices})"
                ) from None
        if "router_state" in updated or "confdir" in updated:
            self._open(self._state_path())

    def _state_path(self) -> Path:
        if ctx.options.router_state:
            return Path(ctx.options.router_state).expanduser()
        return Path(ctx.options.confdir).expanduser() / DEFAULT_NAME

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
        self.saver = Saver(self.pool, file)
        if self._task is not None:
            self._restart_saver()

    def running(self) -> None:
        self._restart_saver()
        assert self.file is not None
        if self.file.is_loose():
            logger.warning(
                "quota-router: %s can be read by other users; it holds credentials (chmod 600 it)",
                self.file.path,
            )
        if self.pool.accounts:
            logger.info(
                "quota-router ready: %d account(s), strategy %s, state %s",
                len(self.pool.accounts),
                self.strategy.value,
                self.file.path,
            )
        else:
            logger.info(
                "quota-router ready: no accounts in %s, passing all traffic through untouched",
                self.file.path,
            )

    def _restart_saver(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.saver is not None:
            self._task = asyncio.get_running_loop().create_task(self.saver.run())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.saver is not None:
            self.saver.flush()

    # -- requests --------------------------------------------------------------------------
    def _is_routed(self, flow: http.HTTPFlow) -> bool:
        req = flow.request
        return routing.is_routed(req.scheme, req.host, req.port, req.path, req.headers)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self.pool.accounts or not self._is_routed(flow):
            return
        try:
            self._route(flow)
        except Exception:
            # Never let the client's own credentials through by accident.
            logger.exception("quota-router: internal error while routing %s", flow.request.path)
            self._answer(flow, answers.unavailable("internal_error", "quota-router failed"))

    def _route(self, flow: http.HTTPFlow) -> None:
        now = time.time()
        decision = self.pool.choose(self.strategy, now)
        if not isinstance(decision, Choice):
            self._answer(flow, decision)
            return
        account = decision.account
        headers = flow.request.headers
        flow.metadata[META] = {
            "account_id": account.id,
            "account": account.name,
            "client_account_id": headers.get("chatgpt-account-id", ""),
        }
        headers["authorization"] = f"Bearer {account.credentials.access_token}"
        if account.credentials.account_id:
            headers["chatgpt-account-id"] = account.credentials.account_id
        self.pool.record_route(account, now)
        flow.comment = comment(account, decision.strategy)
        logger.info(
            "quota-router: %s %s -> %s (%s)",
            flow.request.method,
            flow.request.path.split("?", 1)[0],
            account.name,
            flow.comment,
        )

    def _answer(self, flow: http.HTTPFlow, refusal: answers.Refusal) -> None:
        flow.response = http.Response.make(
            refusal.status, refusal.content(), {"content-type": "application/json"}
        )
        flow.marked = ":no_entry:"
        flow.comment = f"quota-router answered {refusal.status}: {refusal.reason}"
        logger.warning(
            "quota-router: %s %s answered locally: %s",
            flow.request.method,
            flow.request.path.split("?", 1)[0],
            refusal.reason,
        )

    # -- responses -------------------------------------------------------------------------
    def _account(self, flow: http.HTTPFlow) -> Account | None:
        info = flow.metadata.get(META)
        return self.pool.by_id(info["account_id"]) if isinstance(info, dict) else None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        account = self._account(flow)
        if account is None:
            return
        now = time.time()
        report = usage.from_headers(flow.response.headers, now)
        if report is not None:
            self.pool.record_usage(account, report, now)
            flow.comment = comment(account, self.strategy)
        content_type = flow.response.headers.get("content-type", "")
        if flow.response.status_code == 200 and content_type.startswith("text/event-stream"):
            flow.response.stream = SSETap(
                lambda event: self._learn_event(account.id, event),
                flow.response.headers.get("content-encoding", ""),
            )

    def _learn_event(self, account_id: str, event: dict[str, object]) -> None:
        account = self.pool.by_id(account_id)
        now = time.time()
        report = usage.from_event(event, now)
        if account is not None and report is not None:
            self.pool.record_usage(account, report, now)

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        account = self._account(flow)
        if account is None:
            return
        response, now = flow.response, time.time()
        if response.status_code in (429, 403) and response.content is not None:
            hit = (
                usage.from_status_429(response.content, now)
                if response.status_code == 429
                else usage.from_error_body(response.content, now)
            )
            if hit is not None:
                self.pool.record_limit(account, hit, now)
                logger.warning(
                    "quota-router: %s is limited (%s) until %d",
                    account.name,
                    hit.kind,
                    hit.resets_at,
                )
        elif response.status_code == 200 and routing.is_accounts_check(flow.request.path):
            info = flow.metadata[META]
            mapped = routing.map_account_ids(
                response.content or b"", account.credentials.account_id, info["client_account_id"]
            )
            if mapped is not None:
                response.content = mapped
        self._mask(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._mask(flow)

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
            self.pool.record_limit(account, learnt, now)
            logger.warning(
                "quota-router: %s is limited (%s) until %d",
                account.name,
                learnt.kind,
                learnt.resets_at,
            )

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._mask(flow)

    def _mask(self, flow: http.HTTPFlow) -> None:
        """Keep the pooled token out of flow files, HAR exports and mitmweb once it is sent."""
        if META not in flow.metadata:
            return
        value = flow.request.headers.get("authorization", "")
        if value.startswith("Bearer ") and "…" not in value:
            flow.request.headers["authorization"] = "Bearer " + mask(value[7:])

    # -- commands --------------------------------------------------------------------------
    @command.command("router.status")
    def status(self) -> str:
        """The pool: each account's state, windows, resets and requests."""
        text = table(self.pool.rows(time.time()))
        if self.saver is not None and self.saver.error:
            text += f"\nSAVING FAILS since {time.ctime(self.saver.error_since)}: {self.saver.error}"
        return text

    @command.command("router.pause")
    def pause(self, name: str) -> None:
        """Stop routing to an account (persisted)."""
        self._operate(self.pool.pause, name, "paused")

    @command.command("router.resume")
    def resume(self, name: str) -> None:
        """Route to a paused account again (persisted)."""
        self._operate(self.pool.resume, name, "resumed")

    def _operate(self, method, name: str, verb: str) -> None:  # type: ignore[no-untyped-def]
        try:
            method(name)
        except PoolError as e:
            raise exceptions.CommandError(str(e)) from None
        logger.info("quota-router: %s %s", verb, name)


addons = [Router()]
