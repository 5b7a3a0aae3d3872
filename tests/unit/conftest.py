"""Shared fixtures for the unit tests of the pure core (no mitmproxy, no network)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from addon.cli import main
from addon.state import Account, Block, Credentials, Plan, Status, Window
from tests.fakes.jwt import make_access_token, make_auth_json

# A fixed "now" for everything that takes a clock: 2027-01-15, far from any epoch edge.
NOW = 1_800_000_000.0


class AccountFactory(Protocol):
    def __call__(
        self,
        name: str = ...,
        *,
        plan: Plan = ...,
        primary: float | None = ...,
        secondary: float | None = ...,
        primary_reset_at: int | None = ...,
        secondary_reset_at: int | None = ...,
        observed_at: float = ...,
        status: Status = ...,
        status_reason: str = ...,
        block_until: int | None = ...,
        priority: int = ...,
        max_primary_percent: float = ...,
        max_secondary_percent: float = ...,
        requests: int = ...,
    ) -> Account: ...


def scanned(obj: object) -> bool:
    """Whether the garbage collector's collections still look at `obj` (not settled)."""
    return any(o is obj for o in gc.get_objects())


def build_account(
    name: str = "work",
    *,
    plan: Plan = Plan.PLUS,
    primary: float | None = None,
    secondary: float | None = None,
    primary_reset_at: int | None = int(NOW) + 3600,
    secondary_reset_at: int | None = int(NOW) + 5 * 86400,
    observed_at: float = NOW - 10,
    status: Status = Status.ACTIVE,
    status_reason: str = "",
    block_until: int | None = None,
    priority: int = 0,
    max_primary_percent: float = 100.0,
    max_secondary_percent: float = 100.0,
    requests: int = 0,
) -> Account:
    """An account with the given usage; `None` usage means the upstream never reported it."""
    return Account(
        name=name,
        plan=plan,
        email=f"{name}@example.com",
        credentials=Credentials(
            access_token=make_access_token(f"acct-{name}", plan.value),
            refresh_token=f"rt_secret_refresh_{name}_0123456789",
            account_id=f"acct-{name}",
        ),
        status=status,
        status_reason=status_reason,
        priority=priority,
        max_primary_percent=max_primary_percent,
        max_secondary_percent=max_secondary_percent,
        primary=None
        if primary is None
        else Window(
            used_percent=primary,
            window_minutes=300,
            reset_at=primary_reset_at,
            observed_at=observed_at,
        ),
        secondary=None
        if secondary is None
        else Window(
            used_percent=secondary,
            window_minutes=10080,
            reset_at=secondary_reset_at,
            observed_at=observed_at,
        ),
        block=None
        if block_until is None
        else Block(until=block_until, reason="usage_limit_reached", observed_at=observed_at),
        requests=requests,
    )


@pytest.fixture
def now() -> float:
    """The clock every test passes to the core; `make_account`'s defaults are relative to it."""
    return NOW


@pytest.fixture
def make_account() -> AccountFactory:
    """Factory for `Account`s with usage windows, a block, a status, caps and a priority."""
    return build_account


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    """Where the state file goes (not created)."""
    return tmp_path / "conf" / "router-state.toml"


WriteAuth = Callable[..., Path]


@pytest.fixture
def write_auth(tmp_path: Path) -> WriteAuth:
    """Writes a JSON document (or raw text/bytes) to a fresh auth.json and returns its path."""
    counter = iter(range(10**6))

    def write(content: Any, name: str | None = None) -> Path:
        path = tmp_path / "auth" / (name or f"auth-{next(counter)}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return path

    return write


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]
AuthFiles = dict[str, tuple[Path, dict[str, Any]]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], state_path: Path) -> Cli:
    """Runs the CLI's `main([...])` against the test's state file: code, stdout, stderr."""

    def run(*args: str | Path) -> Result:
        try:
            code = main(["--state", str(state_path), *map(str, args)])
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def auth_files(write_auth: WriteAuth) -> AuthFiles:
    """Three Codex logins: name -> (path of its auth.json, the document)."""
    files: AuthFiles = {}
    for name, plan in (("pro1", "pro"), ("plus1", "plus"), ("plus2", "plus")):
        doc = make_auth_json(f"acct-{name}", plan, email=f"{name}@example.com")
        files[name] = (write_auth(doc, f"{name}.json"), doc)
    return files
