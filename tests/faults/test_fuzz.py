"""Fuzzing the parsers that take outside input and are not fuzzed in tests/unit: the auth.json
importer, the state loader, and the upstream-answer helpers of routing.py, tokens.py and
refresh.py. Every input yields a value or a clear error (AuthFileError / StateFileError, one
line, no token in it), never another exception; and a value that comes out is usable: storable,
in range, finite, and safe to put in an HTTP header.

(The header, SSE, WebSocket-frame and 429-body parsers already have property tests in
tests/unit/test_usage.py and tests/unit/test_sse.py.)
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon import refresh, report, routing, selection, tokens
from addon.authjson import AuthFileError, parse_auth, read_auth_file
from addon.pool import Pool
from addon.selection import Strategy
from addon.state import Account, Credentials, State
from addon.statefile import StateFile, StateFileError, dumps, parse
from tests.fakes.jwt import make_auth_json, make_jwt

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PATH = Path("/fuzz/router-state.toml")
NOW = 1_800_000_000.0
HEADER_SAFE = re.compile(r"[!-~]+")

# -- building blocks ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Strings a token field might hold: plausible, odd, or hostile (CR/LF, spaces, surrogates).
weird_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=40
) | st.sampled_from(["", " ", "\r\n", "abc\r\nX-Evil: 1", "\ud800", "tok en", "\x00", "é"])
claims = st.fixed_dictionaries(
    {},
    optional={
        "exp": json_values,
        "email": json_values,
        "https://api.openai.com/auth": st.fixed_dictionaries(
            {},
            optional={
                "chatgpt_account_id": json_values | weird_text,
                "chatgpt_plan_type": json_values,
            },
        )
        | json_values,
    },
)
jwt_like = st.builds(make_jwt, claims) | weird_text


@st.composite
def auth_documents(draw: st.DrawFn) -> Any:
    """An auth.json document: a real one with some fields replaced, or anything at all."""
    if draw(st.booleans()):
        return draw(json_values)
    document: dict[str, Any] = make_auth_json("acct-fuzz")
    fields = document["tokens"]
    for key in ("access_token", "refresh_token", "id_token", "account_id"):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            fields[key] = draw(jwt_like)
        elif choice == 2:
            fields[key] = draw(json_values)
        elif choice == 3:
            del fields[key]
    if draw(st.booleans()):
        camel = {"access_token": "accessToken", "refresh_token": "refreshToken"}
        for snake, camel_key in camel.items():
            if snake in fields:
                fields[camel_key] = fields.pop(snake)
    if draw(st.booleans()):
        document["tokens"] = draw(json_values)
    return document


def token_strings(document: Any) -> list[str]:
    """Every string in the document at least 12 long: none may show in an error message."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and len(node.strip()) >= 12:
            found.append(node.strip())

    walk(document)
    return found


def assert_clear(message: str, secrets: list[str]) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    for secret in secrets:
        assert secret not in message


# -- the auth.json importer --------------------------------------------------------------------


@FUZZ
@given(auth_documents())
def test_parse_auth_gives_storable_credentials_or_a_clear_error(document: Any) -> None:
    try:
        imported = parse_auth(document, "auth.json")
    except AuthFileError as e:
        assert_clear(str(e), token_strings(document))
        return
    credentials = imported.credentials
    for value in (credentials.access_token, credentials.refresh_token):
        assert HEADER_SAFE.fullmatch(value), "a token that cannot go in a header"
    for value in (credentials.id_token, credentials.account_id):
        assert value == "" or HEADER_SAFE.fullmatch(value)
    assert imported.email.isprintable() and len(imported.email) <= 200
    exp = credentials.expires_at
    assert exp is None or 0 <= exp < 2**40
    # Storable: the account goes through the state file and comes back identical.
    state = State(accounts=[Account(name="fuzz", email=imported.email, credentials=credentials)])
    assert parse(dumps(state), PATH) == state


@FUZZ
@given(st.binary(max_size=300) | auth_documents().map(lambda d: json.dumps(d).encode()))
def test_read_auth_file_on_any_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-auth.json"
    path.write_bytes(raw)
    try:
        read_auth_file(path)
    except AuthFileError as e:
        assert_clear(str(e), [])


# -- the state loader -------------------------------------------------------------------------


def good_state() -> State:
    account = Account(
        name="work",
        credentials=Credentials(
            access_token="eyJhbGciOiJub25lIn0.eyJmdXp6IjoidG9rZW4ifQ.c2lnbmF0dXJlLWZ1eno",
            refresh_token="rt_fuzz_secret_refresh_token_value",
            account_id="acct-work",
            expires_at=int(NOW) + 3600,
            updated_at=NOW - 5,
        ),
        priority=3,
        requests=7,
        last_used_at=int(NOW),
    )
    return State(accounts=[account, Account(name="spare", credentials=account.credentials)])


GOOD = dumps(good_state())
SECRETS = [
    "eyJhbGciOiJub25lIn0.eyJmdXp6IjoidG9rZW4ifQ.c2lnbmF0dXJlLWZ1eno",
    "rt_fuzz_secret_refresh_token_value",
]
LINES = GOOD.splitlines(keepends=True)
edge_values = st.sampled_from(
    [
        "nan",
        "inf",
        "-inf",
        "-1",
        "1e308",
        "99999999999999999999999",
        "-0.0",
        '""',
        '"x"',
        "true",
        "[]",
        "{}",
        "1979-05-27T07:32:00Z",
        "0x10",
        '"' + "a" * 300 + '"',
        '"\\u0000"',
        '"\\uD800"',
        "[" * 2000 + "]" * 2000,
        "{a=" * 600 + "1" + "}" * 600,
    ]
)


@st.composite
def mutated_files(draw: st.DrawFn) -> str:
    """The good file with a few lines deleted, duplicated, cut, or given another value."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])
        elif kind == 2:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif " = " in lines[i]:
            key = lines[i].split(" = ", 1)[0]
            value = draw(edge_values | st.text(max_size=20))
            lines[i] = f"{key} = {value}\n"
        if not lines:
            break
    return "".join(lines)


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**64), 2**64)
anything = numbers | st.text(max_size=20) | st.booleans() | st.none()
window = st.fixed_dictionaries(
    {"used_percent": anything},
    optional={"window_minutes": anything, "reset_at": anything, "observed_at": anything},
)
account_tables = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "bad name", ""]) | st.text(max_size=8),
        "credentials": st.fixed_dictionaries(
            {"access_token": st.sampled_from(SECRETS) | st.text(max_size=10)},
            optional={"expires_at": anything, "updated_at": anything},
        ),
    },
    optional={
        "id": st.sampled_from(["id-1", "id-2"]) | st.text(max_size=5),
        "plan": anything,
        "status": st.sampled_from(["active", "paused", "reauth_required", "gone"]),
        "status_at": anything,
        "priority": anything,
        "max_primary_percent": anything,
        "max_secondary_percent": anything,
        "primary": window,
        "secondary": window,
        "block": st.fixed_dictionaries({"until": anything, "reason": anything}),
        "backoff": st.fixed_dictionaries({"errors": anything, "until": anything}),
        "requests": anything,
        "last_used_at": anything,
        "added_at": anything,
    },
)
documents = st.fixed_dictionaries(
    {"accounts": st.lists(account_tables, max_size=3)},
    optional={
        "version": anything,
        "conversations": st.lists(
            st.fixed_dictionaries(
                {"key": st.text(max_size=5), "account_id": st.text(max_size=5)},
                optional={"seen_at": anything},
            ),
            max_size=2,
        ),
    },
)


def _toml(document: dict[str, Any]) -> str:
    def clean(node: Any) -> Any:  # TOML has no null
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [clean(v) for v in node if v is not None]
        return node

    try:
        return tomli_w.dumps(clean(document))
    except (TypeError, ValueError):  # e.g. an integer TOML cannot hold: write it anyway
        return json.dumps(document)


def check_state(state: State) -> None:
    """A loaded state is in range, finite, storable, and usable by the proxy and the CLI."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, float):
            assert math.isfinite(node), where
            assert node >= 0 or where.endswith(".priority"), where
            if where.endswith("_percent"):
                assert 0 <= node <= 100, where
        elif (
            isinstance(node, int)
            and not isinstance(node, bool)
            and where.endswith(("reset_at", "until", "last_used_at", "expires_at"))
        ):
            assert 0 <= node < 2**40, where

    walk(state.model_dump(mode="json"), "state")
    assert parse(dumps(state), PATH) == state  # storable as it is
    pool = Pool(state)
    rows = pool.rows(NOW)
    report.table(rows)
    json.dumps(rows)
    for strategy in Strategy:
        pool.choose(strategy, NOW)
        selection.choose(strategy, state.accounts, NOW, pool.rng)


def check_loader(text: str) -> None:
    try:
        state = parse(text, PATH)
    except StateFileError as e:
        message = str(e)
        assert message.startswith(str(PATH)), message
        assert_clear(message, SECRETS)
        return
    check_state(state)


@FUZZ
@given(st.text(max_size=400))
def test_the_loader_on_any_text(text: str) -> None:
    check_loader(text)


@FUZZ
@given(mutated_files())
def test_the_loader_on_a_mutated_state_file(text: str) -> None:
    check_loader(text)


@FUZZ
@given(documents)
def test_the_loader_on_state_shaped_documents_with_edge_values(document: dict[str, Any]) -> None:
    check_loader(_toml(document))


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        GOOD.replace("requests = 7", "requests = " + "[" * 5000 + "]" * 5000),
    ],
)
def test_the_loader_on_absurdly_nested_toml(text: str) -> None:
    """tomllib recurses: without care this is a RecursionError, not a StateFileError."""
    with pytest.raises(StateFileError, match="nested too deeply"):
        parse(text, PATH)


def test_statefile_read_turns_a_deep_file_into_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "router-state.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(StateFileError):
        StateFile(path).read()


@pytest.mark.parametrize("field", ["status_at", "settings_at"])
def test_a_timestamp_far_in_the_future_is_refused(field: str) -> None:
    text = re.sub(rf"(?m)^{field} = .*$", f"{field} = 1e300", GOOD, count=1)
    with pytest.raises(StateFileError, match=field):
        parse(text, PATH)


# -- upstream answers: routing, tokens, refresh ------------------------------------------------

bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"[" * 5_000, b'{"error": ' * 2_000, b"\xff\xfe", b""])
)


@FUZZ
@given(st.integers(100, 599), bodies)
def test_retry_reason_never_raises(status: int, body: bytes) -> None:
    reason = routing.retry_reason(status, body)
    assert reason is None or (isinstance(reason, str) and len(reason) < 100)


@FUZZ
@given(bodies, st.text(max_size=10), st.text(max_size=10))
def test_map_account_ids_never_raises(body: bytes, pooled: str, client: str) -> None:
    mapped = routing.map_account_ids(body, pooled, client)
    assert mapped is None or json.loads(mapped) is not None


def test_map_account_ids_on_json_nested_near_the_limit() -> None:
    body = b"[" * 990 + b'"p"' + b"]" * 990  # json.loads copes, a recursive walk may not
    assert routing.map_account_ids(body, "p", "c") in (None, b"[" * 990 + b'"c"' + b"]" * 990)


@FUZZ
@given(bodies)
def test_request_body_scans_never_raise(body: bytes) -> None:
    key = routing.prompt_cache_key(body)
    assert key is None or len(key) <= 200
    routing.has_account_bound_refs(body)


@FUZZ
@given(jwt_like)
def test_jwt_helpers_never_raise(token: str) -> None:
    assert isinstance(tokens.jwt_claims(token), dict)
    exp = tokens.token_expiry(token)
    assert exp is None or 0 <= exp < 2**40
    masked = tokens.mask(token)
    assert len(token) <= 12 or token[:-4] not in masked


@FUZZ
@given(bodies | st.sampled_from([b'{"access_token": "\\ud800"}']), st.integers(200, 599))
def test_token_endpoint_answers_are_always_classified(body: bytes, status: int) -> None:
    old = Credentials(access_token="at-old", refresh_token="rt-old", updated_at=NOW)
    result = refresh.parse_success(body, old, time.time())
    assert isinstance(result, refresh.Refreshed | refresh.RefreshFailed)
    failed = refresh.classify(status, body)
    assert isinstance(failed.reason, str) and "rt-old" not in failed.reason
