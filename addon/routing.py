"""Which requests belong to the pool, and rewriting the one reply that names the account."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# Pooled tokens are only ever sent here: exact host, https, default port.
BACKEND_HOST = "chatgpt.com"
BACKEND_PORT = 443
ROUTED_PREFIXES = ("/backend-api/codex/", "/backend-api/wham/")
ACCOUNTS_CHECK = "/backend-api/wham/accounts/check"


def is_routed(scheme: str, host: str, port: int, path: str, headers: Mapping[str, str]) -> bool:
    """True for Codex backend calls; the ChatGPT web app on the same host is left alone."""
    if scheme != "https" or host.lower().rstrip(".") != BACKEND_HOST or port != BACKEND_PORT:
        return False
    if path.startswith(ROUTED_PREFIXES):
        return True
    return path.startswith("/backend-api/") and headers.get("originator", "").startswith("codex")


def is_model_request(path: str) -> bool:
    """A request that spends model quota (a turn, a compaction); the rest do not."""
    return path.split("?", 1)[0].startswith("/backend-api/codex/responses")


def is_accounts_check(path: str) -> bool:
    return path.split("?", 1)[0] == ACCOUNTS_CHECK


def map_account_ids(body: bytes, pooled_id: str, client_id: str) -> bytes | None:
    """The accounts/check reply with the pooled account's id replaced by the client's own.

    Codex looks for its own `chatgpt-account-id` in this reply and fails every turn when it is
    missing. Returns None when there is nothing to change.
    """
    if not pooled_id or not client_id or pooled_id == client_id:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    changed = False

    def walk(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if node == pooled_id:
            changed = True
            return client_id
        return node

    try:
        mapped = walk(data)
        return json.dumps(mapped).encode() if changed else None
    except RecursionError:  # nested just below json's limit, but deeper than walk() can go
        return None


# -- request bodies ---------------------------------------------------------------------------
_CACHE_KEY = re.compile(rb'"prompt_cache_key"\s*:\s*"([^"\\]{1,200})"')
_BOUND_REFS = re.compile(rb'"(?:previous_response_id|encrypted_content)"\s*:\s*"')


def prompt_cache_key(body: bytes) -> str | None:
    """The body's `prompt_cache_key` (Codex sets it to the thread id), found without parsing."""
    match = _CACHE_KEY.search(body)
    return match.group(1).decode("utf-8", "replace") if match else None


def has_account_bound_refs(body: bytes) -> bool:
    """True when the request points at state only the serving account has (a previous
    response, encrypted reasoning): it fails on any other account."""
    return _BOUND_REFS.search(body) is not None


# -- upstream answers -------------------------------------------------------------------------
QUOTA_CODES = (b"insufficient_quota", b"usage_not_included", b"quota_exceeded")


def retry_reason(status: int, body: bytes | None) -> str | None:
    """Why this answer should be retried on another account, or None when it should not.

    Limits, quota errors, auth failures and server errors belong to the account or the
    upstream; other 4xx are the request's own fault and are never retried.
    """
    if status == 429:
        return "429 " + (_error_type(body) or "rate limited")
    if status == 401:
        return "401 unauthorized"
    if status in (402, 403) and body and any(code in body for code in QUOTA_CODES):
        return f"{status} " + (_error_type(body) or "quota exceeded")
    if status >= 500:
        return f"{status} upstream error"
    return None


def _error_type(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        return str(kind)[:60] if kind else None
    return None
