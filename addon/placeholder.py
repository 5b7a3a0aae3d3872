"""Placeholder credentials for clients: a client that logs in with these never holds a real
token, so it can never refresh (and kill) a pooled account's single-use refresh token.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from addon.tokens import AUTH_CLAIM

PREFIX = "quota-router-placeholder."
TEN_YEARS = 10 * 365 * 86400
EMAIL = "pool@quota-router.invalid"


def is_placeholder(refresh_token: object) -> bool:
    return isinstance(refresh_token, str) and refresh_token.startswith(PREFIX)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    # Unsigned on purpose: the client reads the claims, only the upstream verifies signatures,
    # and a placeholder never reaches the upstream on a routed request.
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.placeholder"


def tokens(account_id: str, now: float | None = None) -> dict[str, str]:
    now = time.time() if now is None else now
    claims = {
        "iss": "quota-router",
        "iat": int(now),
        "exp": int(now) + TEN_YEARS,
        "email": EMAIL,
        AUTH_CLAIM: {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": "plus",
            "chatgpt_user_id": f"user-{account_id}",
        },
    }
    return {
        "id_token": _jwt(claims | {"aud": ["quota-router"]}),
        "access_token": _jwt(claims),
        # The synthetic account id rides along, so a refreshed placeholder keeps it.
        "refresh_token": f"{PREFIX}{account_id}.{secrets.token_urlsafe(24)}",
        "account_id": account_id,
    }


def auth_json(now: float | None = None) -> dict[str, Any]:
    """A Codex auth.json in ChatGPT mode whose tokens are all placeholders."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "OPENAI_API_KEY": None,
        "tokens": tokens(f"quota-router-{uuid.uuid4()}", now),
        "last_refresh": stamp,
    }


def refresh_reply(request_body: dict[str, Any]) -> dict[str, Any]:
    """What the proxy answers when a client refreshes its placeholder."""
    old = str(request_body.get("refresh_token", ""))[len(PREFIX) :]
    account_id = old.rsplit(".", 1)[0] if "." in old else f"quota-router-{uuid.uuid4()}"
    fresh = tokens(account_id[:80])
    return {
        "access_token": fresh["access_token"],
        "refresh_token": fresh["refresh_token"],
        "id_token": fresh["id_token"],
        "token_type": "Bearer",
        "expires_in": TEN_YEARS,
        "scope": request_body.get("scope", "openid profile email"),
    }
