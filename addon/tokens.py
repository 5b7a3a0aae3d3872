"""JWT claims (read without verifying: the upstream verifies) and token masking."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

AUTH_CLAIM = "https://api.openai.com/auth"


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, or {} when the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: absurdly nested
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> int | None:
    """`exp` in Unix seconds, when the token carries a sane one."""
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    if not 0 < exp < 2**40:
        return None
    return int(exp)


def auth_claims(token: str) -> dict[str, Any]:
    """The OpenAI auth claim block (plan, account id, user id)."""
    inner = jwt_claims(token).get(AUTH_CLAIM)
    return inner if isinstance(inner, dict) else {}


def mask(token: str) -> str:
    """A form of a secret that is safe to print: only its last four characters."""
    if len(token) <= 12:
        return "…"
    return "…" + token[-4:]
