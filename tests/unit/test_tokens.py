"""tokens.py: reading JWT claims without verifying them, and masking secrets."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addon.tokens import AUTH_CLAIM, auth_claims, jwt_claims, mask, token_expiry
from tests.fakes.jwt import make_access_token, make_id_token, make_jwt


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt_with_payload(payload: bytes) -> str:
    return f"{_b64(b'{}')}.{_b64(payload)}.{_b64(b'sig')}"


# -- jwt_claims ------------------------------------------------------------------------------


def test_jwt_claims_reads_the_payload() -> None:
    claims = {"exp": 123, "email": "a@example.com", AUTH_CLAIM: {"chatgpt_plan_type": "pro"}}
    assert jwt_claims(make_jwt(claims)) == claims


def test_jwt_claims_reads_a_payload_that_needs_padding() -> None:
    # 1, 2 and 3 characters short of a multiple of 4 after the padding is stripped
    for email in ("a@x.io", "ab@x.io", "abc@x.io"):
        assert jwt_claims(make_jwt({"email": email})) == {"email": email}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "header.%%%.sig",  # not base64
        _jwt_with_payload(b"not json"),
        _jwt_with_payload(b"\xff\xfe\x00"),  # not UTF-8
        _jwt_with_payload(b"[1, 2]"),  # JSON, not an object
        _jwt_with_payload(b'"text"'),
        _jwt_with_payload(b"[" * 100_000 + b"]" * 100_000),  # too deep for the JSON parser
        "é.ü.ß",  # non-ASCII
    ],
)
def test_jwt_claims_is_empty_for_unreadable_tokens(token: str) -> None:
    assert jwt_claims(token) == {}


@given(st.text(max_size=300))
def test_jwt_claims_never_raises(token: str) -> None:
    assert isinstance(jwt_claims(token), dict)


@given(st.binary(max_size=300))
def test_jwt_claims_never_raises_on_any_payload(payload: bytes) -> None:
    assert isinstance(jwt_claims(_jwt_with_payload(payload)), dict)


# -- token_expiry ----------------------------------------------------------------------------


def test_token_expiry_reads_exp() -> None:
    assert token_expiry(make_access_token("acct", exp=1_900_000_000)) == 1_900_000_000


def test_token_expiry_truncates_a_float_exp() -> None:
    assert token_expiry(make_jwt({"exp": 1_900_000_000.9})) == 1_900_000_000


@pytest.mark.parametrize(
    "exp", [True, False, None, "1900000000", 0, -5, 2**40, 1e300, [1], {"a": 1}]
)
def test_token_expiry_ignores_insane_values(exp: object) -> None:
    assert token_expiry(make_jwt({"exp": exp})) is None


def test_token_expiry_ignores_nan_and_infinity() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        assert token_expiry(_jwt_with_payload(b'{"exp": ' + literal + b"}")) is None


def test_token_expiry_is_none_without_exp_or_jwt() -> None:
    assert token_expiry(make_jwt({"sub": "x"})) is None
    assert token_expiry("opaque-token") is None


# -- auth_claims -----------------------------------------------------------------------------


def test_auth_claims_reads_plan_and_account_from_an_id_token() -> None:
    claims = auth_claims(make_id_token("acct-123", "pro"))
    assert claims["chatgpt_account_id"] == "acct-123"
    assert claims["chatgpt_plan_type"] == "pro"


@pytest.mark.parametrize("inner", ["pro", 5, None, ["x"]])
def test_auth_claims_is_empty_when_the_claim_is_not_an_object(inner: object) -> None:
    assert auth_claims(make_jwt({AUTH_CLAIM: inner})) == {}


def test_auth_claims_is_empty_for_a_non_jwt() -> None:
    assert auth_claims("rt_opaque") == {}


# -- mask ------------------------------------------------------------------------------------


def test_mask_shows_only_the_last_four_characters() -> None:
    token = make_access_token("acct-1")
    masked = mask(token)
    assert masked == "…" + token[-4:]
    assert token[:-4] not in masked


@pytest.mark.parametrize("token", ["", "a", "abcd", "abcdefghijkl"])
def test_mask_reveals_nothing_of_a_short_secret(token: str) -> None:
    # four characters of a 12-character secret would be a third of it
    assert mask(token) == "…"


@given(st.text(max_size=200))
def test_mask_never_reveals_more_than_the_last_four_characters(token: str) -> None:
    masked = mask(token)
    assert masked.startswith("…")
    revealed = masked.removeprefix("…")
    assert len(revealed) <= 4
    assert token.endswith(revealed)


def test_mask_of_a_real_looking_token_hides_its_claims() -> None:
    token = make_access_token("acct-secret-id", email="someone@example.com")
    payload = token.split(".")[1]
    assert payload not in mask(token)
    assert json.dumps(mask(token))  # printable
