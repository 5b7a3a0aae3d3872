"""The mitmproxy layer (addon/router.py) with mitmproxy's own test helpers: options, the
auth rewrite and where it may happen, masking, local answers, WebSocket frames, commands."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons import termlog
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from addon import placeholder
from addon import router as router_module
from addon.refresh import RETRY_AHEAD_SECONDS, Refreshed, RefreshFailed
from addon.router import Router
from addon.state import Account, Credentials, State, Status, Window
from addon.statefile import StateFile
from addon.streamnotice import LOGGER
from addon.usage import LimitHit
from tests.fakes.jwt import make_access_token
from tests.unit.conftest import scanned

TOKENS = {name: make_access_token(f"acct-{name}", exp=int(time.time()) + 86400) for name in "ab"}
CLIENT = placeholder.auth_json()["tokens"]


def write_state(path: Path, **usage: float) -> None:
    accounts = [
        Account(
            name=name,
            credentials=Credentials(access_token=token, account_id=f"acct-{name}"),
            primary=Window(used_percent=usage.get(name, 0.0), observed_at=1.0),
        )
        for name, token in TOKENS.items()
    ]
    StateFile(path).edit(lambda state: state.accounts.extend(accounts))


Fixture = tuple[Router, taddons.context]


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[Router, taddons.context]]:
    write_state(tmp_path / "state.toml", a=40, b=10)
    addon = Router()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, router_state=str(tmp_path / "state.toml"))
        yield addon, tctx


def codex_flow(
    host: str = "chatgpt.com",
    port: int = 443,
    scheme: str = "https",
    path: str = "/backend-api/codex/responses",
    **headers: str,
) -> http.HTTPFlow:
    request = tutils.treq(
        host=host,
        port=port,
        scheme=scheme.encode(),
        authority=b"",
        method=b"POST",
        path=path.encode(),
        headers=http.Headers(
            authorization=f"Bearer {CLIENT['access_token']}",
            **{"chatgpt-account-id": CLIENT["account_id"], "originator": "codex_exec"},
            **headers,
        ),
        content=b"{}",
    )
    return tflow.tflow(req=request)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_routed_request_gets_the_chosen_accounts_credentials(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow()
    run(addon.request(flow))
    assert flow.request.headers["authorization"] == f"Bearer {TOKENS['a']}"
    assert flow.request.headers["chatgpt-account-id"] == "acct-a"
    assert flow.comment == "a · fill_first · 5h 40%"
    assert flow.response is None


@pytest.mark.parametrize(
    ("host", "port", "scheme"),
    [
        ("chatgpt.com.evil.test", 443, "https"),
        ("evilchatgpt.com", 443, "https"),
        ("chatgpt.com", 8443, "https"),
        ("chatgpt.com", 80, "http"),
        ("api.openai.com", 443, "https"),
    ],
)
def test_pooled_tokens_never_go_to_another_host(
    router: Fixture, host: str, port: int, scheme: str
) -> None:
    addon, _ = router
    flow = codex_flow(host=host, port=port, scheme=scheme)
    run(addon.request(flow))
    assert flow.request.headers["authorization"] == f"Bearer {CLIENT['access_token']}"
    assert flow.request.headers["chatgpt-account-id"] == CLIENT["account_id"]


def test_web_app_calls_without_codex_originator_pass(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow(path="/backend-api/conversation")
    del flow.request.headers["originator"]
    run(addon.request(flow))
    assert flow.request.headers["authorization"] == f"Bearer {CLIENT['access_token']}"


def test_a_repeated_authorization_header_leaves_only_the_pooled_one(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow()
    flow.request.headers.add("Authorization", "Bearer second-client-token")
    del flow.request.headers["chatgpt-account-id"]
    run(addon.request(flow))
    assert flow.request.headers.get_all("authorization") == [f"Bearer {TOKENS['a']}"]
    assert flow.request.headers.get_all("chatgpt-account-id") == ["acct-a"]  # added
    names = [name.lower() for name, _ in flow.request.headers.fields]
    assert names.index(b"authorization") < names.index(b"originator")  # kept in its place


def test_the_body_is_not_decoded_when_the_headers_name_the_conversation(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codex sends the thread id in headers: its (zstd) body is not decoded and searched."""
    addon, _ = router
    decoded = []
    original = http.Request.get_content

    def counting(self: http.Request, *args: object, **kwargs: object) -> bytes | None:
        decoded.append(self.path)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http.Request, "get_content", counting)
    run(addon.request(codex_flow(**{"session-id": "thread-1"})))
    assert decoded == []
    run(addon.request(codex_flow()))  # no conversation header: the body's prompt_cache_key
    assert decoded == ["/backend-api/codex/responses"]


@pytest.mark.parametrize(("verbosity", "logged"), [("info", False), ("debug", True)])
def test_a_line_per_routed_request_only_at_debug_verbosity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, verbosity: str, logged: bool
) -> None:
    write_state(tmp_path / "state.toml", a=40, b=10)
    addon, terminal = Router(), termlog.TermLog(out=io.StringIO())
    with taddons.context(addon, terminal) as tctx, caplog.at_level("DEBUG"):
        tctx.configure(addon, router_state=str(tmp_path / "state.toml"))
        tctx.configure(terminal, termlog_verbosity=verbosity)
        run(addon.request(codex_flow()))
    terminal.uninstall()
    lines = [r.getMessage() for r in caplog.records if "-> a (" in r.getMessage()]
    assert bool(lines) is logged


def test_the_token_is_masked_once_the_answer_is_in(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow()
    run(addon.request(flow))
    flow.response = tutils.tresp(headers=http.Headers(**{"content-type": "application/json"}))
    run(addon.response(flow))
    masked = flow.request.headers["authorization"]
    assert TOKENS["a"] not in masked
    assert masked == "Bearer …" + TOKENS["a"][-4:]


def test_usage_headers_are_learnt_and_sse_is_streamed(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow()
    run(addon.request(flow))
    reset = int(time.time()) + 3600
    flow.response = tutils.tresp(
        headers=http.Headers(
            **{
                "content-type": "text/event-stream",
                "x-codex-primary-used-percent": "55.5",
                "x-codex-primary-reset-at": str(reset),
            }
        ),
        content=None,
    )
    addon.responseheaders(flow)
    assert callable(flow.response.stream)
    event = {
        "type": "codex.rate_limits",
        "rate_limits": {"primary": {"used_percent": 61.0, "reset_at": reset}},
    }
    chunk = f"event: codex.rate_limits\ndata: {json.dumps(event)}\n\n".encode()
    assert flow.response.stream(chunk[:20]) == chunk[:20]
    assert flow.response.stream(chunk[20:]) == chunk[20:]
    account = addon.pool.get("a")
    assert account.primary is not None and account.primary.used_percent == 61.0


def test_a_429_is_not_streamed(router: Fixture) -> None:
    addon, _ = router
    flow = codex_flow()
    run(addon.request(flow))
    flow.response = tutils.tresp(
        status_code=429, headers=http.Headers(**{"content-type": "text/event-stream"})
    )
    addon.responseheaders(flow)
    assert flow.response.stream is False
    assert flow.client_conn.peername not in addon._notices.clients


def test_mitmproxys_streaming_line_is_dropped_for_the_clients_the_router_streams_to(
    router: Fixture,
) -> None:
    addon, _ = router
    notices = addon._notices
    assert notices in logging.getLogger(LOGGER).filters  # installed when loaded
    flow = codex_flow()
    run(addon.request(flow))
    flow.response = tutils.tresp(
        headers=http.Headers(**{"content-type": "text/event-stream"}), content=None
    )
    addon.responseheaders(flow)
    assert notices.clients == {flow.client_conn.peername}
    addon.client_disconnected(flow.client_conn)
    assert not notices.clients
    addon.done()
    assert notices not in logging.getLogger(LOGGER).filters


def test_nothing_eligible_is_answered_locally_and_marked(router: Fixture) -> None:
    addon, tctx = router
    tctx.command(addon.pause, "a")
    tctx.command(addon.pause, "b")
    flow = codex_flow()
    run(addon.request(flow))
    assert flow.response is not None and flow.response.status_code == 400
    assert flow.response.headers["content-type"] == "text/plain; charset=utf-8"
    assert flow.marked
    assert (flow.response.text or "").startswith("quota-router: every pooled account is paused")
    assert "paused" in flow.comment


@pytest.mark.parametrize(
    ("owner_is", "status", "why"),
    [
        ("paused", 400, "(paused)"),
        ("limited", 400, "(rate limited until 2033-05-18 03:33 UTC)"),
        ("backing off", 409, "(backing off after 1 upstream error(s))"),
    ],
)
def test_a_turn_bound_to_an_account_that_cannot_serve_says_so(
    router: Fixture, owner_is: str, status: int, why: str
) -> None:
    """Paused, needing a new login or limited lasts until someone acts or a reset comes: a
    400 Codex shows at once. Backing off passes: a 409, which Codex retries a few seconds."""
    addon, tctx = router
    first = codex_flow(**{"session-id": "thread-7"})
    run(addon.request(first))
    owner = addon.pool.get(first.metadata["quota_router"]["account"])
    if owner_is == "paused":
        tctx.command(addon.pause, owner.name)
    elif owner_is == "limited":
        addon.pool.record_limit(owner, LimitHit("usage_limit_reached", 2_000_000_000), time.time())
    else:
        addon.pool.record_error(owner, time.time())
    bound = bound_flow("thread-7")
    run(addon.request(bound))
    assert bound.response is not None and bound.response.status_code == status
    message = f"this conversation belongs to account {owner.name!r}, which cannot serve now {why}"
    assert message in (bound.response.text or ""), bound.response.text


def test_a_bound_turn_when_no_account_can_serve_says_what_is_wrong_with_the_pool(
    router: Fixture,
) -> None:
    """Not "start a new conversation": a new one would fail too."""
    addon, tctx = router
    first = codex_flow(**{"session-id": "thread-7"})
    run(addon.request(first))
    for name in "ab":
        tctx.command(addon.pause, name)
    bound = bound_flow("thread-7")
    run(addon.request(bound))
    assert bound.response is not None and bound.response.status_code == 400
    assert (bound.response.text or "").startswith("quota-router: every pooled account is paused")


def bound_flow(session: str) -> http.HTTPFlow:
    """A turn that refers to its account's state (a previous response of that account)."""
    flow = codex_flow(**{"session-id": session})
    flow.request.content = json.dumps({"previous_response_id": "resp_123"}).encode()
    return flow


def test_the_same_local_answer_is_a_warning_once_a_minute(
    router: Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    addon, tctx = router
    for name in "ab":
        tctx.command(addon.pause, name)
    with caplog.at_level(logging.DEBUG, logger=router_module.logger.name):
        for _ in range(3):
            run(addon.request(codex_flow()))
        addon._said = {reason: when - 60 for reason, when in addon._said.items()}
        run(addon.request(codex_flow()))
    levels = [r.levelname for r in caplog.records if "answered locally" in r.getMessage()]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "WARNING"]


def test_commands_report_unknown_accounts(router: Fixture) -> None:
    addon, tctx = router
    with pytest.raises(exceptions.CommandError, match="no account named 'zed'"):
        tctx.command(addon.pause, "zed")
    assert "a" in addon.status()


def test_placeholder_refresh_is_answered_locally(router: Fixture) -> None:
    addon, _ = router
    body = json.dumps({"grant_type": "refresh_token", "refresh_token": CLIENT["refresh_token"]})
    flow = tflow.tflow(
        req=tutils.treq(
            host="auth.openai.com",
            port=443,
            scheme=b"https",
            method=b"POST",
            path=b"/oauth/token",
            content=body.encode(),
        )
    )
    run(addon.request(flow))
    assert flow.response is not None and flow.response.status_code == 200
    reply = json.loads(flow.response.content or b"")
    assert placeholder.is_placeholder(reply["refresh_token"])


def ws_flow(addon: Router) -> http.HTTPFlow:
    flow = codex_flow(path="/backend-api/codex/responses", upgrade="websocket")
    flow.request.method = "GET"
    run(addon.request(flow))
    flow.websocket = WebSocketData()
    return flow


def limit_frame() -> bytes:
    error = {"type": "usage_limit_reached", "resets_at": int(time.time()) + 600}
    return json.dumps({"type": "error", "status_code": 429, "error": error}).encode()


def test_a_websocket_limit_frame_sends_the_client_elsewhere(
    router: Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    addon, _ = router
    flow = ws_flow(addon)
    assert flow.websocket is not None
    flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, False, limit_frame()))
    with caplog.at_level(logging.WARNING):
        addon.websocket_message(flow)
    frame = json.loads(flow.websocket.messages[-1].content)
    assert frame["status_code"] == 503 and frame["error"]["code"] == "account_switch"
    block = addon.pool.get("a").block
    assert block is not None
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(block.until))
    # As an HTTP limit says it: when the account comes back.
    assert f"quota-router: a is limited (usage_limit_reached) until {until}" in caplog.messages


def test_a_websocket_limit_frame_passes_when_no_account_is_left(router: Fixture) -> None:
    addon, tctx = router
    tctx.command(addon.pause, "b")
    flow = ws_flow(addon)
    assert flow.websocket is not None
    frame = limit_frame()
    flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, False, frame))
    addon.websocket_message(flow)
    assert flow.websocket.messages[-1].content == frame


def test_live_option_changes_are_validated(router: Fixture) -> None:
    addon, tctx = router

    async def live() -> None:
        addon.running()
        with pytest.raises(exceptions.OptionsError, match="unknown strategy 'lottery'"):
            tctx.configure(addon, router_strategy="lottery")
        for url in ("ftp://x", "http://", "https://a b", "https://x\n"):
            with pytest.raises(exceptions.OptionsError, match="not an http"):
                tctx.configure(addon, router_token_url=url)
        with pytest.raises(
            exceptions.OptionsError, match=r"cannot expand '~nosuchuser' \(no such user"
        ):
            tctx.configure(addon, router_state="~nosuchuser/state.toml")
        with pytest.raises(exceptions.OptionsError, match="at least 1 second"):
            tctx.configure(addon, router_probe_interval=0)
        tctx.configure(addon, router_strategy="capacity_weighted")
        assert addon.strategy.value == "capacity_weighted"
        addon.done()

    run(live())


def test_a_live_switch_of_state_file_says_what_it_now_uses(
    router: Fixture, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped path in mitmweb's options turns routing off: it must be seen."""
    addon, tctx = router
    typo, good = tmp_path / "stat.toml", tmp_path / "state.toml"

    async def live() -> None:
        addon.running()
        try:
            with caplog.at_level(logging.INFO):
                tctx.configure(addon, router_state=str(typo))
                tctx.configure(addon, router_state=str(good))
        finally:
            addon.done()

    run(live())
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "now uses" in r.getMessage()]
    assert said == [
        (
            "WARNING",
            f"quota-router now uses {typo}: no accounts in it (no such file), passing all "
            "traffic through untouched",
        ),
        ("INFO", f"quota-router now uses {good}: 2 account(s)"),
    ]


def test_start_up_saves_and_settles_before_any_traffic(router: Fixture, tmp_path: Path) -> None:
    addon, _ = router
    path = tmp_path / "state.toml"
    path.write_text("# a hand-made comment\n" + path.read_text())
    assert addon.file is not None

    async def live() -> object:
        account = addon.pool.accounts[0]
        assert scanned(account)
        addon.running()
        try:
            assert "a hand-made comment" not in path.read_text()  # the first save is done
            assert addon.file is not None and addon.file._known is not None
            written = addon.file._known[1].accounts[0]  # what that save built to merge with
            assert not scanned(account)
            assert not scanned(written)
        finally:
            addon.done()
        return account

    assert scanned(run(live()))  # unloaded: collected as usual again


def test_an_invalid_state_file_is_refused_live_and_the_old_state_kept(
    router, tmp_path: Path
) -> None:
    addon, tctx = router
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\naccounts = 3\n")

    async def live() -> None:
        addon.running()
        with pytest.raises(exceptions.OptionsError, match=r"bad\.toml: invalid state: accounts"):
            tctx.configure(addon, router_state=str(bad))
        assert [a.name for a in addon.pool.accounts] == ["a", "b"]
        addon.done()

    run(live())
    assert bad.read_text() == "version = 1\naccounts = 3\n"


def test_state_is_flushed_on_shutdown(router: Fixture, tmp_path: Path) -> None:
    addon, _ = router
    for _ in range(3):
        run(addon.request(codex_flow()))
    addon.done()
    state = StateFile(tmp_path / "state.toml").read()
    assert isinstance(state, State)
    assert state.by_name("a").requests == 3  # type: ignore[union-attr]


def test_steering_commands_apply_at_once(router: Fixture) -> None:
    addon, tctx = router
    tctx.command(addon.steer, "a", "3", "80", "100")
    account = addon.pool.get("a")
    assert (account.priority, account.max_primary_percent) == (3, 80.0)
    flow = codex_flow()
    run(addon.request(flow))
    assert flow.request.headers["chatgpt-account-id"] == "acct-b"  # b is in the better tier
    tctx.command(addon.rename, "b", "spare")
    assert addon.pool.get("spare").credentials.account_id == "acct-b"
    with pytest.raises(exceptions.CommandError, match="not a number"):
        tctx.command(addon.steer, "a", "0", "lots", "100")
    with pytest.raises(exceptions.CommandError, match="less than or equal to 100"):
        tctx.command(addon.steer, "a", "0", "180", "100")


@pytest.mark.parametrize(
    ("cause", "client_left", "counted"),
    [
        ("Client disconnected.", False, False),
        ("client disconnected", False, False),  # the server connection cancelled as it opened
        ("stream reset by client (CANCEL)", False, False),
        ("Connection killed.", False, False),
        ("connection closed", True, False),  # the upstream TLS handshake, cut by the client leaving
        ("connection closed", False, True),  # ... by the upstream
        ("Server disconnected.", False, True),
        ("[Errno 111] Connection refused", False, True),
    ],
)
def test_only_a_failure_upstream_counts_against_the_account(
    router: Fixture, cause: str, client_left: bool, counted: bool
) -> None:
    """Codex gives up on calls that wait (for a slow token refresh, say) and cancels calls
    still connecting when it exits: that says nothing of the account, and must not send a
    healthy account into backoff."""
    addon, _ = router
    flow = codex_flow()
    run(addon.request(flow))
    flow.error = Error(cause)
    flow.client_conn.timestamp_end = time.time() if client_left else None
    addon.error(flow)
    backoff = addon.pool.get("a").backoff
    assert (backoff is not None) is counted
    assert flow.request.headers["authorization"].startswith("Bearer …")  # masked either way


def test_one_failed_refresh_is_one_error_and_one_line_however_many_wait(
    router: Fixture, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, _ = router
    account = addon.pool.get("a")
    account.credentials = account.credentials.model_copy(
        update={"expires_at": 1, "refresh_token": "rt-a"}
    )

    def failing(*_: object) -> tuple[RefreshFailed, bool]:  # the token endpoint says 503
        time.sleep(0.05)
        return RefreshFailed(False, "token refresh failed (HTTP 503)"), False

    monkeypatch.setattr(router_module, "refresh_persisted", failing)

    async def five_requests() -> list[bool]:
        return await asyncio.gather(*(addon._fresh(account) for _ in range(5)))

    with caplog.at_level(logging.WARNING):
        assert run(five_requests()) == [False] * 5
    assert account.backoff is not None and account.backoff.errors == 1
    assert [r.getMessage() for r in caplog.records].count(
        "quota-router: a: token refresh failed (HTTP 503)"
    ) == 1


def expiring_in(router: Fixture, seconds: float) -> tuple[Router, Account]:
    """The router, and its account a with a token that expires in `seconds`."""
    addon, _ = router
    account = addon.pool.get("a")
    account.credentials = account.credentials.model_copy(
        update={"expires_at": time.time() + seconds, "refresh_token": "rt-a"}
    )
    return addon, account


def slow_refresh(monkeypatch: pytest.MonkeyPatch, account: Account) -> threading.Event:
    """The token endpoint answers (access token "new") once the returned event is set."""
    answer = threading.Event()
    new = account.credentials.model_copy(update={"access_token": "new", "expires_at": None})

    def slow(*_: object) -> tuple[Refreshed, bool]:
        assert answer.wait(10)
        return Refreshed(new, None, None), True

    monkeypatch.setattr(router_module, "refresh_persisted", slow)
    return answer


def test_a_token_with_minutes_left_is_refreshed_in_the_background(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes on with the old token at once; the new one is there afterwards."""
    addon, account = expiring_in(router, 200)
    answer = slow_refresh(monkeypatch, account)

    async def request_then_refresh() -> None:
        assert await addon._fresh(account)  # did not wait: `slow` has not answered
        assert addon.pool.get("a").credentials.access_token != "new"
        [ahead] = addon._refreshing.values()
        answer.set()
        await ahead

    run(request_then_refresh())
    assert addon.pool.get("a").credentials.access_token == "new"
    assert addon.refresher.calls == 1


def test_a_failed_background_refresh_is_tried_again_only_after_a_while(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, account = expiring_in(router, 200)

    def failing(*_: object) -> tuple[RefreshFailed, bool]:
        return RefreshFailed(False, "token refresh failed (HTTP 503)"), False

    monkeypatch.setattr(router_module, "refresh_persisted", failing)

    async def requests() -> None:
        for _ in range(3):
            assert await addon._fresh(account)  # the old token serves meanwhile
            await asyncio.gather(*addon._refreshing.values())

    run(requests())
    assert addon.refresher.calls == 1
    assert account.backoff is None  # the account itself is fine
    addon._failed_at[account.id] -= RETRY_AHEAD_SECONDS
    run(requests())
    assert addon.refresher.calls == 2


def test_requests_wait_for_a_refresh_only_so_long_and_it_goes_on(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expired token and a slow token endpoint: requests stop waiting (the account backs
    off, once, saying why), the refresh does not, and its answer is taken in."""
    addon, account = expiring_in(router, -10)
    monkeypatch.setattr(router_module, "WAIT_FOR_ANSWER_SECONDS", 0.2)
    answer = slow_refresh(monkeypatch, account)

    async def scenario() -> None:
        assert not await addon._fresh(account)
        backoff = addon.pool.get("a").backoff
        assert backoff is not None and backoff.errors == 1
        assert backoff.cause == "token refresh waiting for its answer"
        assert not await addon._fresh(account)  # the wait is used up: no second one
        assert addon.pool.get("a").backoff == backoff  # ... and no second error
        answer.set()
        await asyncio.gather(*addon._refreshing.values())

    run(scenario())
    assert addon.pool.get("a").credentials.access_token == "new"
    assert addon.refresher.calls == 1


def test_a_failed_refresh_is_tried_again_only_after_a_while_when_requests_must_wait(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, account = expiring_in(router, -10)

    def failing(*_: object) -> tuple[RefreshFailed, bool]:
        return RefreshFailed(False, "token refresh failed: TimeoutError"), False

    monkeypatch.setattr(router_module, "refresh_persisted", failing)
    assert not run(addon._fresh(account))
    backoff = addon.pool.get("a").backoff
    assert backoff is not None and backoff.cause == "token refresh failed: TimeoutError"
    assert "backing off after 1 error(s): token refresh failed" in addon.status()
    account.backoff = None  # the backoff is over; the refresh failed moments ago
    assert not run(addon._fresh(account))
    assert addon.refresher.calls == 1
    addon._failed_at[account.id] -= RETRY_AHEAD_SECONDS
    assert not run(addon._fresh(account))
    assert addon.refresher.calls == 2


def test_background_refreshes_take_turns_and_an_urgent_one_does_not_wait_for_them(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many tokens entering their refresh margin together must not fill the refresh threads
    with refreshes nobody waits for, while a request in a token's last minute waits."""
    addon, a = expiring_in(router, 200)
    b = addon.pool.get("b")
    b.credentials = b.credentials.model_copy(
        update={"expires_at": time.time() + 200, "refresh_token": "rt-b"}
    )
    addon._background_slots = asyncio.Semaphore(1)
    answer = threading.Event()
    calls: list[str] = []

    def endpoint(
        _file: object, account_id: str, credentials: Credentials, *_: object
    ) -> tuple[Refreshed, bool]:
        calls.append(account_id)
        if account_id == a.id:
            assert answer.wait(10)  # a's refresh hangs
        return Refreshed(credentials.model_copy(update={"access_token": "new"}), None, None), True

    monkeypatch.setattr(router_module, "refresh_persisted", endpoint)

    async def scenario() -> None:
        assert await addon._fresh(a) and await addon._fresh(b)  # both in the background
        await asyncio.sleep(0.1)
        assert calls == [a.id]  # b waits for its turn
        b.credentials = b.credentials.model_copy(update={"expires_at": time.time() - 10})
        assert await addon._fresh(b)  # expired now: refreshed at once, not after a
        assert calls == [a.id, b.id]
        answer.set()
        await asyncio.gather(*addon._refreshing.values(), return_exceptions=True)

    run(scenario())
    assert addon.pool.get("b").credentials.access_token == "new"
    assert addon.refresher.calls == 2


def test_a_token_in_its_last_minute_is_refreshed_before_use(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, account = expiring_in(router, 50)
    new = account.credentials.model_copy(update={"access_token": "new", "expires_at": None})
    monkeypatch.setattr(
        router_module, "refresh_persisted", lambda *_: (Refreshed(new, None, None), True)
    )
    assert run(addon._fresh(account))
    assert addon.pool.get("a").credentials.access_token == "new"


def test_an_account_marked_for_a_new_login_is_not_refreshed_again(
    router: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests both answered 401: the first one's refresh was refused for good; the
    second must not send the same spent refresh token again."""
    addon, account = expiring_in(router, 3600)

    def refused(*_: object) -> tuple[RefreshFailed, bool]:
        return RefreshFailed(True, "token refresh refused: refresh_token_reused"), False

    monkeypatch.setattr(router_module, "refresh_persisted", refused)
    assert not run(addon._fresh(account, force=True))
    assert addon.pool.get("a").status is Status.REAUTH_REQUIRED
    assert not run(addon._fresh(addon.pool.get("a"), force=True))
    assert addon.refresher.calls == 1


def test_accounts_check_is_answered_for_the_client_when_no_account_can_make_it(
    router: Fixture,
) -> None:
    """Codex fails a refused accounts/check with "workspace routing discovery failed"; let it
    reach the turn, whose refusal says what is wrong and what to do."""
    addon, tctx = router
    for name in "ab":
        tctx.command(addon.pause, name)
    check = codex_flow(path="/backend-api/wham/accounts/check")
    check.request.method = "GET"
    run(addon.request(check))
    assert check.response is not None and check.response.status_code == 200
    reply = json.loads(check.response.content or b"")
    assert [entry["id"] for entry in reply["accounts"]] == [CLIENT["account_id"]]
    assert reply["default_account_id"] == CLIENT["account_id"]
    turn = codex_flow()
    run(addon.request(turn))
    assert turn.response is not None and turn.response.status_code == 400
    assert "every pooled account is paused" in (turn.response.text or "")
