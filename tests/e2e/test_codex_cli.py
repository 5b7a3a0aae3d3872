"""The real Codex CLI through a real mitmdump running the router, against the fake backend.

The CLI holds only the placeholder login (``addon.placeholder``): every credential the upstream
sees must be a pooled account's. Each case runs on both transports:

- ``ws``: the CLI's default WebSocket (a prewarm ``response.create`` with ``generate: false``,
  then the real one on the same socket, carrying the prewarm's id as ``previous_response_id``);
- ``http``: the fake answers the handshake 426 and the CLI falls back to HTTP POST + SSE with
  zstd-compressed bodies, as it does in production when WebSockets are unavailable.

One fake and one mitmdump serve the whole module (starting mitmdump costs seconds). Each test
gets fresh accounts: the fake is reset, the state file's accounts are replaced through the
real ``python -m addon`` commands (run in-process) and the test waits until the router has
merged the new file in (it rewrites the file when it does).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from addon import placeholder
from addon.cli import main as addon_main
from addon.statefile import fingerprint
from tests.e2e.harness import (
    CodexResult,
    CodexUnavailable,
    Mitmdump,
    codex_bin,
    fake_proxy,
    run_codex,
)
from tests.e2e.pool_env import READY, ROUTER, PoolEnv, Spec
from tests.fakes.codex_backend import FakeCodexBackend, RecordedRequest, RecordedTurn
from tests.fakes.jwt import make_auth_json

pytestmark = [pytest.mark.e2e, pytest.mark.codex_cli]

RESPONSES = "/backend-api/codex/responses"
TRANSPORTS = pytest.mark.parametrize("transport", ["ws", "http"])
USAGE_LIMIT = "usage limit"
PROBE_INTERVAL = 1  # seconds, for the probing router


# --------------------------------------------------------------------------- set-up


def addon_cli(state: Path, *args: str) -> str:
    """``python -m addon --state STATE ARGS...`` in this process (the real CLI code, no fork)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = addon_main(["--state", str(state), *args])
    assert code == 0, err.getvalue()
    return out.getvalue()


@dataclass
class Shared:
    fake: FakeCodexBackend
    proxy: Mitmdump
    state: Path


@contextlib.contextmanager
def shared_setup(directory: Path, **options: str) -> Iterator[Shared]:
    try:
        codex_bin()
    except CodexUnavailable as exc:
        pytest.skip(f"Codex CLI unavailable: {exc}")
    state = directory / "router-state.toml"
    with FakeCodexBackend() as fake:
        options = {
            "router_state": str(state),
            "router_token_url": f"{fake.url}/oauth/token",
            **options,
        }
        with fake_proxy(fake.address, [ROUTER], options, ready_pattern=READY) as proxy:
            yield Shared(fake, proxy, state)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """The default router (probe interval 60 s: no probe happens within a test)."""
    with shared_setup(tmp_path_factory.mktemp("codex-cli-pool")) as setup:
        yield setup


@pytest.fixture(scope="module")
def shared_probing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """A router that probes an all-blocked pool every second."""
    directory = tmp_path_factory.mktemp("codex-cli-probing")
    with shared_setup(directory, router_probe_interval=str(PROBE_INTERVAL)) as setup:
        yield setup


@dataclass
class CliEnv(PoolEnv):
    """A PoolEnv on the shared fake and proxy, with the real CLI as the client."""

    def run(self, prompt: str = "say hi", **kwargs: Any) -> CodexResult:
        return run_codex(prompt, self.proxy.port, self.proxy.ca_path, self.client, **kwargs)

    def status(self, wait_for: Any = None, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = json.loads(addon_cli(self.state, "status", "--json"))["accounts"]
            by_name = {row["name"]: row for row in rows}
            if wait_for is None or wait_for(by_name) or time.monotonic() > deadline:
                return by_name
            time.sleep(0.1)

    def backend(self, since: int = 0) -> list[RecordedRequest]:
        """Every request under /backend-api/ the upstream received (from index ``since``)."""
        return [r for r in self.fake.requests[since:] if r.path.startswith("/backend-api/")]

    def accounts_seen(self, since: int = 0) -> Counter[str | None]:
        return Counter(r.account_id for r in self.backend(since))


def _replace_accounts(
    shared: Shared, tmp_path: Path, specs: Sequence[Spec]
) -> dict[str, dict[str, Any]]:
    state = shared.state
    if state.exists():
        for row in json.loads(addon_cli(state, "status", "--json"))["accounts"]:
            addon_cli(state, "remove", row["name"])
    auths = {}
    for spec in specs:
        auth = make_auth_json(f"acct-{spec.name}", spec.plan, exp=spec.exp)
        shared.fake.register_auth_json(
            auth, primary_used=spec.primary, secondary_used=spec.secondary
        )
        path = tmp_path / f"{spec.name}.auth.json"
        path.write_text(json.dumps(auth))
        addon_cli(state, "import", str(path), "--name", spec.name)
        auths[spec.name] = auth
    wait_for_router(state)
    return auths


def wait_for_router(state: Path) -> None:
    """Wait until the router has merged the file as it is now: it notices an external change
    within ~0.5 s, merges it and then writes the file itself."""
    written = fingerprint(state)
    deadline = time.monotonic() + 10
    while fingerprint(state) == written:
        assert time.monotonic() < deadline, "the router did not take the state file in"
        time.sleep(0.05)


def env_factory(shared: Shared, tmp_path: Path) -> Callable[..., CliEnv]:
    def make(specs: Sequence[Spec], transport: str) -> CliEnv:
        shared.fake.reset()
        auths = _replace_accounts(shared, tmp_path, specs)
        shared.fake.websocket_enabled = transport == "ws"
        return CliEnv(shared.fake, shared.proxy, shared.state, auths)

    return make


@pytest.fixture
def make_env(shared: Shared, tmp_path: Path) -> Callable[..., CliEnv]:
    return env_factory(shared, tmp_path)


@pytest.fixture
def make_probing_env(shared_probing: Shared, tmp_path: Path) -> Callable[..., CliEnv]:
    return env_factory(shared_probing, tmp_path)


# --------------------------------------------------------------------------- checks


def succeeded(result: CodexResult) -> bool:
    return result.returncode == 0 and result.completed


def failure(result: CodexResult) -> str:
    """What the CLI finally told the user: its ``turn.failed`` message (stderr not included:
    it also logs side issues, e.g. a failed model-list refresh, with the usage-limit text)."""
    failed = [e for e in result.events if e.get("type") == "turn.failed"]
    return str(failed[-1].get("error", {}).get("message", "")) if failed else ""


def why(result: CodexResult, env: CliEnv) -> str:
    """Failure context: the CLI's errors, the upstream's view, the router's log."""
    seen = [
        (r.method, r.path, r.transport, r.status, r.account_id)
        for r in env.fake.requests
        if r.path.startswith(("/backend-api/codex/responses", "/oauth"))
    ]
    turns = [(t.transport, t.generate, t.outcome, t.account_id) for t in env.fake.turns]
    log = [line for line in env.proxy.lines[-40:] if "quota-router" in line]
    errors = [str(e.get("message")) for e in result.events if e.get("type") == "error"][-4:]
    head = [f"rc={result.returncode} failure={failure(result)!r}", *errors, result.stderr[-600:]]
    return "\n".join([*head, *map(str, seen + turns), *log])


def bearer(request: RecordedRequest) -> str | None:
    value = request.authorization or ""
    return value[7:] if value.startswith("Bearer ") else None


def assert_only_pooled_credentials(env: CliEnv, name: str, since: int = 0) -> None:
    """Every /backend-api/ request carried account ``name``'s token and id; the client's own
    placeholder credentials never reached the upstream, in any header of any request."""
    account_id = f"acct-{name}"
    tokens = set(env.fake.tokens_of(account_id))
    requests = env.backend(since)
    assert requests
    for request in requests:
        where = f"{request.method} {request.path}"
        assert request.account_id == account_id, where
        assert request.chatgpt_account_id == account_id, where
        assert bearer(request) in tokens, where
    client = env.client["tokens"]
    secrets = {client["access_token"], client["account_id"], client["refresh_token"]}
    for request in env.fake.requests[since:]:
        for value in request.headers.values():
            assert not any(secret in value for secret in secrets), request.path
    assert not any(placeholder.is_placeholder(r.refresh_token) for r in env.fake.refreshes)


def model_requests(env: CliEnv, since: int = 0) -> list[RecordedRequest]:
    """WebSocket handshakes and HTTP POSTs to .../codex/responses."""
    return [r for r in env.backend(since) if r.path == RESPONSES]


def text_of(turn: RecordedTurn) -> str:
    return json.dumps(turn.body.get("input", [])) if isinstance(turn.body, dict) else ""


# --------------------------------------------------------------------------- 1. credentials


@TRANSPORTS
def test_a_turn_goes_upstream_with_the_pooled_account_only(
    make_env: Callable[..., CliEnv], transport: str
) -> None:
    env = make_env([Spec("a", primary=30), Spec("b")], transport)
    result = env.run()

    assert succeeded(result), why(result, env)
    assert result.agent_messages == [env.fake.reply_text]
    assert_only_pooled_credentials(env, "a")
    turns = env.fake.turns
    if transport == "ws":
        assert [(t.transport, t.generate, t.outcome) for t in turns] == [
            ("ws", False, "ok"),
            ("ws", True, "ok"),
        ]
        assert [r.status for r in model_requests(env)] == [101]
    else:
        assert [(t.transport, t.outcome, t.content_encoding) for t in turns] == [
            ("http", "ok", "zstd")
        ]
        assert [(r.method, r.status) for r in model_requests(env)] == [("GET", 426), ("POST", 200)]
    # accounts/check was answered with the client's own id (mapped back), or the turn fails.
    assert [r.status for r in env.fake.requests_for("/backend-api/wham/accounts/check")] == [200]


# --------------------------------------------------------------------------- 2. usage


@TRANSPORTS
def test_usage_the_upstream_reports_shows_in_status(
    make_env: Callable[..., CliEnv], transport: str
) -> None:
    env = make_env([Spec("a", primary=30, secondary=5), Spec("b")], transport)
    result = env.run()

    assert succeeded(result), why(result, env)
    upstream = env.fake.account("acct-a")
    assert (upstream.primary_used, upstream.secondary_used) == (40.0, 7.0)
    rows = env.status(lambda r: r["a"]["primary_used_percent"] == upstream.primary_used)
    assert rows["a"]["primary_used_percent"] == upstream.primary_used
    assert rows["a"]["secondary_used_percent"] == upstream.secondary_used
    assert rows["a"]["primary_reset_at"] == upstream.primary_reset_at
    assert rows["a"]["status"] == "active"
    assert rows["b"]["primary_used_percent"] is None  # never used, nothing learnt


# --------------------------------------------------------------------------- 3. affinity


@TRANSPORTS
def test_fill_first_keeps_a_conversation_and_its_resume_on_one_account(
    make_env: Callable[..., CliEnv], transport: str, tmp_path: Path
) -> None:
    env = make_env([Spec("a", primary=30), Spec("b", primary=20)], transport)
    home = tmp_path / "client-home"
    first = env.run("say hi", home=home, ephemeral=False)
    assert succeeded(first), why(first, env)
    mark = len(env.fake.requests)
    env.fake.set_usage("acct-a", primary_used=55.0)  # changes between the two runs
    second = env.run("and again", home=home, ephemeral=False, args=("resume", "--last"))
    assert succeeded(second), why(second, env)

    assert_only_pooled_credentials(env, "a")
    assert set(env.accounts_seen(mark)) == {"acct-a"}
    real = env.fake.real_turns()
    assert len(real) == 2
    # The second run really continued the first thread: same thread id, earlier prompt sent.
    threads = {r.headers.get("session-id") for r in model_requests(env)}
    assert len(threads) == 1 and None not in threads
    assert "say hi" in text_of(real[1]) and "and again" in text_of(real[1])
    rows = env.status(lambda r: r["a"]["primary_used_percent"] == 65.0)
    assert rows["a"]["primary_used_percent"] == 65.0


@TRANSPORTS
def test_a_resumed_conversation_whose_account_was_paused_says_so_at_once(
    make_env: Callable[..., CliEnv], transport: str, tmp_path: Path
) -> None:
    """Real Codex models send their encrypted reasoning back with each turn, and only the
    account that made it can read it: the resumed turn cannot move. The user reads which
    account, why, and what to do, at once; a new conversation then runs on b."""
    env = make_env([Spec("a", primary=30), Spec("b", primary=10)], transport)
    env.fake.reasoning = True
    home = tmp_path / "client-home"
    first = env.run("say hi", home=home, ephemeral=False)
    assert succeeded(first), why(first, env)
    addon_cli(env.state, "pause", "a")
    wait_for_router(env.state)
    mark = len(env.fake.requests)
    second = env.run("and again", home=home, ephemeral=False, args=("resume", "--last"))

    assert second.returncode == 1, why(second, env)
    assert failure(second) == (
        "quota-router: this conversation belongs to account 'a', which cannot serve now "
        "(paused); start a new conversation to continue on another account."
    ), why(second, env)
    assert model_requests(env, since=mark) == []  # a's reasoning never went to b
    third = env.run("something new", home=home)
    assert succeeded(third), why(third, env)
    assert [t.account_id for t in env.fake.real_turns()] == ["acct-a", "acct-b"]


@TRANSPORTS
def test_a_cap_reached_mid_run_does_not_split_the_run(
    make_env: Callable[..., CliEnv], transport: str, tmp_path: Path
) -> None:
    """a may be used up to 35 % (`set a --max-primary 35`) and is at 30 %: it serves the run,
    and the turn takes it to 40 %. From then on fill_first ranks the uncapped b first for new
    work, but this run (and its resume) is one conversation and must stay on a."""
    env = make_env([Spec("a", primary=30), Spec("b")], transport)
    addon_cli(env.state, "set", "a", "--max-primary", "35")
    wait_for_router(env.state)
    home = tmp_path / "client-home"
    first = env.run("say hi", home=home, ephemeral=False)
    assert succeeded(first), why(first, env)
    mark = len(env.fake.requests)
    second = env.run("and again", home=home, ephemeral=False, args=("resume", "--last"))
    assert succeeded(second), why(second, env)

    assert {t.account_id for t in env.fake.turns} == {"acct-a"}  # the turns stay on a
    listing = "\n".join(
        f"{'resume' if n >= mark else 'first '} {r.method} {r.path} -> {r.account_id}"
        for n, r in enumerate(env.fake.requests)
        if r.path.startswith("/backend-api/")
    )
    assert set(env.accounts_seen()) == {"acct-a"}, listing  # ... and so must the rest


# --------------------------------------------------------------------------- 4. refresh


@TRANSPORTS
def test_an_expired_pooled_token_is_refreshed_before_use(
    make_env: Callable[..., CliEnv], transport: str
) -> None:
    past = int(time.time()) - 600
    env = make_env([Spec("a", primary=30, exp=past), Spec("b")], transport)
    old_token = env.token("a")
    result = env.run()

    assert succeeded(result), why(result, env)
    refreshes = env.fake.refreshes
    assert [(r.outcome, r.refresh_token) for r in refreshes] == [
        ("ok", env.auths["a"]["tokens"]["refresh_token"])
    ]
    new_token = refreshes[0].new_access_token
    assert all(bearer(r) == new_token for r in env.backend()), [
        (r.path, r.status) for r in env.backend() if bearer(r) != new_token
    ]
    assert not any(bearer(r) == old_token for r in env.fake.requests)
    assert_only_pooled_credentials(env, "a")
    assert [t.outcome for t in env.fake.real_turns()] == ["ok"]


# --------------------------------------------------------------------------- 5. failover


@pytest.mark.parametrize(
    ("transport", "limit_at"),
    [("ws", "prewarm"), ("ws", "turn"), ("http", "turn")],
    ids=["ws-limit-at-prewarm", "ws-limit-at-real-request", "http"],
)
def test_a_turn_survives_an_account_limited_upstream(
    make_env: Callable[..., CliEnv], transport: str, limit_at: str
) -> None:
    """Never lose a turn: a is out upstream while the router still thinks it is fine."""
    env = make_env([Spec("a", primary=30), Spec("b")], transport)
    assert env.fake.enforce_previous_response  # like the real backend
    if limit_at == "prewarm":
        env.fake.set_limited("acct-a", 3600)  # refuses the prewarm already
    else:
        env.fake.set_limited("acct-a", 3600, after_turns=0)  # the prewarm works, the turn not
    result = env.run("say hi")

    assert succeeded(result), why(result, env)
    assert result.agent_messages == [env.fake.reply_text]
    turns = [(t.transport, t.generate, t.outcome, t.account_id) for t in env.fake.turns]
    if transport == "http":
        assert turns == [("http", True, "limited", "acct-a"), ("http", True, "ok", "acct-b")]
        # The CLI saw one answer: the router retried before any byte reached it.
        posts = [r for r in model_requests(env) if r.method == "POST"]
        assert [(r.account_id, r.status) for r in posts] == [("acct-a", 429), ("acct-b", 200)]
    else:
        first = [("ws", False, "limited", "acct-a")]
        if limit_at == "turn":
            first = [("ws", False, "ok", "acct-a"), ("ws", True, "limited", "acct-a")]
        assert turns == [*first, ("ws", True, "ok", "acct-b")]
        handshakes = [(r.account_id, r.status) for r in model_requests(env)]
        assert handshakes == [("acct-a", 101), ("acct-b", 101)]
        resent = env.fake.turns[-1]
        # The turn resent on the new socket is self-contained: no previous_response_id from
        # a's socket (which b would refuse with previous_response_not_found), full input.
        assert "previous_response_id" not in resent.body
        assert "say hi" in text_of(resent)
        if limit_at == "turn":
            refused = env.fake.turns[1].body["previous_response_id"]
            assert env.fake.response_owner(refused) == "acct-a"
    rows = env.status(lambda r: r["a"]["status"] == "rate_limited")
    assert rows["a"]["status"] == "rate_limited"
    assert rows["b"]["status"] == "active"

    # Once a is known to be out, a new run never touches it.
    mark, turns_before = len(env.fake.requests), len(env.fake.turns)
    again = env.run("next")
    assert succeeded(again), why(again, env)
    assert_only_pooled_credentials(env, "b", since=mark)
    assert {t.outcome for t in env.fake.turns[turns_before:]} == {"ok"}


# --------------------------------------------------------------------------- 6. exhaustion


@TRANSPORTS
def test_every_account_limited_shows_the_usage_limit_message(
    make_env: Callable[..., CliEnv], transport: str
) -> None:
    env = make_env([Spec("a", primary=30), Spec("b")], transport)
    env.fake.set_limited("acct-a", 3600)
    env.fake.set_limited("acct-b", 1800)
    result = env.run()

    assert result.returncode == 1, why(result, env)
    assert not result.completed
    assert USAGE_LIMIT in failure(result).lower(), why(result, env)
    # Each account was asked once at most; the rest was answered by the router itself.
    per_account = Counter(t.account_id for t in env.fake.turns)
    assert set(per_account) <= {"acct-a", "acct-b"} and max(per_account.values()) == 1
    assert {t.outcome for t in env.fake.turns} == {"limited"}
    assert len(model_requests(env)) <= 3
    rows = env.status(lambda r: r["a"]["status"] == r["b"]["status"] == "rate_limited")
    assert rows["a"]["status"] == rows["b"]["status"] == "rate_limited"


@TRANSPORTS
def test_every_account_paused_tells_the_user_why_and_what_to_do(
    make_env: Callable[..., CliEnv], transport: str
) -> None:
    """Codex checks its workspace (accounts/check) before the turn and, when that call is
    refused, fails with "workspace routing discovery failed": the router's own message, which
    says how to fix it, must be what the user reads."""
    env = make_env([Spec("a"), Spec("b")], transport)
    for name in "ab":
        addon_cli(env.state, "pause", name)
    wait_for_router(env.state)
    result = env.run()

    assert result.returncode == 1, why(result, env)
    # The router's message as it is, at once: not retried for half a minute as a 503 would be.
    assert failure(result) == (
        "quota-router: every pooled account is paused; resume one with "
        "`python -m addon resume NAME`."
    ), why(result, env)
    assert env.backend() == []  # nothing went upstream, with any credentials


def test_a_run_while_every_account_is_known_out_shows_the_usage_limit_message(
    make_env: Callable[..., CliEnv],
) -> None:
    """The router already knows the whole pool is out (no probe due): it answers by itself,
    and what it answers must still make the CLI show its usage-limit message (with the reset
    time), quickly, without model requests upstream.

    One transport only: the router answers before the upstream could refuse a WebSocket, so
    the fake's ``websocket_enabled`` never comes into play."""
    env = make_env([Spec("a", primary=30), Spec("b")], "ws")
    env.fake.set_limited("acct-a", 3600)
    env.fake.set_limited("acct-b", 1800)
    assert env.turn().status == 429  # a plain HTTP turn teaches the router: a, then b, out
    env.status(lambda r: r["a"]["status"] == r["b"]["status"] == "rate_limited")
    mark = len(env.fake.requests)
    result = env.run()

    assert result.returncode == 1
    assert USAGE_LIMIT in failure(result).lower(), why(result, env)
    assert model_requests(env, since=mark) == []


@TRANSPORTS
def test_an_early_reset_is_found_by_a_probe_from_a_real_run(
    make_probing_env: Callable[..., CliEnv], transport: str
) -> None:
    """The whole pool is known out; then b (the earliest reset, so the one probed) is reset
    early upstream. The next run's model request is the probe: it reaches b and succeeds."""
    env = make_probing_env([Spec("a", primary=30), Spec("b")], transport)
    env.fake.set_limited("acct-a", 3600)
    env.fake.set_limited("acct-b", 1800)
    assert env.turn().status == 429  # the router learns both are out
    env.status(lambda r: r["a"]["status"] == r["b"]["status"] == "rate_limited")
    env.fake.set_limited("acct-b", None)
    time.sleep(PROBE_INTERVAL + 0.1)  # a probe is due from now on
    mark, turns_before = len(env.fake.requests), len(env.fake.turns)
    result = env.run()

    assert succeeded(result), why(result, env)
    turns = [(t.account_id, t.outcome) for t in env.fake.turns[turns_before:] if t.generate]
    assert turns == [("acct-b", "ok")]
    # a (out for longer) got no model request; calls that use no quota may go anywhere.
    expected = ["acct-b"] * 2 if transport == "http" else ["acct-b"]  # http: 426 GET + POST
    assert [r.account_id for r in model_requests(env, mark)] == expected
    rows = env.status(lambda r: r["b"]["status"] == "active")
    assert rows["b"]["status"] == "active"


# --------------------------------------------------------------------------- 7. handshake


RATE_LIMITED = {
    "error": {
        "type": "rate_limit_exceeded",
        "code": "rate_limit_exceeded",
        "message": "Rate limit reached. Please try again later.",
        "resets_in_seconds": 600,
    }
}


@TRANSPORTS
@pytest.mark.parametrize("status", [401, 429])
def test_a_refused_first_connection_does_not_fail_the_turn(
    make_env: Callable[..., CliEnv], transport: str, status: int
) -> None:
    """ws: the handshake is answered 401 / 429 once (the router cannot replay a handshake: the
    CLI's own retry must find fresh tokens / another account). http: the POST is, and the
    router retries it itself."""
    env = make_env([Spec("a", primary=30), Spec("b")], transport)
    body = RATE_LIMITED if status == 429 else None
    env.fake.inject_error(status, body, transport="ws_handshake" if transport == "ws" else "http")
    result = env.run()

    assert succeeded(result), why(result, env)
    retried = [f"injected:{status}"] if transport == "http" else []  # by the router, unseen
    assert [t.outcome for t in env.fake.real_turns()] == [*retried, "ok"]
    served = [
        (r.method, r.account_id, r.status)
        for r in model_requests(env)
        if (r.method, r.status) != ("GET", 426)
    ]
    method = "GET" if transport == "ws" else "POST"
    ok = 101 if transport == "ws" else 200
    if status == 401:
        # One refresh of a (by the router; the client's placeholder never goes upstream),
        # then the same account with the new token.
        refreshes = env.fake.refreshes
        assert [(r.outcome, r.refresh_token) for r in refreshes] == [
            ("ok", env.auths["a"]["tokens"]["refresh_token"])
        ]
        assert served == [(method, "acct-a", 401), (method, "acct-a", ok)]
        assert bearer(model_requests(env)[-1]) == refreshes[0].new_access_token
        assert_only_pooled_credentials(env, "a")
    else:
        assert served == [(method, "acct-a", 429), (method, "acct-b", ok)]
        rows = env.status(lambda r: r["a"]["status"] == "rate_limited")
        assert rows["a"]["status"] == "rate_limited"
