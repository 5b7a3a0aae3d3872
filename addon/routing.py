"""Which requests belong to the pool, and rewriting the one reply that names the account."""

from __future__ import annotations

import json
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
    except ValueError:
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

    mapped = walk(data)
    return json.dumps(mapped).encode() if changed else None
