"""refresh.refresh_persisted: one refresh per account across processes, under that account's
lock; the state file's own lock is taken only to write the result."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from addon import statefile
from addon.refresh import Refreshed, RefreshFailed, refresh_persisted
from addon.state import Account, Credentials, Status
from addon.statefile import StateFile
from tests.fakes.jwt import make_access_token, make_refresh_token


class TokenEndpoint:
    """A local OAuth token endpoint: each answer waits for `gate`, and it counts the calls
    and how many were in flight at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.refusal = ""  # set: answer 400 with this error code
        self.arrived = threading.Semaphore(0)
        self.calls = 0
        self.inflight = 0
        self.most_at_once = 0
        self.both_in = threading.Event()  # set when two calls are in flight together
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with endpoint._lock:
                    endpoint.calls += 1
                    endpoint.inflight += 1
                    endpoint.most_at_once = max(endpoint.most_at_once, endpoint.inflight)
                    if endpoint.inflight == 2:
                        endpoint.both_in.set()
                endpoint.arrived.release()
                endpoint.gate.wait(10)
                with endpoint._lock:
                    endpoint.inflight -= 1
                account = body["refresh_token"].split(":")[0]
                reply: dict[str, object] = {
                    "access_token": make_access_token(account),
                    "refresh_token": f"{account}:{make_refresh_token()}",
                }
                if endpoint.refusal:
                    reply = {"error": {"code": endpoint.refusal}}
                data = json.dumps(reply).encode()
                self.send_response(400 if endpoint.refusal else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    def wait_for_a_call(self) -> None:
        assert self.arrived.acquire(timeout=10), "the refresh never reached the endpoint"


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    endpoint.gate.set()
    endpoint.server.shutdown()
    endpoint.server.server_close()


def pooled(path: Path, *names: str) -> dict[str, Account]:
    """Accounts in a new state file; each refresh token starts with its account id."""
    accounts = {
        name: Account(
            name=name,
            credentials=Credentials(
                access_token=make_access_token(f"acct-{name}"),
                refresh_token=f"acct-{name}:{make_refresh_token()}",
                account_id=f"acct-{name}",
                updated_at=1000.0,
            ),
        )
        for name in names
    }
    StateFile(path).edit(lambda state: state.accounts.extend(accounts.values()))
    return accounts


def stored(path: Path, name: str) -> Account:
    state = StateFile(path).read()
    assert state is not None
    [account] = [a for a in state.accounts if a.name == name]
    return account


Results = list[tuple[Refreshed | RefreshFailed, bool]]


def in_thread(path: Path, account: Account, url: str) -> tuple[threading.Thread, Results]:
    results: Results = []
    thread = threading.Thread(
        target=lambda: results.append(
            refresh_persisted(StateFile(path), account.id, account.credentials, url)
        )
    )
    thread.start()
    return thread, results


def test_a_busy_refresh_lock_is_a_plain_transient_failure_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process is refreshing this account: the refresh is not tried, and the reason
    says why."""
    path = tmp_path / "state.toml"
    account = pooled(path, "a")["a"]
    monkeypatch.setattr(statefile, "REFRESH_LOCK_TIMEOUT", 0.05)
    with StateFile(path).refreshing(account.id):
        result, persisted = refresh_persisted(
            StateFile(path), account.id, account.credentials, "http://127.0.0.1:9/never"
        )
    assert isinstance(result, RefreshFailed) and not result.permanent and not persisted
    assert result.reason.startswith("token refresh not tried: ")
    assert "this account's refresh lock has been held" in result.reason


def test_the_file_stays_writable_while_the_token_endpoint_answers(
    tmp_path: Path, endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow token endpoint holds up no other writer (the CLI, a save), and what they wrote
    meanwhile stays in the file next to the new pair."""
    path = tmp_path / "state.toml"
    a = pooled(path, "a", "b")["a"]
    monkeypatch.setattr(statefile, "LOCK_TIMEOUT", 0.05)
    endpoint.gate.clear()
    thread, results = in_thread(path, a, endpoint.url)
    endpoint.wait_for_a_call()

    def pause_b(state: statefile.State) -> None:
        [b] = [x for x in state.accounts if x.name == "b"]
        b.status = Status.PAUSED

    StateFile(path).edit(pause_b)  # raises "lock has been held" if the refresh held it
    endpoint.gate.set()
    thread.join(10)
    [(result, persisted)] = results
    assert isinstance(result, Refreshed) and persisted
    assert stored(path, "a").credentials.refresh_token == result.credentials.refresh_token
    assert stored(path, "b").status is Status.PAUSED


@pytest.mark.parametrize("refused", [False, True], ids=["refreshed", "refresh-token-reused"])
def test_a_login_imported_during_the_call_wins_over_its_refresh(
    tmp_path: Path, endpoint: TokenEndpoint, refused: bool
) -> None:
    """`import --replace` while the account's refresh waits for its answer: the new login is
    kept (as if it had come after the refresh), and the proxy takes it instead. Also when the
    old login's refresh is refused: its refresh token was spent (the user logged in again
    because Codex had spent it), so the account does not need yet another login."""
    path = tmp_path / "state.toml"
    a = pooled(path, "a")["a"]
    endpoint.refusal = "refresh_token_reused" if refused else ""
    endpoint.gate.clear()
    thread, results = in_thread(path, a, endpoint.url)
    endpoint.wait_for_a_call()
    imported = a.credentials.model_copy(
        update={"refresh_token": f"acct-a:{make_refresh_token()}", "updated_at": time.time()}
    )

    def replace_login(state: statefile.State) -> None:
        state.accounts[0].credentials = imported

    StateFile(path).edit(replace_login)
    endpoint.gate.set()
    thread.join(10)
    [(result, persisted)] = results
    assert isinstance(result, Refreshed) and persisted
    assert result.credentials.refresh_token == imported.refresh_token
    assert stored(path, "a").credentials.refresh_token == imported.refresh_token


def test_a_busy_file_lock_after_the_call_keeps_the_pair_for_the_saver(
    tmp_path: Path, endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.toml"
    a = pooled(path, "a")["a"]
    monkeypatch.setattr(statefile, "LOCK_TIMEOUT", 0.05)
    endpoint.gate.clear()
    thread, results = in_thread(path, a, endpoint.url)
    endpoint.wait_for_a_call()
    with StateFile(path).locked():
        endpoint.gate.set()
        thread.join(10)
    [(result, persisted)] = results
    assert isinstance(result, Refreshed) and not persisted
    assert stored(path, "a").credentials.refresh_token == a.credentials.refresh_token


def test_refreshes_of_two_accounts_run_at_once(tmp_path: Path, endpoint: TokenEndpoint) -> None:
    path = tmp_path / "state.toml"
    accounts = pooled(path, "a", "b")
    file = StateFile(path)
    assert file.refresh_lock_path(accounts["a"].id) != file.refresh_lock_path(accounts["b"].id)
    endpoint.gate.clear()
    started = [in_thread(path, account, endpoint.url) for account in accounts.values()]
    # Serialised, the second call would only arrive after the first one's answer.
    assert endpoint.both_in.wait(5), "the second refresh waited for the first"
    endpoint.gate.set()
    for thread, _ in started:
        thread.join(10)
    assert endpoint.most_at_once == 2
    assert all(isinstance(results[0][0], Refreshed) for _, results in started)


def test_two_refreshes_of_one_account_spend_its_refresh_token_once(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    """The second one (another process, or another state file object) waits on the account's
    lock and takes the pair the first one stored."""
    path = tmp_path / "state.toml"
    a = pooled(path, "a")["a"]
    endpoint.gate.clear()
    first, first_results = in_thread(path, a, endpoint.url)
    endpoint.wait_for_a_call()
    second, second_results = in_thread(path, a, endpoint.url)
    endpoint.gate.set()
    first.join(10)
    second.join(10)
    assert endpoint.calls == 1
    [(one, one_persisted)], [(two, two_persisted)] = first_results, second_results
    assert isinstance(one, Refreshed) and isinstance(two, Refreshed)
    assert one_persisted and two_persisted
    assert one.fetched and not two.fetched  # said apart in the log
    assert two.credentials.refresh_token == one.credentials.refresh_token
    assert stored(path, "a").credentials.refresh_token == one.credentials.refresh_token


def test_where_no_refresh_lock_can_be_made_refreshes_take_turns_on_the_directory(
    tmp_path: Path, endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """`<file>.refresh` cannot be created (here a file is in the way; or a read-only or
    immutable directory): refreshes still happen, one at a time, and the log says why."""
    path = tmp_path / "state.toml"
    a = pooled(path, "a")["a"]
    (tmp_path / "state.toml.refresh").write_text("")
    endpoint.gate.clear()
    with caplog.at_level(logging.WARNING):
        first, first_results = in_thread(path, a, endpoint.url)
        endpoint.wait_for_a_call()
        second, second_results = in_thread(path, a, endpoint.url)
        endpoint.gate.set()
        first.join(10)
        second.join(10)
    assert endpoint.calls == 1  # the second one waited, then took the first one's pair
    [(one, one_persisted)], [(two, _)] = first_results, second_results
    assert isinstance(one, Refreshed) and one_persisted and isinstance(two, Refreshed)
    assert two.credentials.refresh_token == one.credentials.refresh_token
    told = [r.getMessage() for r in caplog.records if "take turns" in r.getMessage()]
    assert told  # once per state file (each thread here opens its own)
    assert all("state.toml.refresh is not a directory" in t for t in told)
