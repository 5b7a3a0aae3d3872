"""cli.py: `set`, `rename`, `client-auth` and `status --watch`, and their mistakes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from addon import placeholder
from addon.statefile import StateFile
from addon.tokens import jwt_claims

if TYPE_CHECKING:
    from conftest import AuthFiles, Cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pooled(cli: Cli, auth_files: AuthFiles) -> Cli:
    for name in ("pro1", "plus1"):
        assert cli("import", auth_files[name][0], "--name", name).code == 0
    return cli


def test_set_changes_priority_and_caps(pooled: Cli, state_path: Path) -> None:
    result = pooled("set", "plus1", "--priority", "2", "--max-primary", "80")
    assert result.code == 0
    assert result.out.strip() == "plus1: priority 2, caps 5h 80% / week 100%"
    state = StateFile(state_path).read()
    assert state is not None
    account = state.by_name("plus1")
    assert account is not None
    assert (account.priority, account.max_primary_percent) == (2, 80.0)
    assert account.max_secondary_percent == 100.0  # untouched
    row = json.loads(pooled("status", "--json").out)["accounts"][1]
    assert (row["priority"], row["max_primary_percent"]) == (2, 80.0)


def test_set_moves_fill_firsts_next_pick_to_the_best_tier(pooled: Cli) -> None:
    def next_pick() -> str:
        rows = json.loads(pooled("status", "--json").out)["accounts"]
        return next(r["name"] for r in rows if r["next_pick"])

    assert next_pick() == "plus1"  # equal (unknown) usage: by name
    assert pooled("set", "plus1", "--priority", "1").code == 0
    assert next_pick() == "pro1"


def test_rename_keeps_the_account(pooled: Cli, state_path: Path) -> None:
    before = StateFile(state_path).read()
    assert before is not None
    old = before.by_name("plus1")
    assert pooled("rename", "plus1", "spare").code == 0
    after = StateFile(state_path).read()
    assert after is not None
    renamed = after.by_name("spare")
    assert after.by_name("plus1") is None and renamed is not None and old is not None
    assert renamed.id == old.id and renamed.credentials == old.credentials


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "ghost", "--priority", "1"], "no account named 'ghost'"),
        (["set", "pro1"], "nothing to change"),
        (["set", "pro1", "--max-primary", "150"], "less than or equal to 100"),
        (["set", "pro1", "--max-secondary", "-1"], "greater than or equal to 0"),
        (["set", "pro1", "--max-primary", "nan"], "max_primary_percent"),
        (["set", "pro1", "--priority", "one"], "invalid int value"),
        (["set", "pro1", "--priority", "5000"], "less than or equal to 1000"),
        (["rename", "pro1", "plus1"], "exists already"),
        (["rename", "ghost", "x"], "no account named 'ghost'"),
        (["rename", "pro1", "two words"], "bad account name"),
        (["rename", "pro1"], "required"),
    ],
)
def test_steering_mistakes_change_nothing(
    pooled: Cli, state_path: Path, args: list[str], message: str
) -> None:
    before = state_path.read_bytes()
    result = pooled(*args)
    assert result.code != 0
    assert result.out == ""
    assert len(result.err.splitlines()) == 1 and message in result.err
    assert state_path.read_bytes() == before


def test_client_auth_writes_a_placeholder_login(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "codex" / "auth.json"
    result = cli("client-auth", out)
    assert result.code == 0 and str(out) in result.out
    assert out.stat().st_mode & 0o777 == 0o600
    doc = json.loads(out.read_text())
    tokens = doc["tokens"]
    assert doc["OPENAI_API_KEY"] is None
    assert placeholder.is_placeholder(tokens["refresh_token"])
    claims = jwt_claims(tokens["access_token"])
    assert claims["exp"] > time.time() + 5 * 365 * 86400
    auth = claims["https://api.openai.com/auth"]
    assert auth["chatgpt_account_id"] == tokens["account_id"]
    assert tokens["account_id"].startswith("quota-router-")


def test_client_auth_never_overwrites_a_real_login_by_accident(
    cli: Cli, auth_files: AuthFiles
) -> None:
    path, _ = auth_files["pro1"]
    before = path.read_bytes()
    result = cli("client-auth", path)
    assert result.code == 1
    assert "a real Codex login" in result.err and "--force" in result.err
    assert path.read_bytes() == before
    assert cli("client-auth", path, "--force").code == 0
    refresh = json.loads(path.read_text())["tokens"]["refresh_token"]
    assert placeholder.is_placeholder(refresh)


def test_status_watch_redraws_until_interrupted(pooled: Cli, state_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "addon", "--state", str(state_path), "status", "--watch"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)  # the table is redrawn every 2 s
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.count("\x1b[H\x1b[J") >= 2  # drawn in place, more than once
    assert out.count("pro1") >= 2 and "Traceback" not in err
