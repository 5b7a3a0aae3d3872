"""Refreshing a pooled account's tokens at the OAuth endpoint.

Refresh tokens rotate and work once, so: at most one refresh per account at a time (callers
that arrive meanwhile wait for the same result), and the caller persists the new pair before
using it. The HTTP call runs in a worker thread; the event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from addon.state import Credentials, Plan
from addon.statefile import StateFile, StateFileError
from addon.tokens import auth_claims, jwt_claims, token_expiry

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_URL = "https://auth.openai.com/oauth/token"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"  # the Codex CLI's public OAuth client id
# Refresh this long before `exp`, like the Codex CLI does.
MARGIN_SECONDS = 300
# Until the token has only this long left, a refresh runs in the background and the old token
# serves meanwhile: a slow or failing token endpoint costs the turns nothing until then.
WAIT_SECONDS = 60
# After a refresh failed for a reason that may pass, the next one waits this long.
RETRY_AHEAD_SECONDS = 30
# Requests wait this long at most for a refresh's answer, and the refresh goes on without them:
# the token endpoint may rotate the refresh token and answer late, and that answer, the only
# copy of the new pair, must still be stored.
WAIT_FOR_ANSWER_SECONDS = 10.0
TIMEOUT_SECONDS = 60.0  # per socket operation; the account's refresh lock is held meanwhile

# Tokens travel in HTTP headers: printable ASCII without spaces only.
_TOKEN = re.compile(r"[!-~]{1,16384}")

# Answers that mean "log in again": retrying can never help.
PERMANENT_CODES = frozenset(
    {
        "refresh_token_expired",
        "refresh_token_reused",
        "refresh_token_invalidated",
        "invalid_grant",
        "token_invalidated",
        "token_expired",
        "app_session_terminated",
        "account_session_expired",
        "account_deactivated",
        "account_suspended",
        "account_deleted",
    }
)


@dataclass(frozen=True, slots=True)
class Refreshed:
    credentials: Credentials
    plan: Plan | None
    email: str | None
    fetched: bool = True  # False: taken from the file (refreshed or imported elsewhere)


@dataclass(frozen=True, slots=True)
class RefreshFailed:
    permanent: bool
    reason: str  # never contains a token


def needs_refresh(credentials: Credentials, now: float, margin: float = MARGIN_SECONDS) -> bool:
    expires = credentials.expires_at
    return expires is not None and expires - now < margin and bool(credentials.refresh_token)


def must_wait(credentials: Credentials, now: float) -> bool:
    """Whether a request needing a refresh of these credentials must wait for it."""
    expires = credentials.expires_at
    return expires is None or expires - now <= WAIT_SECONDS


def request_body(refresh_token: str) -> bytes:
    return json.dumps(
        {
            "client_id": CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "scope": "openid profile email",
        }
    ).encode()


def error_code(body: bytes) -> str:
    """The error code of an OAuth error reply, in any of the shapes seen."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, dict):
        for key in ("code", "type"):
            if isinstance(error.get(key), str):
                return str(error[key])[:80]
    if isinstance(error, str):
        return error[:80]
    code = data.get("code")
    return code[:80] if isinstance(code, str) else ""


def classify(status: int, body: bytes) -> RefreshFailed:
    code = error_code(body)
    if code in PERMANENT_CODES:
        return RefreshFailed(True, f"token refresh refused: {code}")
    if status in (400, 401, 403):
        return RefreshFailed(True, f"token refresh refused (HTTP {status} {code})".strip())
    return RefreshFailed(False, f"token refresh failed (HTTP {status} {code})".strip())


def parse_success(body: bytes, old: Credentials, now: float) -> Refreshed | RefreshFailed:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return RefreshFailed(False, "token refresh answered something that is not JSON")
    access = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(access, str) or not _TOKEN.fullmatch(access):
        return RefreshFailed(False, "token refresh answered without a usable access token")
    refresh = data.get("refresh_token")
    refresh = refresh if isinstance(refresh, str) and _TOKEN.fullmatch(refresh) else None
    id_token = data.get("id_token")
    id_token = id_token if isinstance(id_token, str) and _TOKEN.fullmatch(id_token) else None
    id_token = id_token or old.id_token
    claims = auth_claims(id_token) or auth_claims(access)
    try:
        credentials = Credentials(
            access_token=access,
            refresh_token=refresh or old.refresh_token,
            id_token=id_token,
            account_id=old.account_id or str(claims.get("chatgpt_account_id") or ""),
            expires_at=token_expiry(access),
            updated_at=now,
        )
    except ValueError:  # pydantic refused a field: never use half-valid tokens
        return RefreshFailed(False, "token refresh answered tokens that cannot be stored")
    plan = Plan.parse(claims["chatgpt_plan_type"]) if "chatgpt_plan_type" in claims else None
    email = jwt_claims(id_token).get("email")
    return Refreshed(credentials, plan, email if isinstance(email, str) else None)


def post_refresh(
    url: str, credentials: Credentials, verify: bool = True
) -> Refreshed | RefreshFailed:
    """The blocking HTTP call (run it in a thread)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        url,
        data=request_body(credentials.refresh_token),
        headers={"content-type": "application/json", "accept": "application/json"},
        method="POST",
    )
    # No proxy: the proxy must not send its own refresh through itself.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as reply:
            return parse_success(reply.read(1024 * 1024), credentials, time.time())
    except urllib.error.HTTPError as e:
        try:
            return classify(e.code, e.read(64 * 1024) if e.fp else b"")
        except (OSError, ValueError, RecursionError):
            return RefreshFailed(False, f"token refresh failed (HTTP {e.code})")
    except (OSError, ValueError, TypeError, RecursionError) as e:
        # Timeouts, refused connections, TLS errors, answers that are not what they claim.
        return RefreshFailed(False, f"token refresh failed: {e.__class__.__name__}")


def refresh_persisted(
    file: StateFile, account_id: str, credentials: Credentials, url: str, verify: bool = True
) -> tuple[Refreshed | RefreshFailed, bool]:
    """Refresh under the account's refresh lock, and write the new pair before anyone uses it.

    Holding that lock across the call means two proxies sharing a file can never spend the
    same single-use refresh token: the second one finds the first one's new pair in the file
    and takes it instead of refreshing. The file's own lock is taken only to write the result,
    so a slow token endpoint holds up neither other writers nor other accounts' refreshes.
    Returns the result and whether the file holds it.
    """
    try:
        with file.refreshing(account_id):
            return _refresh_locked(file, account_id, credentials, url, verify)
    except StateFileError as e:  # the lock stayed busy: said plainly, not as a crash
        return RefreshFailed(False, f"token refresh not tried: {e}"), False


def _refresh_locked(
    file: StateFile, account_id: str, credentials: Credentials, url: str, verify: bool
) -> tuple[Refreshed | RefreshFailed, bool]:
    # Another process refreshed it first (its refresh token is spent), or a new login.
    newer = _newer_in_file(file, account_id, credentials)
    if newer is not None:
        return newer
    result = post_refresh(url, credentials, verify)
    if not isinstance(result, Refreshed):
        # Refused because a new login replaced this one meanwhile (Codex spent the old
        # refresh token; the user imported the new login): that login is the answer.
        return _newer_in_file(file, account_id, credentials) or (result, False)
    return _store(file, account_id, credentials, result)


def _newer_in_file(
    file: StateFile, account_id: str, old: Credentials
) -> tuple[Refreshed, bool] | None:
    """The account's credentials in the file when another writer replaced `old` there."""
    # Writes are atomic renames: the file reads whole without its lock.
    try:
        disk = file.read_settled()
    except StateFileError:
        return None  # unreadable now: refresh anyway, the saver persists it later
    account = next((a for a in disk.accounts if a.id == account_id), None) if disk else None
    if account is None or not _replaced(account.credentials, old):
        return None
    return Refreshed(account.credentials, account.plan, account.email, fetched=False), True


def _replaced(stored: Credentials, old: Credentials) -> bool:
    """Whether another writer put a new login in place of `old` (a newer, different pair)."""
    return stored.updated_at > old.updated_at and stored.refresh_token != old.refresh_token


def _store(
    file: StateFile, account_id: str, old: Credentials, result: Refreshed
) -> tuple[Refreshed, bool]:
    """Write a refreshed pair into the file as it is now (others may have written it during
    the call). A login imported meanwhile wins, as it would have had it come after the
    refresh. Not persisted when the file cannot be written (the proxy's saver tries later)."""
    try:
        with file.locked():
            disk = file.read_settled()
            account = next((a for a in disk.accounts if a.id == account_id), None) if disk else None
            if disk is None or account is None:
                return result, False
            if _replaced(account.credentials, old):
                return Refreshed(account.credentials, account.plan, account.email, False), True
            account.credentials = result.credentials
            if result.plan is not None:
                account.plan = result.plan
            if result.email:
                account.email = result.email
            file.write_aside(disk)
    except (StateFileError, OSError):
        return result, False
    return result, True


class Refresher:
    """One refresh per account at a time; everyone who asks meanwhile gets the same result."""

    def __init__(
        self, call: Callable[[str, Credentials], Awaitable[Refreshed | RefreshFailed]]
    ) -> None:
        self.call = call
        self.inflight: dict[str, asyncio.Future[Refreshed | RefreshFailed]] = {}
        self.calls = 0

    async def refresh(self, account_id: str, credentials: Credentials) -> Refreshed | RefreshFailed:
        pending = self.inflight.get(account_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Refreshed | RefreshFailed] = (
            asyncio.get_running_loop().create_future()
        )
        self.inflight[account_id] = future
        self.calls += 1
        try:
            result = await self.call(account_id, credentials)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:  # a bug in a refresh must not wedge every waiter
            logger.exception("quota-router: token refresh crashed")
            result = RefreshFailed(False, f"token refresh crashed: {e.__class__.__name__}")
        finally:
            self.inflight.pop(account_id, None)
        future.set_result(result)
        return result
