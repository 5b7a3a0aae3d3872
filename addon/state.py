"""The state model: what the TOML state file holds, validated with pydantic.

Each group of fields that two writers (the proxy, the CLI, a second proxy) may change carries
its own `*_at` timestamp, so a merge can keep the newer side of every group (see merge.py).
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

STATE_VERSION = 1


# NaN and infinities are refused before the range is checked (NaN fails `le` with a misleading
# "less than or equal to 100").
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Epoch = Annotated[int, Field(ge=0, lt=2**40)]
Stamp = Annotated[float, Field(ge=0, lt=2**40, allow_inf_nan=False)]
# Tokens and the account id go into HTTP headers: visible ASCII only (a CR/LF from a hand-edited
# file would start a header of its own). Real ones are a few KB; the bound keeps a mistake small.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")


def _header_safe(value: str) -> str:
    if not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError("must be visible ASCII characters only (no spaces, no line breaks)")
    return value


HeaderText = Annotated[str, Field(max_length=65536), AfterValidator(_header_safe)]


class Plan(StrEnum):
    FREE = "free"
    PLUS = "plus"
    TEAM = "team"
    BUSINESS = "business"
    EDU = "edu"
    PROLITE = "prolite"
    PRO = "pro"
    ENTERPRISE = "enterprise"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> Plan:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            return cls.UNKNOWN


class Status(StrEnum):
    """What the operator or the credentials say; usage blocks are computed, not stored."""

    ACTIVE = "active"
    PAUSED = "paused"
    REAUTH_REQUIRED = "reauth_required"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# One set per distinct `model_fields_set`, shared by every immutable model that has it.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class _Frozen(_Model):
    """An immutable model. pydantic gives every model object a set of the fields it was given;
    a 10,000-account pool holds ~30,000 such objects (its windows, and the conversations its
    saver keeps), and the interpreter's full collections walk each set, stopping the event
    loop. Immutable objects given the same fields share one set: pydantic only ever changes
    the set of an object that can be assigned to (and copies it first for `model_copy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def model_post_init(self, context: Any, /) -> None:
        given = self.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(frozenset(given), given)
        object.__setattr__(self, "__pydantic_fields_set__", shared)


class Window(_Frozen):
    """One usage window as last reported by the upstream. Immutable: replaced whole."""

    used_percent: Percent
    window_minutes: int | None = Field(default=None, ge=1, le=10**6)
    reset_at: Epoch | None = None
    observed_at: Stamp = 0.0


class Block(_Frozen):
    """The upstream refused this account until `until` (a 429 or a quota error)."""

    until: Epoch
    reason: str = Field(max_length=200)
    observed_at: Stamp = 0.0


class Backoff(_Frozen):
    """Upstream errors without a reset time (5xx, connection failures): wait a little."""

    errors: int = Field(ge=1, le=10**6)
    until: Stamp
    observed_at: Stamp = 0.0
    cause: str | None = Field(default=None, max_length=200)  # the last error, when not upstream


class Conversation(_Frozen):
    """Which account owns a conversation (key: a hash of its id, never the id itself)."""

    key: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=64)
    seen_at: Stamp


class Credentials(_Frozen):
    access_token: Annotated[HeaderText, Field(min_length=1)]
    refresh_token: HeaderText = ""
    id_token: HeaderText = ""
    account_id: Annotated[HeaderText, Field(max_length=200)] = ""
    expires_at: Epoch | None = None
    updated_at: Stamp = 0.0

    def __repr__(self) -> str:  # never print a token, not even in a traceback
        return f"Credentials(account_id={self.account_id!r}, updated_at={self.updated_at})"

    __str__ = __repr__


class Account(_Model):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")
    plan: Plan = Plan.UNKNOWN
    email: str = ""
    credentials: Credentials

    status: Status = Status.ACTIVE
    status_reason: str = Field(default="", max_length=300)
    status_at: Stamp = 0.0

    priority: int = Field(default=0, ge=-1000, le=1000)
    max_primary_percent: Percent = 100.0
    max_secondary_percent: Percent = 100.0
    settings_at: Stamp = 0.0

    primary: Window | None = None
    secondary: Window | None = None
    block: Block | None = None
    backoff: Backoff | None = None

    requests: int = Field(default=0, ge=0, le=2**53)  # exact in JSON (status --json)
    last_used_at: Epoch | None = None
    added_at: Stamp = 0.0


class State(_Model):
    version: int = Field(default=STATE_VERSION, ge=1, le=STATE_VERSION)
    accounts: list[Account] = Field(default_factory=list)
    conversations: list[Conversation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> State:
        for field in ("name", "id"):
            seen: set[str] = set()
            for index, account in enumerate(self.accounts):
                value = getattr(account, field)
                if value in seen:
                    # `index` in the context: the state file's error names the second one's line.
                    raise PydanticCustomError(
                        "duplicate_account",
                        "two accounts share the {field} {shown}",
                        {"field": field, "shown": repr(value), "index": index},
                    )
                seen.add(value)
        return self

    def by_name(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)


def validate_in_steps(
    fields: dict[str, Any], accounts: list[Any], conversations: list[Any]
) -> State:
    """State.model_validate({**fields, "accounts": ..., "conversations": ...}), one item at a
    time: the same State, but never one long C call (30,000 items validated in one call hold
    the GIL for about a second, stalling the event loop while a worker thread reads the file).
    Items that are validated models already are kept as they are. Raises ValueError (pydantic's
    ValidationError included) on any problem: the caller then validates the whole, for its
    exact message."""
    shell = State.model_validate({**fields, "accounts": [], "conversations": []})
    state = State.model_construct(
        version=shell.version,
        accounts=[a if type(a) is Account else Account.model_validate(a) for a in accounts],
        conversations=[
            c if type(c) is Conversation else Conversation.model_validate(c) for c in conversations
        ],
    )
    state._unique()  # what State's own validator checks
    return state
