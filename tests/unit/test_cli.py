"""cli.py: `python -m addon` import/status/pause/resume/remove, and its errors."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from addon.cli import main
from addon.dashboard import ROW_FIELDS
from addon.state import Account, Plan, State, Status, Window
from addon.statefile import StateFile
from tests.fakes.jwt import make_auth_json

if TYPE_CHECKING:
    from conftest import AuthFiles, Cli, Result, WriteAuth

REPO = Path(__file__).resolve().parents[2]
JSON_KEYS = {
    "name",
    "plan",
    "status",
    "primary_used_percent",
    "primary_reset_at",
    "secondary_used_percent",
    "secondary_reset_at",
    "requests",
    "last_used_at",
}


def secrets_of(files: AuthFiles) -> list[str]:
    out = []
    for _, doc in files.values():
        tokens = doc["tokens"]
        out += [tokens["access_token"], tokens["refresh_token"], tokens["id_token"]]
    return out


def assert_no_secret(files: AuthFiles, *texts: str) -> None:
    for secret in secrets_of(files):
        for text in texts:
            assert secret not in text
            assert secret[-16:] not in text


def status_json(cli: Cli) -> dict[str, dict[str, Any]]:
    result = cli("status", "--json")
    assert result.code == 0 and result.err == ""
    return {row["name"]: row for row in json.loads(result.out)["accounts"]}


# -- import ----------------------------------------------------------------------------------


def test_import_adds_an_account(cli: Cli, state_path: Path, auth_files: AuthFiles) -> None:
    path, doc = auth_files["pro1"]
    result = cli("import", path, "--name", "work")
    assert result.code == 0 and result.err == ""
    assert "work" in result.out and "pro" in result.out
    state = StateFile(state_path).read()
    assert state is not None
    [account] = state.accounts
    assert (account.name, account.plan, account.email) == ("work", Plan.PRO, "pro1@example.com")
    assert account.credentials.access_token == doc["tokens"]["access_token"]
    assert account.credentials.refresh_token == doc["tokens"]["refresh_token"]
    assert account.credentials.account_id == "acct-pro1"
    assert account.status is Status.ACTIVE
    assert_no_secret(auth_files, result.out, result.err)


def test_import_replace_updates_the_login_and_ends_reauth(
    cli: Cli, state_path: Path, auth_files: AuthFiles, write_auth: WriteAuth
) -> None:
    path, _ = auth_files["plus1"]
    assert cli("import", path, "--name", "work").code == 0

    def needs_login(state: State) -> None:
        state.accounts[0].status = Status.REAUTH_REQUIRED

    StateFile(state_path).edit(needs_login)
    fresh = make_auth_json("acct-plus1", "pro", email="plus1@example.com")
    result = cli("import", write_auth(fresh), "--name", "work", "--replace")
    assert result.code == 0, result.err
    assert "updated" in result.out
    state = StateFile(state_path).read()
    assert state is not None
    [account] = state.accounts
    assert account.credentials.access_token == fresh["tokens"]["access_token"]
    assert (account.plan, account.status) == (Plan.PRO, Status.ACTIVE)


def test_import_replace_refuses_a_login_older_than_the_pools(
    cli: Cli, state_path: Path, write_auth: WriteAuth
) -> None:
    """The proxy refreshed the account since: the old auth.json's refresh token is spent, and
    putting it back would make the account need a new login at its next refresh."""
    now = int(time.time())
    original = make_auth_json("acct-a", "plus", email="a@example.com", exp=now + 3600)
    assert cli("import", write_auth(original), "--name", "a").code == 0
    refreshed = make_auth_json("acct-a", "plus", email="a@example.com", exp=now + 7200)

    def proxy_refreshed(state: State) -> None:
        tokens = refreshed["tokens"]
        state.accounts[0].credentials = state.accounts[0].credentials.model_copy(
            update={
                "access_token": tokens["access_token"],
                "refresh_token": tokens["refresh_token"],
                "expires_at": now + 7200,
            }
        )

    StateFile(state_path).edit(proxy_refreshed)
    before = state_path.read_bytes()
    result = cli("import", write_auth(original), "--name", "a", "--replace")
    assert result.code == 1
    assert "already holds newer tokens for this login" in result.err
    assert "codex login" in result.err
    assert state_path.read_bytes() == before
    # A newer login (a fresh `codex login`) is taken.
    newer = make_auth_json("acct-a", "plus", email="a@example.com", exp=now + 10800)
    assert cli("import", write_auth(newer), "--name", "a", "--replace").code == 0


# -- status ----------------------------------------------------------------------------------


def test_status_without_a_state_file_explains_how_to_start(cli: Cli, state_path: Path) -> None:
    result = cli("status")
    assert result.code == 0 and "import" in result.out
    assert not state_path.exists()
    assert json.loads(cli("status", "--json").out) == {"accounts": []}


def test_status_lists_accounts_without_secrets(cli: Cli, auth_files: AuthFiles) -> None:
    for name, (path, _) in auth_files.items():
        assert cli("import", path, "--name", name).code == 0
    result = cli("status")
    assert result.code == 0 and result.err == ""
    for name in auth_files:
        assert name in result.out
    assert "\x1b[" not in result.out  # not a terminal: no colour
    assert_no_secret(auth_files, result.out)


def test_status_json_has_the_documented_keys_and_types(
    cli: Cli, state_path: Path, auth_files: AuthFiles
) -> None:
    for name, (path, _) in auth_files.items():
        assert cli("import", path, "--name", name).code == 0
    t = int(time.time())

    def usage(state: State) -> None:
        pro = state.by_name("pro1")
        assert pro is not None
        pro.primary = Window(used_percent=30, window_minutes=300, reset_at=t + 3600, observed_at=t)
        pro.secondary = Window(used_percent=61.5, reset_at=t + 86400, observed_at=t)
        pro.requests, pro.last_used_at = 12, t - 5

    StateFile(state_path).edit(usage)
    result = cli("status", "--json")
    rows = json.loads(result.out)["accounts"]
    assert [r["name"] for r in rows] == ["pro1", "plus1", "plus2"]
    for row in rows:
        assert set(row) >= JSON_KEYS
        assert tuple(row) == ROW_FIELDS  # the dashboard's /api/status rows: the same fields
        for key in ("primary_used_percent", "secondary_used_percent"):
            assert row[key] is None or type(row[key]) is float
        for key in ("primary_reset_at", "secondary_reset_at", "last_used_at"):
            assert row[key] is None or type(row[key]) is int
        assert type(row["requests"]) is int
    pro = rows[0]
    assert (pro["plan"], pro["status"], pro["requests"]) == ("pro", "active", 12)
    assert (pro["primary_used_percent"], pro["primary_reset_at"]) == (30.0, t + 3600)
    assert (pro["secondary_used_percent"], pro["secondary_reset_at"]) == (61.5, t + 86400)
    assert pro["last_used_at"] == t - 5
    plus = rows[1]
    assert (plus["primary_used_percent"], plus["primary_reset_at"], plus["last_used_at"]) == (
        None,
        None,
        None,
    )
    assert_no_secret(auth_files, result.out)


# -- pause / resume / remove -----------------------------------------------------------------


def test_pause_resume_and_remove(cli: Cli, auth_files: AuthFiles) -> None:
    for name, (path, _) in auth_files.items():
        assert cli("import", path, "--name", name).code == 0
    result = cli("pause", "plus1")
    assert result.code == 0 and "plus1" in result.out
    assert status_json(cli)["plus1"]["status"] == "paused"
    result = cli("resume", "plus1")
    assert result.code == 0
    assert status_json(cli)["plus1"]["status"] == "active"
    result = cli("remove", "plus2")
    assert result.code == 0 and "plus2" in result.out
    assert set(status_json(cli)) == {"pro1", "plus1"}


def test_a_removed_account_is_gone_from_the_file(
    cli: Cli, state_path: Path, auth_files: AuthFiles
) -> None:
    path, doc = auth_files["pro1"]
    assert cli("import", path, "--name", "work").code == 0
    assert cli("remove", "work").code == 0
    text = state_path.read_text()
    assert "work" not in text and doc["tokens"]["refresh_token"] not in text


# -- mistakes: non-zero, one line, no traceback, the file untouched --------------------------


def prepare(cli: Cli, auth_files: AuthFiles) -> None:
    for name in ("pro1", "plus1"):
        assert cli("import", auth_files[name][0], "--name", name).code == 0
    assert cli("pause", "plus1").code == 0


# Each wrong command line; `{name}` stands for the path of an input from `bad_inputs`.
MISTAKES: dict[str, list[str]] = {
    "pause unknown": ["pause", "ghost"],
    "resume unknown": ["resume", "ghost"],
    "remove unknown": ["remove", "ghost"],
    "duplicate name": ["import", "{plus2}", "--name", "pro1"],
    "same login twice": ["import", "{pro1}", "--name", "again"],
    "replace unknown": ["import", "{plus2}", "--name", "ghost", "--replace"],
    "missing file": ["import", "{missing}", "--name", "x"],
    "directory": ["import", "{directory}", "--name", "x"],
    "not json": ["import", "{not_json}", "--name", "x"],
    "not codex": ["import", "{not_codex}", "--name", "x"],
    "api key": ["import", "{api_key}", "--name", "x"],
    "no refresh token": ["import", "{no_refresh}", "--name", "x"],
    "bad name space": ["import", "{plus2}", "--name", "my account"],
    "bad name dash": ["import", "{plus2}", "--name=-x"],
    "bad name empty": ["import", "{plus2}", "--name", ""],
    "bad name long": ["import", "{plus2}", "--name", "x" * 65],
    "unknown command": ["frobnicate"],
    "no command": [],
    "missing argument": ["pause"],
    "missing --name": ["import", "{plus2}"],
    "unknown option": ["status", "--yaml"],
    "resume needs login": ["resume", "reauth"],
}


@pytest.fixture
def bad_inputs(write_auth: WriteAuth, tmp_path: Path, auth_files: AuthFiles) -> dict[str, str]:
    doc = make_auth_json("acct-norefresh")
    doc["tokens"]["refresh_token"] = ""
    (tmp_path / "a-directory").mkdir()
    paths = {
        **{name: path for name, (path, _) in auth_files.items()},
        "missing": tmp_path / "nope.json",
        "directory": tmp_path / "a-directory",
        "not_json": write_auth("{'tokens': 'single quotes'}"),
        "not_codex": write_auth({"hello": "world"}),
        "api_key": write_auth({"OPENAI_API_KEY": "sk-proj-0123456789abcdef", "tokens": None}),
        "no_refresh": write_auth(doc),
    }
    return {name: str(path) for name, path in paths.items()}


def add_reauth_account(state: State) -> None:
    credentials = state.accounts[0].credentials.model_copy(update={"account_id": "acct-x"})
    state.accounts.append(
        Account(name="reauth", credentials=credentials, status=Status.REAUTH_REQUIRED)
    )


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_exits_non_zero_with_one_line_and_changes_nothing(
    cli: Cli, state_path: Path, auth_files: AuthFiles, bad_inputs: dict[str, str], case: str
) -> None:
    prepare(cli, auth_files)
    StateFile(state_path).edit(add_reauth_account)
    before = state_path.read_bytes()
    result = cli(*(arg.format(**bad_inputs) for arg in MISTAKES[case]))
    assert result.code != 0
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].strip() and "Traceback" not in result.err
    assert state_path.read_bytes() == before
    assert "sk-proj" not in result.err
    assert_no_secret(auth_files, result.err)


def test_commands_on_a_missing_state_file_fail_without_creating_it(
    cli: Cli, state_path: Path
) -> None:
    for command in (["pause", "x"], ["resume", "x"], ["remove", "x"]):
        result = cli(*command)
        assert result.code == 1 and len(result.err.splitlines()) == 1
        assert "import" in result.err
    assert not state_path.exists()


def test_a_failed_import_into_a_missing_state_file_creates_nothing(
    cli: Cli, state_path: Path, auth_files: AuthFiles
) -> None:
    result = cli("import", auth_files["pro1"][0], "--name", "bad name")
    assert result.code == 1 and len(result.err.splitlines()) == 1
    assert not state_path.exists()


@pytest.mark.parametrize(
    "command", [["status"], ["status", "--json"], ["pause", "a"], ["remove", "a"]]
)
def test_a_corrupt_state_file_is_one_line_and_left_alone(
    cli: Cli, state_path: Path, command: list[str]
) -> None:
    state_path.parent.mkdir(parents=True)
    state_path.write_bytes(b"[[accounts]\nname = 'a'\n")
    result = cli(*command)
    assert result.code == 1
    assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err
    assert str(state_path) in result.err and "line" in result.err
    assert state_path.read_bytes() == b"[[accounts]\nname = 'a'\n"


# -- paths: a home that cannot be found, files that are not regular ones ---------------------

NO_USER = "~nosuchuser-quota-router"
NO_HOME = "cannot expand '{}' (no such user, or no home directory)"


@pytest.mark.parametrize(
    "args",
    [
        ["--state", f"{NO_USER}/router-state.toml", "status"],
        ["import", f"{NO_USER}/auth.json", "--name", "x"],
        ["client-auth", f"{NO_USER}/auth.json"],
    ],
)
def test_a_path_in_an_unknown_users_home_is_named(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 1 and result.out == ""
    assert result.err == f"error: {args[1]}: {NO_HOME.format(NO_USER)}\n"


def test_the_default_state_path_without_a_home_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # a user without a passwd entry
    assert main(["status"]) == 1
    expected = f"error: ~/.mitmproxy/router-state.toml: {NO_HOME.format('~')}\n"
    assert capsys.readouterr().err == expected


def without_blocking(fifo: Path, call: Callable[[], Result]) -> Result:
    """`call()`, failing the test (instead of hanging it) if it waits for a writer on `fifo`."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(call)
        try:
            return running.result(timeout=10)
        finally:
            if not running.done():  # stuck in open(): a writer frees it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_client_auth_refuses_a_named_pipe_at_once(
    cli: Cli, tmp_path: Path, force: list[str]
) -> None:
    fifo = tmp_path / "codex" / "auth.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    result = without_blocking(fifo, lambda: cli("client-auth", fifo, *force))
    assert result.code == 1
    assert result.err == (
        f"error: {fifo}: is a named pipe (FIFO); give the path of the auth.json to write\n"
    )
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.listdir(fifo.parent) == ["auth.json"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_client_auth_onto_a_directory_is_refused_and_leaves_nothing(
    cli: Cli, tmp_path: Path, force: list[str]
) -> None:
    directory = tmp_path / "out" / "codex"
    directory.mkdir(parents=True)
    (directory / "keep.txt").write_text("mine")
    result = cli("client-auth", directory, *force)
    assert result.code == 1
    assert result.err == (
        f"error: {directory}: is a directory; give the path of the auth.json to write\n"
    )
    left = sorted(str(p.relative_to(directory.parent)) for p in directory.parent.rglob("*"))
    assert left == ["codex", "codex/keep.txt"]  # no stray temporary file
    assert (directory / "keep.txt").read_text() == "mine"


NOT_IMPORTABLE = "a file `import` does not accept: "


@pytest.mark.parametrize(
    ("content", "description"),
    [
        (
            {"OPENAI_API_KEY": "sk-proj-0123456789abcdef", "tokens": None},
            "an API-key login, which `import` cannot keep: copy it elsewhere first",
        ),
        ({}, NOT_IMPORTABLE + 'not a Codex auth.json (no "tokens" object)'),
        (
            {"tokens": ["eyJ-secret-access", "rt_secret_refresh_0123456789"]},
            NOT_IMPORTABLE + 'not a Codex auth.json (no "tokens" object)',
        ),
        (
            {"tokens": {"access_token": "eyJ-secret-access"}},
            NOT_IMPORTABLE + 'no refresh token in "tokens" (log in again with codex)',
        ),
        (
            "{not json",
            NOT_IMPORTABLE + "not JSON (Expecting property name enclosed in double "
            "quotes at line 1, column 2)",
        ),
    ],
)
def test_client_auth_says_what_the_file_it_will_not_replace_is(
    cli: Cli, write_auth: WriteAuth, content: Any, description: str
) -> None:
    path = write_auth(content)
    before = path.read_bytes()
    result = cli("client-auth", path)
    assert result.code == 1
    assert result.err == (
        f"error: {path} exists already ({description}); add --force to replace it\n"
    )
    assert path.read_bytes() == before
    for secret in ("sk-proj", "secret"):
        assert secret not in result.err


# -- the entry point -------------------------------------------------------------------------


def run_module(*args: str | Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "addon", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_addon_runs_the_cli(
    tmp_path: Path, state_path: Path, auth_files: AuthFiles, cli: Cli
) -> None:
    assert cli("import", auth_files["pro1"][0], "--name", "work").code == 0
    before = state_path.read_bytes()
    done = run_module("--state", state_path, "status", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)["accounts"]
    assert (row["name"], row["plan"]) == ("work", "pro")
    failed = run_module("--state", state_path, "pause", "ghost", home=tmp_path)
    assert failed.returncode == 1
    assert len(failed.stderr.splitlines()) == 1 and "ghost" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert state_path.read_bytes() == before
    assert_no_secret(auth_files, done.stdout, done.stderr, failed.stderr)
