"""Read a Codex `auth.json` (snake_case or camelCase) into pooled-account credentials."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon.state import Credentials, Plan
from addon.tokens import auth_claims, jwt_claims, token_expiry

_FIELDS = {
    "access_token": ("access_token", "accessToken"),
    "refresh_token": ("refresh_token", "refreshToken"),
    "id_token": ("id_token", "idToken"),
    "account_id": ("account_id", "accountId"),
}


_HEADER_SAFE = re.compile(r"[!-~]+")


class AuthFileError(Exception):
    """The file is not a usable Codex auth.json; the message says why (never a token)."""


@dataclass(frozen=True, slots=True)
class Imported:
    credentials: Credentials
    plan: Plan
    email: str


def _pick(tokens: dict[str, Any], field: str) -> str:
    for key in _FIELDS[field]:
        value = tokens.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def parse_auth(data: Any, source: str) -> Imported:
    if not isinstance(data, dict):
        raise AuthFileError(f"{source}: not a Codex auth.json (expected a JSON object)")
    tokens = data.get("tokens")
    if not isinstance(tokens, dict):
        if data.get("OPENAI_API_KEY"):
            raise AuthFileError(
                f"{source}: holds an API key, not a ChatGPT login; only ChatGPT accounts "
                "can be pooled (run `codex login` with ChatGPT)"
            )
        raise AuthFileError(f'{source}: not a Codex auth.json (no "tokens" object)')
    fields = {f: _pick(tokens, f) for f in _FIELDS}
    if not fields["access_token"]:
        raise AuthFileError(f'{source}: no access token in "tokens"')
    if not fields["refresh_token"]:
        raise AuthFileError(f'{source}: no refresh token in "tokens" (log in again with codex)')
    id_claims = jwt_claims(fields["id_token"]) if fields["id_token"] else {}
    claims = auth_claims(fields["id_token"]) or auth_claims(fields["access_token"])
    fields["account_id"] = fields["account_id"] or str(claims.get("chatgpt_account_id") or "")
    for field, value in fields.items():
        # Tokens and the account id travel in HTTP headers: printable ASCII without spaces
        # only (a CR/LF would inject a header; other characters cannot even be stored).
        if value and not _HEADER_SAFE.fullmatch(value):
            label = field.replace("_", " ")
            raise AuthFileError(f'{source}: the {label} in "tokens" is not a valid token')
    email = id_claims.get("email") or jwt_claims(fields["access_token"]).get("email") or ""
    credentials = Credentials(
        access_token=fields["access_token"],
        refresh_token=fields["refresh_token"],
        id_token=fields["id_token"],
        account_id=fields["account_id"],
        expires_at=token_expiry(fields["access_token"]),
        updated_at=time.time(),
    )
    plan = Plan.parse(claims.get("chatgpt_plan_type"))
    return Imported(credentials, plan, _printable(str(email))[:200])


def _printable(text: str) -> str:
    """Without control characters (terminal escapes) and lone surrogates (unstorable)."""
    return "".join(c for c in text if c.isprintable() and not "\ud800" <= c <= "\udfff")


def read_auth_file(path: Path) -> Imported:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuthFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AuthFileError(f"{path}: is a directory, not an auth.json file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AuthFileError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise AuthFileError(
            f"{path}: not JSON ({e.__class__.__name__} at line {getattr(e, 'lineno', '?')})"
        ) from None
    return parse_auth(data, str(path))
