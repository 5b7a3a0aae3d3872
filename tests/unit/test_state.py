"""state.py: the validated model of the state file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pydantic
import pytest

from addon.state import (
    STATE_VERSION,
    Account,
    Block,
    Credentials,
    Plan,
    State,
    Status,
    Window,
)

if TYPE_CHECKING:
    from conftest import AccountFactory

ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOiJhY2Nlc3MifQ.c2lnbmF0dXJlLXNlY3JldA"
REFRESH = "rt_very_secret_refresh_token_value"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOiJpZCJ9.aWQtc2lnbmF0dXJl"


def credentials() -> Credentials:
    return Credentials(
        access_token=ACCESS, refresh_token=REFRESH, id_token=ID_TOKEN, account_id="acct-1"
    )


def test_an_account_has_safe_defaults() -> None:
    account = Account(name="work", credentials=credentials())
    assert account.status is Status.ACTIVE
    assert account.plan is Plan.UNKNOWN
    assert (account.priority, account.requests) == (0, 0)
    assert (account.max_primary_percent, account.max_secondary_percent) == (100.0, 100.0)
    assert account.primary is None and account.secondary is None and account.block is None
    assert len(account.id) == 32


def test_two_accounts_get_different_ids() -> None:
    a = Account(name="a", credentials=credentials())
    b = Account(name="b", credentials=credentials())
    assert a.id != b.id


@pytest.mark.parametrize(
    "name", ["work", "W", "7", "a.b_c-d@e+f", "me@example.com", "x" * 64, "Team-2"]
)
def test_good_account_names(name: str) -> None:
    assert Account(name=name, credentials=credentials()).name == name


@pytest.mark.parametrize(
    "name",
    ["", "-work", ".work", "_work", "my work", "a/b", "a\\b", "a\n", "\nb", "ä", "x" * 65, "a;b"],
)
def test_bad_account_names(name: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        Account(name=name, credentials=credentials())


@pytest.mark.parametrize("value", [-0.1, 100.01, float("nan"), float("inf"), float("-inf")])
def test_a_window_percent_outside_0_to_100_is_refused(value: float) -> None:
    with pytest.raises(pydantic.ValidationError):
        Window(used_percent=value)


@pytest.mark.parametrize("value", [0, 0.0, 55.5, 100])
def test_a_window_percent_is_stored_as_a_float(value: float) -> None:
    window = Window(used_percent=value)
    assert window.used_percent == value and isinstance(window.used_percent, float)


@pytest.mark.parametrize(
    "fields",
    [
        {"window_minutes": 0},
        {"reset_at": -1},
        {"reset_at": 2**40},
        {"observed_at": float("nan")},
        {"observed_at": float("inf")},
        {"observed_at": -1.0},
    ],
)
def test_a_window_refuses_bad_fields(fields: dict[str, float]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Window(used_percent=10, **fields)


def test_windows_and_blocks_are_immutable() -> None:
    window = Window(used_percent=10)
    block = Block(until=5, reason="usage_limit_reached")
    with pytest.raises(pydantic.ValidationError):
        window.used_percent = 20  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        block.until = 6  # type: ignore[misc]


def test_immutable_models_given_the_same_fields_share_one_fields_set() -> None:
    # One set object per distinct fields set, not one per model object: full garbage
    # collections walk every set, and a large pool holds tens of thousands of windows.
    state = State.model_validate(
        {
            "accounts": [
                {
                    "name": f"a{i}",
                    "credentials": {"access_token": "t"},
                    "primary": {"used_percent": i, "window_minutes": 300, "observed_at": 1.0},
                    "secondary": {"used_percent": i, "window_minutes": 10080, "observed_at": 1.0},
                }
                for i in range(3)
            ],
            "conversations": [
                {"key": f"k{i}", "account_id": "x", "seen_at": float(i)} for i in range(3)
            ],
        }
    )
    windows = [w for a in state.accounts for w in (a.primary, a.secondary) if w is not None]
    made = Window(used_percent=7, window_minutes=60, observed_at=2.0)
    assert len({id(w.__pydantic_fields_set__) for w in [*windows, made]}) == 1
    assert len({id(c.__pydantic_fields_set__) for c in state.conversations}) == 1
    credentials = {id(a.credentials.__pydantic_fields_set__) for a in state.accounts}
    assert len(credentials) == 1


def test_a_shared_fields_set_keeps_what_each_model_was_given() -> None:
    full = Window(used_percent=1, window_minutes=60, reset_at=5, observed_at=2.0)
    bare = Window(used_percent=1)
    assert bare.model_fields_set == {"used_percent"}
    assert full.model_fields_set == {"used_percent", "window_minutes", "reset_at", "observed_at"}
    copied = bare.model_copy(update={"reset_at": 9})
    assert copied.model_fields_set == {"used_percent", "reset_at"}
    assert bare.model_fields_set == {"used_percent"}  # the shared set did not change
    assert Window(used_percent=3).model_fields_set == {"used_percent"}
    assert bare.model_dump(exclude_unset=True) == {"used_percent": 1.0}


@pytest.mark.parametrize("cap", ["max_primary_percent", "max_secondary_percent"])
@pytest.mark.parametrize("value", [-1, 101, float("nan")])
def test_caps_are_percents(cap: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError):
        Account(name="a", credentials=credentials(), **{cap: value})


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_priority_is_bounded(priority: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        Account(name="a", credentials=credentials(), priority=priority)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        Account.model_validate(
            {"name": "a", "credentials": credentials().model_dump(), "colour": "red"}
        )


def test_an_empty_access_token_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        Credentials(access_token="")


@pytest.mark.parametrize("field", ["access_token", "refresh_token", "id_token", "account_id"])
@pytest.mark.parametrize("bad", ["tok\r\nX-Evil: y", "tok\n", "to k", "tok\x00", "tök"])
def test_what_goes_into_a_header_is_visible_ascii_only(field: str, bad: str) -> None:
    fields = {"access_token": "tok", field: bad}
    with pytest.raises(pydantic.ValidationError, match="visible ASCII characters only"):
        Credentials(**fields)


def test_tokens_have_a_bound() -> None:
    Credentials(access_token="t" * 65536)
    with pytest.raises(pydantic.ValidationError):
        Credentials(access_token="t" * 65537)


def test_names_and_ids_are_unique_in_a_state(make_account: AccountFactory) -> None:
    a = make_account("same")
    with pytest.raises(pydantic.ValidationError, match="name"):
        State(accounts=[a, make_account("same")])
    twin = make_account("other").model_copy(update={"id": a.id})
    with pytest.raises(pydantic.ValidationError, match="id"):
        State(accounts=[a, twin])


def test_a_newer_state_version_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        State(version=STATE_VERSION + 1)


def test_by_name_finds_an_account(make_account: AccountFactory) -> None:
    state = State(accounts=[make_account("a"), make_account("b")])
    found = state.by_name("b")
    assert found is not None and found.name == "b"
    assert state.by_name("B") is None


@pytest.mark.parametrize(
    ("raw", "plan"),
    [
        ("pro", Plan.PRO),
        ("Pro", Plan.PRO),
        (" plus ", Plan.PLUS),
        ("prolite", Plan.PROLITE),
        ("enterprise", Plan.ENTERPRISE),
        ("free", Plan.FREE),
        ("ultra-max", Plan.UNKNOWN),
        (None, Plan.UNKNOWN),
        (7, Plan.UNKNOWN),
        ("", Plan.UNKNOWN),
    ],
)
def test_plan_parse(raw: object, plan: Plan) -> None:
    assert Plan.parse(raw) is plan


def test_credentials_never_print_a_token() -> None:
    creds = credentials()
    for text in (repr(creds), str(creds), f"{creds}"):
        for secret in (ACCESS, REFRESH, ID_TOKEN):
            assert secret not in text
    assert "acct-1" in repr(creds)


def test_an_account_never_prints_a_token() -> None:
    account = Account(name="work", credentials=credentials())
    for text in (repr(account), str(account), repr(State(accounts=[account]))):
        for secret in (ACCESS, REFRESH, ID_TOKEN):
            assert secret not in text
