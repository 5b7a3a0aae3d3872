"""Fake JWTs and Codex ``auth.json`` documents for tests.

The Codex CLI decodes its tokens' claims but never verifies their signature, so a JWT with a
junk signature is enough for it (and for the router, which reads the same claims).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """A compact JWT carrying ``claims`` with a junk (unverifiable) signature."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "fake"}
    parts = [
        _b64url(json.dumps(header, separators=(",", ":")).encode()),
        _b64url(json.dumps(claims, separators=(",", ":")).encode()),
        _b64url(b"fake-signature-" + secrets.token_bytes(8)),
    ]
    return ".".join(parts)


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, without any signature check."""
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return claims


def make_access_token(
    account_id: str,
    plan: str = "plus",
    *,
    exp: int | None = None,
    email: str | None = None,
    user_id: str | None = None,
) -> str:
    """An access token shaped like a ChatGPT one (claims the CLI and the router read)."""
    now = int(time.time())
    return make_jwt(
        {
            "iss": "https://auth.openai.com",
            "aud": ["https://api.openai.com/v1"],
            "client_id": CLIENT_ID,
            "iat": now,
            "exp": exp if exp is not None else now + 10 * 24 * 3600,
            "jti": str(uuid.uuid4()),
            "scp": ["openid", "profile", "email", "offline_access"],
            AUTH_CLAIM: {
                "chatgpt_account_id": account_id,
                "chatgpt_plan_type": plan,
                "chatgpt_user_id": user_id or f"user-{account_id}",
                "user_id": user_id or f"user-{account_id}",
            },
            PROFILE_CLAIM: {"email": email or f"{account_id}@example.com", "email_verified": True},
        }
    )


def make_id_token(
    account_id: str,
    plan: str = "plus",
    *,
    exp: int | None = None,
    email: str | None = None,
    user_id: str | None = None,
) -> str:
    """An id token shaped like a ChatGPT one (``email`` at top level, auth claims nested)."""
    now = int(time.time())
    return make_jwt(
        {
            "iss": "https://auth.openai.com",
            "aud": [CLIENT_ID],
            "sub": f"auth0|{account_id}",
            "iat": now,
            "exp": exp if exp is not None else now + 3600,
            "email": email or f"{account_id}@example.com",
            "email_verified": True,
            AUTH_CLAIM: {
                "chatgpt_account_id": account_id,
                "chatgpt_plan_type": plan,
                "chatgpt_user_id": user_id or f"user-{account_id}",
                "user_id": user_id or f"user-{account_id}",
                "organizations": [],
            },
        }
    )


def make_refresh_token() -> str:
    """An opaque refresh token (real ones are opaque strings, not JWTs)."""
    return "rt_fake_" + secrets.token_urlsafe(24)


def iso_now() -> str:
    """``last_refresh`` timestamp in the format Codex writes."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_auth_json(
    account_id: str,
    plan: str = "plus",
    *,
    exp: int | None = None,
    email: str | None = None,
    access_token: str | None = None,
    refresh_token: str | None = None,
) -> dict[str, Any]:
    """A Codex ``auth.json`` document (ChatGPT login, snake_case as the CLI writes it).

    ``exp`` is the access token's expiry (epoch seconds; default in 10 days). The CLI refreshes
    on its own when it is less than about 5 minutes away.
    """
    return {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": make_id_token(account_id, plan, email=email),
            "access_token": access_token
            or make_access_token(account_id, plan, exp=exp, email=email),
            "refresh_token": refresh_token or make_refresh_token(),
            "account_id": account_id,
        },
        "last_refresh": iso_now(),
    }
