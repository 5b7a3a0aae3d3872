"""Every wrong CLI command line, run as the user runs it (`python -m addon`): exit status not 0,
exactly one clear line on stderr, no traceback, nothing on stdout, no token, and the state
directory byte for byte as it was (files, contents, modes; no new file).

tests/unit/test_cli.py covers the common mistakes in-process; this adds bad numbers for `set`,
`rename`, hostile auth.json files, broken state paths, `client-auth`, and checks them through
the real entry point and the whole directory.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from addon.state import Status
from addon.statefile import StateFile
from tests.e2e.harness import REPO_ROOT
from tests.fakes.jwt import make_auth_json
from tests.faults._support import secrets_in


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    before: dict[str, tuple[bytes, int]]
    after: dict[str, tuple[bytes, int]]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    found = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            content = os.readlink(path).encode()
        else:
            content = b"" if path.is_dir() else path.read_bytes()
        found[key] = (content, mode)
    return found


def auth_doc(account: str, **tokens: str) -> str:
    doc = make_auth_json(account)
    doc["tokens"].update(tokens)
    return json.dumps(doc)


# name -> (arguments, where the state file is: "ok", "missing", "dir", "under_file")
# `{X}` in an argument is the path of input file X, `{dir}` the case's directory.
CASES: dict[str, tuple[list[str], str]] = {
    "set unknown account": (["set", "ghost", "--priority", "1"], "ok"),
    "set priority not a number": (["set", "a", "--priority", "abc"], "ok"),
    "set priority float": (["set", "a", "--priority", "1.5"], "ok"),
    "set priority too big": (["set", "a", "--priority", "5000"], "ok"),
    "set priority huge": (["set", "a", "--priority", "9" * 30], "ok"),
    "set priority too small": (["set", "a", "--priority", "-5000"], "ok"),
    "set max-primary nan": (["set", "a", "--max-primary", "nan"], "ok"),
    "set max-primary inf": (["set", "a", "--max-primary", "inf"], "ok"),
    "set max-primary overflow": (["set", "a", "--max-primary", "1e999"], "ok"),
    "set max-primary negative": (["set", "a", "--max-primary", "-1"], "ok"),
    "set max-primary over 100": (["set", "a", "--max-primary", "100.5"], "ok"),
    "set max-secondary not a number": (["set", "a", "--max-secondary", "ten"], "ok"),
    "set max-secondary percent sign": (["set", "a", "--max-secondary", "80%"], "ok"),
    "set nothing to change": (["set", "a"], "ok"),
    "set without a name": (["set"], "ok"),
    "rename unknown": (["rename", "ghost", "x"], "ok"),
    "rename onto another account": (["rename", "a", "b"], "ok"),
    "rename to a bad name": (["rename", "a", "bad name!"], "ok"),
    "rename to an empty name": (["rename", "a", ""], "ok"),
    "rename without the new name": (["rename", "a"], "ok"),
    "resume an account that needs a login": (["resume", "b"], "ok"),
    "import a token with CR LF": (["import", "{crlf}", "--name", "c"], "ok"),
    "import a token with a lone surrogate": (["import", "{surrogate}", "--name", "c"], "ok"),
    "import a token with spaces": (["import", "{spaces}", "--name", "c"], "ok"),
    "import an account id with CR LF": (["import", "{id_crlf}", "--name", "c"], "ok"),
    "import an empty file": (["import", "{empty}", "--name", "c"], "ok"),
    "import binary garbage": (["import", "{binary}", "--name", "c"], "ok"),
    "import JSON with NaN tokens": (["import", "{nan}", "--name", "c"], "ok"),
    "import absurdly nested JSON": (["import", "{deep}", "--name", "c"], "ok"),
    "import a dangling symlink": (["import", "{dangling}", "--name", "c"], "ok"),
    "import into a missing state file, bad input": (["import", "{crlf}", "--name", "c"], "missing"),
    "pause with a directory as the state file": (["pause", "a"], "dir"),
    "status with a directory as the state file": (["status"], "dir"),
    "import with a file as the state directory": (
        ["import", "{good}", "--name", "c"],
        "under_file",
    ),
    "status --json with a file as the state directory": (["status", "--json"], "under_file"),
    "client-auth over an existing file": (["client-auth", "{good}"], "ok"),
    "client-auth under a file": (["client-auth", "{good}/client.json"], "ok"),
    "client-auth --force onto a directory": (["client-auth", "{adir}", "--force"], "ok"),
    "client-auth in an unknown user's home": (["client-auth", "~nosuchuser-qr/a.json"], "ok"),
    "state in an unknown user's home": (["--state", "~nosuchuser-qr/s.toml", "status"], "ok"),
    "import an auth.json over 1 MiB": (["import", "{big}", "--name", "c"], "ok"),
    "state option without a value": (["--state"], "ok"),
    "unknown command after a good state": (["frobnicate", "a"], "ok"),
}


def prepare(base: Path) -> list[str]:
    """A state with a (active) and b (needs a login), and every input file; returns the
    tokens they hold."""
    state = base / "state" / "router-state.toml"
    inputs = base / "inputs"
    inputs.mkdir(parents=True)
    for name in ("a", "b"):
        (inputs / f"{name}.json").write_text(json.dumps(make_auth_json(f"acct-{name}")))
        done = run(["--state", str(state), "import", str(inputs / f"{name}.json"), "--name", name])
        assert done.returncode == 0, done.stderr

    def needs_login(s: object) -> None:
        s.accounts[1].status = Status.REAUTH_REQUIRED  # type: ignore[attr-defined]

    StateFile(state).edit(needs_login)
    files = {
        "good": auth_doc("acct-c"),
        "crlf": auth_doc("acct-c", refresh_token="rt_x\r\nX-Injected: 1"),
        "surrogate": auth_doc("acct-c", access_token="eyJ\ud800"),
        "spaces": auth_doc("acct-c", access_token="eyJ abc def"),
        "id_crlf": auth_doc("acct-c", account_id="acct-c\r\nX-Injected: 1"),
        "empty": "",
        "nan": '{"tokens": {"access_token": NaN, "refresh_token": Infinity}}',
        "deep": "[" * 100_000 + "]" * 100_000,
        "big": json.dumps(make_auth_json("acct-big") | {"padding": "x" * (2 << 20)}),
    }
    for name, text in files.items():
        (inputs / f"{name}.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    (inputs / "binary.json").write_bytes(bytes(range(256)) * 4)
    (inputs / "dangling.json").symlink_to(inputs / "nowhere.json")
    (inputs / "adir").mkdir()
    (inputs / "adir" / "kept.txt").write_text("kept")
    secrets = ["X-Injected", "eyJ abc def"]
    for name in ("a", "b", "good", "crlf", "id_crlf", "big"):
        tokens = json.loads((inputs / f"{name}.json").read_text())["tokens"]
        secrets += [v for k, v in tokens.items() if k != "account_id"]
    return secrets


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )


def run_case(base: Path, name: str) -> Outcome:
    args, where = CASES[name]
    case = Path(tempfile.mkdtemp(prefix="cli-case-", dir=base.parent))
    shutil.copytree(base, case, dirs_exist_ok=True, symlinks=True)
    state = case / "state" / "router-state.toml"
    if where == "missing":
        state.unlink()
        (case / "state" / "router-state.toml.lock").unlink()
    elif where == "dir":
        state.unlink()
        state.mkdir()
    elif where == "under_file":
        state = case / "inputs" / "good.json" / "router-state.toml"
    inputs = {p.stem: str(p) for p in (case / "inputs").iterdir()}
    argv = [a.format(dir=case, **inputs) for a in args]
    if argv[:1] != ["--state"]:
        argv = ["--state", str(state), *argv]
    before = snapshot(case)
    done = run(argv)
    return Outcome(done.returncode, done.stdout, done.stderr, before, snapshot(case))


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Outcome], list[str]]]:
    """All cases, run side by side (each in its own copy of the directory)."""
    base = tmp_path_factory.mktemp("cli-errors") / "base"
    secrets = prepare(base)
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(CASES, pool.map(lambda n: run_case(base, n), CASES), strict=True))
    yield results, secrets


@pytest.mark.parametrize("name", list(CASES))
def test_a_wrong_command_line_is_one_clear_line_and_changes_nothing(
    outcomes: tuple[dict[str, Outcome], list[str]], name: str
) -> None:
    results, secrets = outcomes
    outcome = results[name]
    assert outcome.code != 0, outcome.out
    assert "Traceback" not in outcome.err, outcome.err
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.err
    assert "error" in lines[0]
    assert outcome.out == ""
    assert outcome.after == outcome.before  # same files, same bytes, same modes
    assert secrets_in(outcome.err, secrets) == []


def test_client_auth_that_cannot_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "codex" / "auth.json"

    def tiny_files() -> None:  # a write past 64 bytes fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    state = tmp_path / "s.toml"
    done = subprocess.run(
        [sys.executable, "-m", "addon", "--state", str(state), "client-auth", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        preexec_fn=tiny_files,
    )
    assert done.returncode == 1
    assert done.stderr == f"error: {out}: cannot write: File too large\n"
    assert os.listdir(out.parent) == []
