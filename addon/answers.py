"""Answers the proxy gives itself when no pooled account can serve, shaped like Codex's."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    body: dict[str, object]
    reason: str  # one line for logs and the flow comment
    plain: bool = False  # sent as the reason in plain text, not as the JSON body

    def content(self) -> bytes:
        return self.reason.encode() if self.plain else json.dumps(self.body).encode()

    @property
    def content_type(self) -> str:
        return "text/plain; charset=utf-8" if self.plain else "application/json"


def usage_limit(resets_at: int, now: float, plan: str | None) -> Refusal:
    """What the upstream says when an account is out: Codex shows its usage-limit message."""
    body = {
        "error": {
            "type": "usage_limit_reached",
            "message": "The usage limit has been reached on every pooled account.",
            "plan_type": plan or "plus",
            "resets_at": resets_at,
            "resets_in_seconds": max(0, int(resets_at - now)),
        }
    }
    return Refusal(429, body, f"every account is rate limited until {clock(resets_at)}")


def clock(epoch: float) -> str:
    """A moment as people read it in a log line (UTC: the proxy's zone may not be theirs)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def unavailable(code: str, message: str) -> Refusal:
    body = {"error": {"type": "no_account_available", "code": code, "message": message}}
    return Refusal(503, body, message)


def needs_the_user(code: str, message: str) -> Refusal:
    """Nothing changes until someone acts (resume an account, log in again): a 400, which
    Codex does not retry (a 503 it retries for about 30 s before the user sees anything) and
    whose body it shows as it is, so the body is the message itself."""
    body = {"error": {"type": "no_account_available", "code": code, "message": message}}
    return Refusal(400, body, message, plain=True)


def conversation_stuck(account: str, why: str, lasting: bool) -> Refusal:
    """A request bound to one account's state (previous response, encrypted reasoning) while
    that account cannot serve and others can: sending it elsewhere would fail upstream
    anyway. `lasting` (paused, needs a new login, limited): a 400 Codex shows at once (see
    needs_the_user); else a 409, which Codex retries for some seconds first."""
    message = (
        f"quota-router: this conversation belongs to account {account!r}, which cannot serve "
        f"now ({why}); start a new conversation to continue on another account."
    )
    body = {
        "error": {"type": "invalid_request_error", "code": "conversation_bound", "message": message}
    }
    return Refusal(400, body, message, plain=True) if lasting else Refusal(409, body, message)


def over_http(account: str, why: str) -> Refusal:
    """A WebSocket handshake of a conversation whose account cannot serve: Codex sends the
    turn over HTTP instead, where its body shows whether it may move."""
    message = (
        f"this conversation's account {account!r} cannot serve now ({why}): its turn goes over HTTP"
    )
    body = {"error": {"type": "invalid_request_error", "code": "use_http", "message": message}}
    return Refusal(426, body, message)


def accounts_check_for_the_client(client_account_id: str, refusal: Refusal) -> Refusal:
    """accounts/check answered for the client itself when no pooled account can make the call
    (all paused, all needing a new login): Codex fails a refused check with "workspace routing
    discovery failed", where it would show the turn's refusal, which says what to do."""
    entry = {
        "id": client_account_id,
        "account_id": client_account_id,
        "name": None,
        "plan_type": "unknown",
        "structure": "personal",
        "profile_picture_url": None,
        "workspace_backend_origin": "NO_CONSTRAINT",
        "account_routing_override": "NO_CONSTRAINT",
    }
    body = {
        "accounts": [entry],
        "account_ordering": [client_account_id],
        "default_account_id": client_account_id,
    }
    return Refusal(200, body, f"{refusal.reason} (accounts/check answered for the client)")


def reconnect_frame(account: str) -> dict[str, object]:
    """A WebSocket error frame that Codex treats as transient: it reconnects and resends the
    turn, and the new connection is routed to another account."""
    return {
        "type": "error",
        "status_code": 503,
        "error": {
            "type": "server_error",
            "code": "account_switch",
            "message": f"quota-router: {account} reached its usage limit; switching accounts",
        },
    }
