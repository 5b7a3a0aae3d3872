"""Read a Codex `auth.json` (snake_case or camelCase) into pooled-account credentials."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from addon.state import Credentials, Plan
from addon.tokens import auth_claims, jwt_claims, token_expiry

_FIELDS = {
    "access_token": ("access_token", "accessToken"),
    "refresh_token": ("refresh_token", "refreshToken"),
    "id_token": ("id_token", "idToken"),
    "account_id": ("account_id", "accountId"),
}


# A real Codex auth.json is a few KB: anything far bigger is not one, and is not read whole.
MAX_BYTES = 1 << 20


class AuthFileError(Exception):
    """The file is not a usable Codex auth.json; the message says why (never a token)."""

    def __init__(self, source: str | Path, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.reason = reason  # without the file name, for messages that name it otherwise


class _NumberTooLong(Exception):
    """A JSON integer with more digits than Python converts (sys.get_int_max_str_digits)."""


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
        raise AuthFileError(source, "not a Codex auth.json (expected a JSON object)")
    tokens = data.get("tokens")
    if not isinstance(tokens, dict):
        if data.get("OPENAI_API_KEY"):
            raise AuthFileError(
                source,
                "holds an API key, not a ChatGPT login; only ChatGPT accounts "
                "can be pooled (run `codex login` with ChatGPT)",
            )
        raise AuthFileError(source, 'not a Codex auth.json (no "tokens" object)')
    fields = {f: _pick(tokens, f) for f in _FIELDS}
    if not fields["access_token"]:
        raise AuthFileError(source, 'no access token in "tokens"')
    if not fields["refresh_token"]:
        raise AuthFileError(source, 'no refresh token in "tokens" (log in again with codex)')
    id_claims = jwt_claims(fields["id_token"]) if fields["id_token"] else {}
    claims = auth_claims(fields["id_token"]) or auth_claims(fields["access_token"])
    fields["account_id"] = fields["account_id"] or str(claims.get("chatgpt_account_id") or "")
    email = id_claims.get("email") or jwt_claims(fields["access_token"]).get("email") or ""
    try:
        # The model refuses what cannot travel in an HTTP header (a CR/LF would inject one)
        # and what is absurdly long.
        credentials = Credentials(
            **fields, expires_at=token_expiry(fields["access_token"]), updated_at=time.time()
        )
    except pydantic.ValidationError as e:
        label = str(e.errors()[0]["loc"][0]).replace("_", " ")
        raise AuthFileError(source, f'the {label} in "tokens" is not valid') from None
    plan = Plan.parse(claims.get("chatgpt_plan_type"))
    return Imported(credentials, plan, _printable(str(email))[:200])


def _printable(text: str) -> str:
    """Without control characters (terminal escapes) and lone surrogates (unstorable)."""
    return "".join(c for c in text if c.isprintable() and not "\ud800" <= c <= "\udfff")


def read_auth_file(path: Path) -> Imported:
    return parse_auth(load_json(path), str(path))


def load_json(path: Path) -> Any:
    """The JSON document in `path`, which must be a small regular file of UTF-8 text."""
    raw = _read_small_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{raw[e.start]:02x} at offset {e.start}"
        raise AuthFileError(path, f"not UTF-8 text, as JSON must be ({bad})") from None
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        where = f"at line {e.lineno}, column {e.colno}"
        raise AuthFileError(path, f"not JSON ({e.msg.removesuffix(' at')} {where})") from None
    except _NumberTooLong as e:
        line = text.count("\n", 0, max(text.find(e.args[0]), 0)) + 1
        digits = f"{len(e.args[0].lstrip('-')):,} digits"
        raise AuthFileError(
            path, f"not JSON this can read: a number too long ({digits}) at line {line}"
        ) from None
    except RecursionError:
        raise AuthFileError(path, "not JSON this can read: nested too deeply") from None


def _parse_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # over the digit limit: json would raise a ValueError without a line
        raise _NumberTooLong(digits) from None


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def _read_small_file(path: Path) -> bytes:
    """At most MAX_BYTES from a regular file; never blocks on a FIFO nor reads a device."""
    try:
        _check_regular(path, path.stat())  # before opening: opening a device can act on it
        # O_NONBLOCK: a FIFO swapped in meanwhile must not hang the open (fstat refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise AuthFileError(path, "no such file") from None
    except OSError as e:
        raise AuthFileError(path, f"cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as handle:
        _check_regular(path, os.fstat(fd))
        try:
            raw = handle.read(MAX_BYTES + 1)
        except OSError as e:
            raise AuthFileError(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:  # it grew since the check
        raise AuthFileError(path, _too_large(len(raw)))
    return raw


def _check_regular(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AuthFileError(path, f"is {file_kind(st.st_mode)}, not an auth.json file")
    if st.st_size > MAX_BYTES:
        raise AuthFileError(path, _too_large(st.st_size))


def _too_large(size: int) -> str:
    limit = f"{MAX_BYTES // (1 << 20)} MiB"
    return f"too large for an auth.json ({size:,} bytes; the limit is {limit}, a login is a few KB)"
