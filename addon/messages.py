"""mitmproxy's HTTP messages, read and changed cheaply: the per-request helpers the router uses.

mitmproxy's own accessors are general and slow on the hot path (each `headers[name]` scans
every header; `Request.copy()` serialises the whole request), so these do the few things the
router needs in one pass each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from addon.tokens import mask

BEARER = "Bearer "


def body(response: http.Response) -> bytes:
    """The decoded body; as sent when its content-encoding lies (never raises)."""
    if not response.raw_content:
        return b""  # a streamed answer keeps no body: no need to look for its encoding
    return response.get_content(strict=False) or b""


def header_dict(headers: http.Headers) -> dict[str, str]:
    """The headers as a plain dict with lower-case names, built in one pass: each lookup in
    mitmproxy's Headers scans every header, and a request needs a dozen lookups."""
    found: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        found[name] = f"{found[name]}, {value}" if name in found else value  # as Headers joins
    return found


def set_headers(headers: http.Headers, values: dict[bytes, bytes]) -> None:
    """`headers[name] = value` for several lower-case names in one pass (each assignment
    would scan and rebuild every header): the first header of each name gets the new value in
    place, later ones are dropped, missing names are appended."""
    fields, done = [], set()
    for name, value in headers.fields:
        key = name.lower()
        if key in values:
            if key in done:
                continue
            done.add(key)
            value = values[key]
        fields.append((name, value))
    fields.extend((key, value) for key, value in values.items() if key not in done)
    headers.fields = tuple(fields)


def mask_bearer(headers: http.Headers) -> None:
    """The Authorization header's bearer token masked (`…` and its last four characters),
    once: what flow files, HAR exports and mitmweb may keep of a pooled token."""
    for name, raw in headers.fields:
        if name.lower() == b"authorization":
            value = raw.decode("utf-8", "surrogateescape")
            if value.startswith(BEARER) and "…" not in value:
                masked = BEARER + mask(value[len(BEARER) :])
                set_headers(headers, {b"authorization": masked.encode("utf-8", "surrogateescape")})
            return


def once(load: Callable[[], bytes]) -> Callable[[], bytes]:
    """`load`, run on the first call only (functools.cache costs 10x more to set up)."""
    loaded: list[bytes] = []

    def get() -> bytes:
        if not loaded:
            loaded.append(load())
        return loaded[0]

    return get


def _shallow(obj: Any) -> Any:
    """copy.copy for a plain object, without copy's generic protocol (3x faster)."""
    twin = object.__new__(type(obj))
    twin.__dict__.update(obj.__dict__)
    return twin


def snapshot(request: http.Request) -> http.Request:
    """An independent copy of the request as it is now: Request.copy() goes through a full
    serialisation round trip with type checks (~80 us); every field but the headers and
    trailers is immutable, so sharing them is safe (a few us)."""
    copy = _shallow(request)
    copy.data = data = _shallow(request.data)
    # A header change replaces the tuple of fields: a shallow copy is an independent one.
    data.headers = _shallow(data.headers)
    if data.trailers is not None:
        data.trailers = _shallow(data.trailers)
    return copy


def json_response(status: int, content: dict[str, Any]) -> http.Response:
    return http.Response.make(status, json.dumps(content), {"content-type": "application/json"})
