"""addon/messages.py: the one-pass header helpers and the request snapshot agree with what
mitmproxy's own (slower) accessors give."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addon import messages


def test_header_lookups_see_what_mitmproxys_headers_give() -> None:
    headers = http.Headers(
        [(b"Session-Id", b"s1"), (b"accept", b"a"), (b"ACCEPT", b"b"), (b"x-\xff", b"\xfe")]
    )
    found = messages.header_dict(headers)
    assert found["session-id"] == headers["session-id"] == "s1"
    assert found["accept"] == headers["accept"] == "a, b"  # repeated names are joined
    assert found["x-\udcff"] == headers["x-\udcff"]
    assert set(found) == {"session-id", "accept", "x-\udcff"}


def test_setting_several_headers_at_once_is_setting_each() -> None:
    fields = [(b"Authorization", b"Bearer x"), (b"accept", b"a"), (b"authorization", b"dup")]
    one_pass, each = http.Headers(fields), http.Headers(fields)
    messages.set_headers(one_pass, {b"authorization": b"Bearer y", b"chatgpt-account-id": b"id"})
    each["authorization"] = "Bearer y"
    each["chatgpt-account-id"] = "id"
    assert one_pass.fields == each.fields
    assert one_pass.fields[0] == (b"Authorization", b"Bearer y")  # in place, its spelling kept


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("Bearer eyJhbGciOi.payload.signature-9xQa", "Bearer …9xQa"),
        ("Bearer …9xQa", "Bearer …9xQa"),  # masked once only
        ("Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),  # not a bearer token: not ours
    ],
)
def test_only_a_bearer_token_is_masked(before: str, after: str) -> None:
    headers = http.Headers(authorization=before, accept="a")
    messages.mask_bearer(headers)
    assert headers["authorization"] == after and headers["accept"] == "a"


def test_once_loads_on_the_first_call_only() -> None:
    calls: list[int] = []
    get = messages.once(lambda: calls.append(1) or b"body")
    assert calls == []
    assert get() == get() == b"body"
    assert calls == [1]


def test_a_body_whose_encoding_lies_comes_as_sent() -> None:
    response = tutils.tresp(content=b"")
    response.headers["content-encoding"] = "gzip"
    response.raw_content = b"not gzip at all"
    assert messages.body(response) == b"not gzip at all"
    assert messages.body(tutils.tresp(content=b"")) == b""


def test_the_pristine_copy_does_not_change_with_the_request() -> None:
    request = tutils.treq(headers=http.Headers(authorization="Bearer client", host="chatgpt.com"))
    request.trailers = http.Headers(done="yes")
    copy = messages.snapshot(request)
    request.headers["authorization"] = "Bearer pooled"
    request.headers.add("x-new", "1")
    request.trailers["done"] = "changed"
    request.host, request.content = "elsewhere", b"other"
    assert copy.headers["authorization"] == "Bearer client" and "x-new" not in copy.headers
    assert copy.trailers is not None and copy.trailers["done"] == "yes"
    assert copy.host != "elsewhere" and copy.content != b"other"
