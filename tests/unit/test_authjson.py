"""authjson.py: a Codex auth.json (snake_case or camelCase) -> credentials, plan and email."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from addon.authjson import MAX_BYTES, AuthFileError, parse_auth, read_auth_file
from addon.state import Plan
from tests.fakes.jwt import make_access_token, make_auth_json, make_id_token, make_jwt

if TYPE_CHECKING:
    from conftest import WriteAuth

CAMEL = {
    "id_token": "idToken",
    "access_token": "accessToken",
    "refresh_token": "refreshToken",
    "account_id": "accountId",
}


def camel(auth: dict[str, Any]) -> dict[str, Any]:
    tokens = {CAMEL[k]: v for k, v in auth["tokens"].items()}
    return {"tokens": tokens, "lastRefreshAt": auth["last_refresh"]}


def test_reads_a_snake_case_auth_json(write_auth: WriteAuth) -> None:
    auth = make_auth_json("acct-123", "pro", exp=1_900_000_000, email="pro@example.com")
    before = time.time()
    imported = read_auth_file(write_auth(auth))
    tokens = auth["tokens"]
    creds = imported.credentials
    assert creds.access_token == tokens["access_token"]
    assert creds.refresh_token == tokens["refresh_token"]
    assert creds.id_token == tokens["id_token"]
    assert creds.account_id == "acct-123"
    assert creds.expires_at == 1_900_000_000
    assert before <= creds.updated_at <= time.time()
    assert imported.plan is Plan.PRO
    assert imported.email == "pro@example.com"


def test_reads_a_camel_case_auth_json(write_auth: WriteAuth) -> None:
    auth = make_auth_json("acct-9", "plus")
    snake = read_auth_file(write_auth(auth))
    camel_case = read_auth_file(write_auth(camel(auth)))
    assert camel_case.credentials.model_dump(
        exclude={"updated_at"}
    ) == snake.credentials.model_dump(exclude={"updated_at"})
    assert (camel_case.plan, camel_case.email) == (Plan.PLUS, snake.email)


def test_plan_and_account_id_come_from_the_id_token_claims() -> None:
    auth = make_auth_json("acct-from-claims", "team")
    del auth["tokens"]["account_id"]
    # the access token claims something else: the id token is the source
    auth["tokens"]["access_token"] = make_access_token("acct-other", "free")
    imported = parse_auth(auth, "auth.json")
    assert imported.credentials.account_id == "acct-from-claims"
    assert imported.plan is Plan.TEAM


def test_without_an_id_token_the_access_token_claims_are_used() -> None:
    auth = make_auth_json("acct-7", "prolite")
    del auth["tokens"]["id_token"], auth["tokens"]["account_id"]
    imported = parse_auth(auth, "auth.json")
    assert imported.credentials.account_id == "acct-7"
    assert imported.plan is Plan.PROLITE
    assert imported.credentials.id_token == ""


def test_an_unknown_plan_is_unknown() -> None:
    auth = make_auth_json("acct-1", "galactic")
    assert parse_auth(auth, "auth.json").plan is Plan.UNKNOWN


def test_opaque_tokens_still_import() -> None:
    auth = {"tokens": {"access_token": "opaque-at", "refresh_token": "opaque-rt"}}
    imported = parse_auth(auth, "auth.json")
    assert imported.credentials.access_token == "opaque-at"
    assert (imported.plan, imported.email, imported.credentials.account_id) == (
        Plan.UNKNOWN,
        "",
        "",
    )
    assert imported.credentials.expires_at is None


def test_token_whitespace_is_trimmed() -> None:
    auth = {"tokens": {"access_token": "  at-1\n", "refresh_token": "\trt-1 "}}
    creds = parse_auth(auth, "auth.json").credentials
    assert (creds.access_token, creds.refresh_token) == ("at-1", "rt-1")


def test_a_snake_case_value_wins_over_an_empty_one() -> None:
    auth = {"tokens": {"access_token": "", "accessToken": "at-camel", "refresh_token": "rt"}}
    assert parse_auth(auth, "auth.json").credentials.access_token == "at-camel"


def test_email_falls_back_to_the_access_token() -> None:
    auth = {
        "tokens": {
            "id_token": make_id_token("acct-1").split(".")[0] + ".e30.sig",  # no claims
            "access_token": make_jwt({"email": "at@example.com"}),
            "refresh_token": "rt",
        }
    }
    assert parse_auth(auth, "auth.json").email == "at@example.com"


# -- errors: clear, and never a token --------------------------------------------------------


API_KEY = "sk-proj-secretsecretsecret"


def broken(change: str) -> tuple[Any, str, list[str]]:
    """An auth.json broken in one way, a word its error must contain, and its secrets."""
    auth: dict[str, Any] = make_auth_json("acct-1", "plus")
    tokens = auth["tokens"]
    hidden = [tokens["access_token"], tokens["refresh_token"], tokens["id_token"], API_KEY]
    data: Any = auth
    if change == "api_key_only":
        data, word = {"OPENAI_API_KEY": API_KEY, "tokens": None}, "API key"
    elif change == "no_tokens":
        del auth["tokens"]
        word = "tokens"
    elif change == "tokens_not_object":
        auth["tokens"] = list(tokens.values())
        word = "tokens"
    elif change == "no_access_token":
        del tokens["access_token"]
        word = "access token"
    elif change == "blank_access_token":
        tokens["access_token"] = "   "
        word = "access token"
    elif change == "no_refresh_token":
        tokens["refresh_token"] = None
        word = "refresh token"
    elif change == "access_token_not_text":
        tokens["access_token"] = 12345
        word = "access token"
    elif change == "header_in_refresh_token":  # a CR/LF would start an HTTP header of its own
        tokens["refresh_token"] += "\r\nX-Evil: injected"
        word = "refresh token"
    elif change == "account_id_too_long":
        tokens["account_id"] = "a" * 201
        word = "account id"
    elif change == "list":
        data, word = [auth], "JSON object"
    elif change == "string":
        data, word = tokens["access_token"], "JSON object"
    else:
        raise AssertionError(change)
    return data, word, hidden


CHANGES = [
    "api_key_only",
    "no_tokens",
    "tokens_not_object",
    "no_access_token",
    "blank_access_token",
    "no_refresh_token",
    "access_token_not_text",
    "header_in_refresh_token",
    "account_id_too_long",
    "list",
    "string",
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_wrong_document_is_a_clear_error_without_secrets(
    write_auth: WriteAuth, change: str
) -> None:
    data, word, hidden = broken(change)
    path = write_auth(json.dumps(data))
    with pytest.raises(AuthFileError) as caught:
        read_auth_file(path)
    message = str(caught.value)
    assert str(path) in message and word in message
    assert "\n" not in message
    for secret in hidden:
        assert secret not in message
        assert secret[-12:] not in message


@pytest.mark.parametrize(
    ("content", "word"),
    [
        ("", "not JSON"),
        ("{not json", "not JSON"),
        ('{"tokens": {"access_token": "eyJsecret.eyJsecret.sig", ', "not JSON"),
        ('{"tokens": {\n"access_token": "x", oops}}', "at line 2, column 22"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # too deep for the parser
        # Over sys.get_int_max_str_digits: json raises a bare ValueError, without a line.
        ('{"tokens": {},\n"n": ' + "7" * 5000 + "}", "a number too long (5,000 digits) at line 2"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        ('{"tokens": {"access_token": "caf\u00e9"}}'.encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_json_is_a_clear_error(
    write_auth: WriteAuth, content: str | bytes, word: str
) -> None:
    path = write_auth(content)
    with pytest.raises(AuthFileError) as caught:
        read_auth_file(path)
    message = str(caught.value)
    assert str(path) in message and word in message
    assert "secret" not in message
    assert len(message) < 300
    assert "line ?" not in message and "codec" not in message  # no raw Python wording


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "auth.json"
    with pytest.raises(AuthFileError, match="no such file") as caught:
        read_auth_file(path)
    assert str(path) in str(caught.value)


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="directory") as caught:
        read_auth_file(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.symlink_to(path)  # a symlink loop: unreadable even for root
    with pytest.raises(AuthFileError, match="cannot read") as caught:
        read_auth_file(path)
    assert str(path) in str(caught.value)


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    os.mkfifo(path)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_auth_file, path)
        try:
            error = reading.exception(timeout=10)
        finally:
            if not reading.done():  # stuck in open(): a writer frees it, and the test fails
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(error, AuthFileError)
    assert str(error) == f"{path}: is a named pipe (FIFO), not an auth.json file"


def test_a_device_is_refused_unread() -> None:
    with pytest.raises(AuthFileError, match=r"^/dev/null: is a device, not an auth\.json file$"):
        read_auth_file(Path("/dev/null"))  # /dev/zero or a tape would be worse to read


def padded(size: int) -> str:
    """A valid auth.json of exactly `size` bytes."""
    doc = make_auth_json("acct-big", "plus")
    doc["padding"] = ""
    doc["padding"] = "x" * (size - len(json.dumps(doc)))
    text = json.dumps(doc)
    assert len(text) == size
    return text


def test_an_auth_json_over_one_mib_is_refused(write_auth: WriteAuth) -> None:
    assert read_auth_file(write_auth(padded(MAX_BYTES))).plan is Plan.PLUS  # the bound itself
    path = write_auth(padded(MAX_BYTES + 1))
    with pytest.raises(AuthFileError) as caught:
        read_auth_file(path)
    assert str(caught.value) == (
        f"{path}: too large for an auth.json (1,048,577 bytes; the limit is 1 MiB, "
        "a login is a few KB)"
    )
