"""sse.SSETap: reports `codex.rate_limits` events from a stream it passes through unchanged."""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.sse import MAX_PENDING, SSETap
from addon.usage import from_event

RESET = 1_800_003_600


def rate_limits(primary: float = 12.5, secondary: float = 40.0) -> dict[str, Any]:
    return {
        "type": "codex.rate_limits",
        "plan_type": "plus",
        "rate_limits": {
            "primary": {"used_percent": primary, "window_minutes": 300, "reset_at": RESET},
            "secondary": {"used_percent": secondary, "window_minutes": 10080, "reset_at": RESET},
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        "metered_limit_name": "codex",
    }


def delta(text: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": "msg_1", "delta": text}


CREATED = {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}
COMPLETED = {"type": "response.completed", "response": {"id": "resp_1", "status": "completed"}}


def sse(events: list[dict[str, Any]], eol: bytes = b"\n") -> bytes:
    """A Responses API stream: `event:` and `data:` lines, a blank line after each event."""
    out = b""
    for event in events:
        out += b"event: " + event["type"].encode() + eol
        out += b"data: " + json.dumps(event).encode() + eol + eol
    return out


STREAM_EVENTS = [CREATED, rate_limits(), delta("Hel"), delta("lo"), COMPLETED]
STREAM = sse(STREAM_EVENTS)


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run(tap: SSETap, chunks: list[bytes]) -> list[bytes]:
    """Feeds the chunks as mitmproxy would; returns what the tap handed on."""
    out = []
    for chunk in chunks:
        returned = tap(chunk)
        assert returned == chunk
        out.append(returned)
    return out


def tap_with(encoding: str = "") -> tuple[SSETap, Recorder]:
    recorder = Recorder()
    return SSETap(recorder, encoding), recorder


# -- plain streams ---------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_reports_the_rate_limits_event(eol: bytes) -> None:
    tap, seen = tap_with()
    run(tap, [sse(STREAM_EVENTS, eol)])
    assert seen.events == [rate_limits()]


def test_passes_every_chunk_through_unchanged() -> None:
    tap, _ = tap_with()
    chunks = split(STREAM, [1, 17, 100, 101, 250])
    assert b"".join(run(tap, chunks)) == STREAM


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_an_event_split_at_any_byte_is_reported_once(eol: bytes) -> None:
    stream = sse(STREAM_EVENTS, eol)
    for cut in range(len(stream) + 1):
        tap, seen = tap_with()
        run(tap, split(stream, [cut]))
        assert seen.events == [rate_limits()], f"cut at byte {cut}"


def test_a_stream_fed_one_byte_at_a_time() -> None:
    tap, seen = tap_with()
    run(tap, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert seen.events == [rate_limits()]


def test_an_event_is_reported_as_soon_as_it_ends() -> None:
    tap, seen = tap_with()
    first = sse([CREATED, rate_limits()])
    run(tap, [first])
    assert seen.events == [rate_limits()]  # before the rest of the stream arrives
    run(tap, [sse([delta("x"), COMPLETED])])
    assert seen.events == [rate_limits()]


def test_reports_several_rate_limit_events_in_order() -> None:
    tap, seen = tap_with()
    run(tap, [sse([rate_limits(10), delta("a"), rate_limits(20), rate_limits(30)])])
    assert [e["rate_limits"]["primary"]["used_percent"] for e in seen.events] == [10, 20, 30]


def test_joins_data_split_over_several_lines() -> None:
    body = json.dumps(rate_limits(), indent=1).encode().splitlines()
    event = b"event: codex.rate_limits\n" + b"".join(b"data: " + line + b"\n" for line in body)
    tap, seen = tap_with()
    run(tap, [event + b"\n"])
    assert seen.events == [rate_limits()]


def test_reads_data_without_a_space_and_ignores_comments_ids_and_retry() -> None:
    event = (
        b": keep-alive\nid: 7\nretry: 1000\nevent: codex.rate_limits\ndata:"
        + json.dumps(rate_limits()).encode()
        + b"\n\n"
    )
    tap, seen = tap_with()
    run(tap, [event])
    assert seen.events == [rate_limits()]


def test_ignores_events_without_the_marker_and_broken_rate_limit_data() -> None:
    stream = sse([CREATED, delta("hi"), COMPLETED])
    stream += b"event: codex.rate_limits\ndata: {not json\n\n"
    stream += b"event: codex.rate_limits\ndata: [1, 2]\n\n"
    tap, seen = tap_with()
    run(tap, [stream])
    assert seen.events == []


def test_an_event_that_only_mentions_the_marker_is_left_to_from_event() -> None:
    tap, seen = tap_with()
    run(tap, [sse([delta("see codex.rate_limits"), rate_limits()])])
    assert seen.events == [delta("see codex.rate_limits"), rate_limits()]
    assert [from_event(e, 1_800_000_000.0) is not None for e in seen.events] == [False, True]


def test_an_unfinished_event_at_the_end_is_not_reported() -> None:
    tap, seen = tap_with()
    run(tap, [sse([rate_limits()])[:-1]])  # the blank line never came
    assert seen.events == []


def test_a_huge_unfinished_event_is_dropped_and_later_events_still_found() -> None:
    tap, seen = tap_with()
    filler = b"data: " + b"x" * 4096 + b"\n"
    for _ in range(MAX_PENDING // len(filler) + 8):
        tap(filler)
        assert len(tap.pending) <= MAX_PENDING
    run(tap, [b"\n", sse([rate_limits(77)])])
    assert seen.events == [rate_limits(77)]


def test_a_failing_callback_never_breaks_the_stream() -> None:
    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("bug in the consumer")

    tap = SSETap(explode)
    chunks = split(STREAM + STREAM, [50, 300, 600])
    assert b"".join(run(tap, chunks)) == STREAM + STREAM


# -- compressed streams ----------------------------------------------------------------------


def gzip_stream(data: bytes) -> bytes:
    return gzip.compress(data)


def zstd_stream(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS = {
    "gzip": gzip_stream,
    "x-gzip": gzip_stream,
    "deflate": zlib.compress,
    "zstd": zstd_stream,
    "br": brotli.compress,
}


@pytest.mark.parametrize("encoding", sorted(COMPRESSORS))
def test_reads_a_compressed_stream_and_passes_the_compressed_bytes(encoding: str) -> None:
    body = COMPRESSORS[encoding](STREAM)
    tap, seen = tap_with(encoding)
    chunks = split(body, list(range(0, len(body), 7)))
    assert b"".join(run(tap, chunks)) == body
    assert seen.events == [rate_limits()]
    assert not tap.broken


def test_the_content_encoding_is_matched_loosely() -> None:
    tap, seen = tap_with(" GZip ")
    run(tap, [gzip_stream(STREAM)])
    assert seen.events == [rate_limits()]


def gzip_flushed(parts: list[bytes]) -> Iterator[bytes]:
    """A gzip stream flushed after each part, as a streaming server sends it."""
    compressor = zlib.compressobj(wbits=31)
    for part in parts:
        yield compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH)
    yield compressor.flush()


def zstd_flushed(parts: list[bytes]) -> Iterator[bytes]:
    compressor = zstandard.ZstdCompressor().compressobj()
    for part in parts:
        yield compressor.compress(part) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    yield compressor.flush()


@pytest.mark.parametrize(("encoding", "flushed"), [("gzip", gzip_flushed), ("zstd", zstd_flushed)])
def test_a_compressed_event_is_reported_before_the_stream_ends(
    encoding: str, flushed: Callable[[list[bytes]], Iterator[bytes]]
) -> None:
    parts = [sse([CREATED]), sse([rate_limits()]), sse([delta("hi"), COMPLETED])]
    chunks = list(flushed(parts))
    tap, seen = tap_with(encoding)
    run(tap, chunks[:2])
    assert seen.events == [rate_limits()]
    assert b"".join(run(tap, chunks[2:])) == b"".join(chunks[2:])
    assert seen.events == [rate_limits()]


def test_reads_a_zstd_stream_of_several_frames() -> None:
    body = zstd_stream(sse([CREATED, rate_limits(10)])) + zstd_stream(sse([rate_limits(20)]))
    tap, seen = tap_with("zstd")
    run(tap, split(body, [5, len(body) // 2]))
    assert [e["rate_limits"]["primary"]["used_percent"] for e in seen.events] == [10, 20]


@pytest.mark.parametrize("encoding", ["compress", "snappy", "gzip, br"])
def test_an_unsupported_encoding_passes_bytes_and_reads_nothing(encoding: str) -> None:
    tap, seen = tap_with(encoding)
    assert tap.broken
    assert b"".join(run(tap, [STREAM[:10], STREAM[10:]])) == STREAM
    assert seen.events == []


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "br", "deflate"])
def test_a_corrupt_compressed_stream_passes_bytes_and_stops_reading(encoding: str) -> None:
    tap, seen = tap_with(encoding)
    garbage = [b"\x00not compressed at all\xff" * 4, STREAM]
    assert b"".join(run(tap, garbage)) == b"".join(garbage)
    assert tap.broken
    assert seen.events == []


# -- property tests --------------------------------------------------------------------------


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=30)


@given(st.binary(max_size=2000), st.data())
def test_any_bytes_in_any_chunks_pass_through_unchanged(data: bytes, draw: st.DataObject) -> None:
    chunks = split(data, draw.draw(cuts_for(data)))
    tap, seen = tap_with()
    assert b"".join(run(tap, chunks)) == data
    assert len(tap.pending) <= MAX_PENDING
    assert all(isinstance(e, dict) for e in seen.events)


@given(
    st.sampled_from(["gzip", "deflate", "zstd", "br"]),
    st.binary(max_size=500),
    st.data(),
)
def test_any_bytes_with_any_encoding_never_raise(
    encoding: str, data: bytes, draw: st.DataObject
) -> None:
    chunks = split(data, draw.draw(cuts_for(data)))
    tap, _ = tap_with(encoding)
    assert b"".join(run(tap, chunks)) == data


def assert_reported(seen: Recorder, events: list[dict[str, Any]]) -> None:
    """Every rate-limit event, in order. The tap may also hand on another event that merely
    mentions the marker (the router's `from_event` drops those), but never a mangled one."""
    wanted = [e for e in events if e["type"] == "codex.rate_limits"]
    assert [e for e in seen.events if e["type"] == "codex.rate_limits"] == wanted
    assert all(e in events for e in seen.events)


texts = st.text(st.characters(codec="utf-8"), max_size=30)
stream_events = st.lists(
    st.one_of(
        st.builds(
            rate_limits,
            st.floats(0, 100, allow_nan=False),
            st.floats(0, 100, allow_nan=False),
        ),
        st.builds(delta, texts),
        st.just(CREATED),
    ),
    max_size=8,
)


@settings(max_examples=150)
@given(stream_events, st.sampled_from([b"\n", b"\r\n"]), st.data())
def test_events_in_any_chunks_are_all_reported_in_order(
    events: list[dict[str, Any]], eol: bytes, draw: st.DataObject
) -> None:
    stream = sse([*events, COMPLETED], eol)
    chunks = split(stream, draw.draw(cuts_for(stream)))
    tap, seen = tap_with()
    assert b"".join(run(tap, chunks)) == stream
    assert_reported(seen, events)


# Streams with every line ending and a few rate-limit events, cut anywhere and after blank lines.
pieces = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"\n\n", b"data: ", b"data:", b"event: x", b"{}", b"1"]
    + [b"data: " + json.dumps(rate_limits(p)).encode() for p in (1.0, 2.5)]
)


@settings(max_examples=300)
@given(st.lists(pieces, max_size=40), st.data())
def test_chunks_of_whole_events_read_like_the_stream_read_at_once(
    parts: list[bytes], draw: st.DataObject
) -> None:
    """Chunks ending in a blank line skip the tap's parsing when they hold no rate-limit
    event: it reports what reading the whole stream at once reports."""
    stream = b"".join(parts)
    after_blank = [i + 2 for i in range(len(stream)) if stream[i : i + 2] == b"\n\n"]
    cuts = draw.draw(st.lists(st.sampled_from(after_blank), max_size=10)) if after_blank else []
    cuts += draw.draw(cuts_for(stream).map(lambda c: c[:3]))
    whole, at_once = tap_with()
    whole.feed(stream)
    tap, seen = tap_with()
    assert b"".join(run(tap, split(stream, cuts))) == stream
    assert seen.events == at_once.events


@given(stream_events, st.sampled_from(["gzip", "zstd"]), st.data())
def test_compressed_events_in_any_chunks_are_all_reported(
    events: list[dict[str, Any]], encoding: str, draw: st.DataObject
) -> None:
    body = COMPRESSORS[encoding](sse(events, b"\r\n"))
    chunks = split(body, draw.draw(cuts_for(body)))
    tap, seen = tap_with(encoding)
    assert b"".join(run(tap, chunks)) == body
    assert_reported(seen, events)
