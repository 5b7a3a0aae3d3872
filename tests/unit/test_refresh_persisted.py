"""refresh.refresh_persisted: what a refresh under the lock says when it cannot take it."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon import statefile
from addon.refresh import RefreshFailed, refresh_persisted
from addon.state import Account, Credentials
from addon.statefile import StateFile


def test_a_busy_lock_is_a_plain_transient_failure_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer (or this proxy's refresh of another account, waiting on a slow token
    endpoint) holds the lock: the refresh is not tried, and the reason says why."""
    path = tmp_path / "state.toml"
    credentials = Credentials(access_token="at", refresh_token="rt", account_id="acct-a")
    account = Account(name="a", credentials=credentials)
    StateFile(path).edit(lambda state: state.accounts.append(account))
    monkeypatch.setattr(statefile, "LOCK_TIMEOUT", 0.05)
    with StateFile(path).locked():
        result, persisted = refresh_persisted(
            StateFile(path), account.id, credentials, "http://127.0.0.1:9/never"
        )
    assert isinstance(result, RefreshFailed) and not result.permanent and not persisted
    assert result.reason.startswith("token refresh not tried: ")
    assert "lock has been held elsewhere" in result.reason
