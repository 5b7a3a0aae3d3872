"""usage.py: what the upstream says about an account's usage (headers, events, errors, frames).

Good inputs use the shapes in docs/codex-protocol.md; bad ones must never raise and never give
a NaN, an infinity, a percent outside 0..100 or a reset time in the past or absurdly far.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from mitmproxy.http import Headers

from addon import usage
from addon.usage import (
    DEFAULT_COOLDOWN,
    MAX_RESET_AHEAD,
    LimitHit,
    UsageReport,
    WindowReport,
    from_error_body,
    from_event,
    from_frame,
    from_headers,
    from_status_429,
    percent,
    reset_time,
    seconds_ahead,
)

NOW = 1_800_000_000.0
P_RESET = int(NOW) + 2 * 3600
S_RESET = int(NOW) + 4 * 86400


def codex_headers(**overrides: str) -> dict[str, str]:
    """Response headers as the Codex backend sends them (lower-case, like HTTP/2)."""
    headers = {
        "x-codex-primary-used-percent": "12.5",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": str(P_RESET),
        "x-codex-secondary-used-percent": "40",
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-at": str(S_RESET),
        "x-codex-credits-has-credits": "false",
        "x-codex-credits-unlimited": "false",
        "x-codex-credits-balance": "0",
        "x-codex-active-limit": "codex",
    }
    headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return headers


def rate_limits_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "codex.rate_limits",
        "plan_type": "plus",
        "rate_limits": {
            "primary": {"used_percent": 12.5, "window_minutes": 300, "reset_at": P_RESET},
            "secondary": {"used_percent": 40.0, "window_minutes": 10080, "reset_at": S_RESET},
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        "metered_limit_name": "codex",
    }
    event.update(fields)
    return event


def usage_limit_body(**fields: Any) -> bytes:
    error: dict[str, Any] = {
        "type": "usage_limit_reached",
        "message": "You've hit your usage limit.",
        "plan_type": "plus",
        "resets_at": S_RESET,
        "resets_in_seconds": S_RESET - int(NOW),
    }
    error.update(fields)
    return json.dumps({"error": {k: v for k, v in error.items() if v is not None}}).encode()


EXPECTED = UsageReport(
    WindowReport(12.5, 300, P_RESET), WindowReport(40.0, 10080, S_RESET), plan=None
)


# -- range checks shared by the property tests -----------------------------------------------


def check_window(window: WindowReport | None, now: float) -> None:
    if window is None:
        return
    assert isinstance(window.used_percent, float)
    assert math.isfinite(window.used_percent)
    assert 0.0 <= window.used_percent <= 100.0
    assert math.copysign(1.0, window.used_percent) == 1.0  # not -0.0
    if window.window_minutes is not None:
        assert isinstance(window.window_minutes, int)
        assert 1 <= window.window_minutes <= 10**6
    if window.reset_at is not None:
        assert isinstance(window.reset_at, int)
        assert now < window.reset_at <= math.ceil(now + MAX_RESET_AHEAD)


def check_report(report: UsageReport | None, now: float) -> None:
    if report is None:
        return
    assert isinstance(report, UsageReport)
    assert report.primary is not None or report.secondary is not None
    check_window(report.primary, now)
    check_window(report.secondary, now)
    assert report.plan is None or isinstance(report.plan, str)


def check_hit(hit: LimitHit | None, now: float) -> None:
    if hit is None:
        return
    assert isinstance(hit, LimitHit)
    assert isinstance(hit.kind, str)
    assert isinstance(hit.resets_at, int)
    assert now < hit.resets_at <= math.ceil(now + MAX_RESET_AHEAD)
    assert hit.plan is None or isinstance(hit.plan, str)
    check_report(hit.usage, now)


# -- percent / reset_time / seconds_ahead ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12.5", 12.5),
        (" 12.5 ", 12.5),
        (b"12.5", 12.5),
        (0, 0.0),
        ("0", 0.0),
        (100, 100.0),
        (42, 42.0),
        ("100.0", 100.0),
        ("100.0001", 100.0),  # over 100 means exhausted: clamped
        (250, 100.0),
        ("1e300", 100.0),
    ],
)
def test_percent_parses_and_clamps(raw: object, expected: float) -> None:
    value = percent(raw)
    assert value == expected
    assert isinstance(value, float)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "abc",
        "12%",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        float("nan"),
        float("inf"),
        float("-inf"),
        "1e400",  # overflows to inf
        10**400,  # too big for a float
        -1,
        "-0.5",
        True,
        False,
        [50],
        {"v": 50},
        b"\xff\xfe",
        "1" * 41,  # absurdly long
    ],
)
def test_percent_refuses_bad_values(raw: object) -> None:
    assert percent(raw) is None


@pytest.mark.parametrize("raw", ["-0", "-0.0", -0.0, " -0 "])
def test_percent_of_minus_zero_is_plain_zero(raw: object) -> None:
    value = percent(raw)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0  # never shown as "-0%"


def test_reset_time_accepts_the_future_within_366_days() -> None:
    assert reset_time(NOW + 60, NOW) == int(NOW) + 60
    assert reset_time(str(int(NOW) + 60), NOW) == int(NOW) + 60
    assert reset_time(NOW + 0.2, NOW) == int(NOW) + 1  # rounded up: never earlier than said
    assert reset_time(NOW + MAX_RESET_AHEAD, NOW) == int(NOW) + MAX_RESET_AHEAD


@pytest.mark.parametrize(
    "raw",
    [NOW, NOW - 1, 0, -5, NOW + MAX_RESET_AHEAD + 1, 1e18, "soon", True, float("nan"), None],
)
def test_reset_time_refuses_the_past_and_the_absurd(raw: object) -> None:
    assert reset_time(raw, NOW) is None


def test_seconds_ahead_counts_from_now() -> None:
    assert seconds_ahead(90, NOW) == int(NOW) + 90
    assert seconds_ahead("90", NOW) == int(NOW) + 90
    assert seconds_ahead(MAX_RESET_AHEAD, NOW) == int(NOW) + MAX_RESET_AHEAD


@pytest.mark.parametrize("raw", [0, -1, MAX_RESET_AHEAD + 1, float("inf"), "x", False, None])
def test_seconds_ahead_refuses_bad_values(raw: object) -> None:
    assert seconds_ahead(raw, NOW) is None


@pytest.mark.parametrize("raw", [1e-9, 5e-324, 1e-300])
def test_seconds_ahead_of_a_tiny_delay_is_still_after_now(raw: float) -> None:
    # now + 1e-9 == now in floating point: the result must still lie ahead
    at = seconds_ahead(raw, NOW)
    assert at is not None
    assert at > NOW


# -- from_headers ----------------------------------------------------------------------------


def test_from_headers_reads_both_windows() -> None:
    assert from_headers(codex_headers(), NOW) == EXPECTED


def test_from_headers_reads_mitmproxy_headers_case_insensitively() -> None:
    headers = Headers(
        [
            (b"X-Codex-Primary-Used-Percent", b"55.5"),
            (b"X-Codex-Primary-Window-Minutes", b"300"),
            (b"X-Codex-Primary-Reset-At", str(P_RESET).encode()),
        ]
    )
    assert from_headers(headers, NOW) == UsageReport(WindowReport(55.5, 300, P_RESET), None)


def test_from_headers_with_only_one_window() -> None:
    headers = {"x-codex-secondary-used-percent": "99.5"}
    assert from_headers(headers, NOW) == UsageReport(None, WindowReport(99.5, None, None))


def test_from_headers_without_usage_is_none() -> None:
    assert from_headers({"content-type": "text/event-stream"}, NOW) is None
    assert from_headers({}, NOW) is None


def test_from_headers_ignores_other_limit_families() -> None:
    other = {
        "x-codex-other-primary-used-percent": "100",
        "x-codex-other-primary-reset-at": str(P_RESET),
        "x-gpt-5-codex-mini-primary-used-percent": "100",
        "x-gpt-5-codex-mini-secondary-used-percent": "100",
    }
    assert from_headers(other, NOW) is None
    assert from_headers(codex_headers() | other, NOW) == EXPECTED


def test_from_headers_keeps_the_percent_when_the_reset_time_is_bad() -> None:
    for bad in ("0", str(int(NOW) - 10), str(int(NOW) + MAX_RESET_AHEAD + 10), "nan", "soon"):
        report = from_headers(codex_headers(x_codex_primary_reset_at=bad), NOW)
        assert report is not None and report.primary is not None
        assert report.primary == WindowReport(12.5, 300, None)


def test_from_headers_clamps_and_drops_bad_percents() -> None:
    report = from_headers(
        codex_headers(x_codex_primary_used_percent="130", x_codex_secondary_used_percent="NaN"),
        NOW,
    )
    assert report == UsageReport(WindowReport(100.0, 300, P_RESET), None)


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "1e7", "inf"])
def test_from_headers_drops_a_bad_window_length(bad: str) -> None:
    report = from_headers(codex_headers(x_codex_primary_window_minutes=bad), NOW)
    assert report is not None and report.primary == WindowReport(12.5, None, P_RESET)


# -- from_event ------------------------------------------------------------------------------


def test_from_event_reads_a_rate_limits_event() -> None:
    assert from_event(rate_limits_event(), NOW) == UsageReport(
        EXPECTED.primary, EXPECTED.secondary, "plus"
    )


def test_from_event_without_a_family_name_is_the_main_family() -> None:
    event = rate_limits_event()
    del event["metered_limit_name"]
    assert from_event(event, NOW) == UsageReport(EXPECTED.primary, EXPECTED.secondary, "plus")


@pytest.mark.parametrize(
    "family",
    [{"metered_limit_name": "gpt-5-codex-mini"}, {"metered_limit_name": "other"}],
)
def test_from_event_ignores_other_limit_families(family: dict[str, str]) -> None:
    assert from_event(rate_limits_event(**family), NOW) is None


def test_from_event_ignores_another_family_named_by_limit_name() -> None:
    event = rate_limits_event(limit_name="gpt-5-codex-mini")
    del event["metered_limit_name"]
    assert from_event(event, NOW) is None


def test_from_event_falls_back_to_reset_after_seconds() -> None:
    event = rate_limits_event(
        rate_limits={"primary": {"used_percent": 80, "reset_after_seconds": 600}}
    )
    assert from_event(event, NOW) == UsageReport(
        WindowReport(80.0, None, int(NOW) + 600), None, "plus"
    )


@pytest.mark.parametrize(
    "event",
    [
        None,
        "codex.rate_limits",
        [rate_limits_event()],
        rate_limits_event(type="response.completed"),
        rate_limits_event(rate_limits=None),
        rate_limits_event(rate_limits=[1, 2]),
        rate_limits_event(rate_limits={}),
        rate_limits_event(rate_limits={"primary": {"used_percent": "NaN"}}),
        rate_limits_event(rate_limits={"primary": 50, "secondary": [50]}),
    ],
)
def test_from_event_is_none_for_other_or_empty_events(event: object) -> None:
    assert from_event(event, NOW) is None


def test_from_event_drops_a_non_string_plan() -> None:
    report = from_event(rate_limits_event(plan_type=7), NOW)
    assert report is not None and report.plan is None


# -- from_error_body / from_status_429 -------------------------------------------------------


def test_from_error_body_reads_a_usage_limit() -> None:
    assert from_error_body(usage_limit_body(), NOW) == LimitHit(
        "usage_limit_reached", S_RESET, "plus", None
    )


def test_from_error_body_accepts_text() -> None:
    hit = from_error_body(usage_limit_body().decode(), NOW)
    assert hit is not None and hit.resets_at == S_RESET


def test_from_error_body_uses_resets_in_seconds_without_resets_at() -> None:
    hit = from_error_body(usage_limit_body(resets_at=None, resets_in_seconds=3600), NOW)
    assert hit is not None and hit.resets_at == int(NOW) + 3600


def test_from_error_body_uses_resets_in_seconds_when_resets_at_is_in_the_past() -> None:
    hit = from_error_body(usage_limit_body(resets_at=int(NOW) - 5, resets_in_seconds=30), NOW)
    assert hit is not None and hit.resets_at == int(NOW) + 30


@pytest.mark.parametrize(
    "fields",
    [
        {"resets_at": None, "resets_in_seconds": None},
        {"resets_at": int(NOW) + MAX_RESET_AHEAD + 5, "resets_in_seconds": -1},
        {"resets_at": "tomorrow", "resets_in_seconds": True},
    ],
)
def test_from_error_body_without_a_usable_reset_blocks_for_the_default_cooldown(
    fields: dict[str, Any],
) -> None:
    hit = from_error_body(usage_limit_body(**fields), NOW)
    assert hit is not None and hit.resets_at == int(NOW) + DEFAULT_COOLDOWN


@pytest.mark.parametrize(
    "kind",
    [
        "usage_limit_reached",
        "rate_limit_exceeded",
        "insufficient_quota",
        "usage_not_included",
        "quota_exceeded",
    ],
)
def test_from_error_body_knows_limit_and_quota_types(kind: str) -> None:
    hit = from_error_body(usage_limit_body(type=kind), NOW)
    assert hit is not None and hit.kind == kind


def test_from_error_body_reads_the_kind_from_code() -> None:
    body = {"error": {"type": "invalid_request_error", "code": "insufficient_quota"}}
    hit = from_error_body(json.dumps(body), NOW)
    assert hit == LimitHit("insufficient_quota", int(NOW) + DEFAULT_COOLDOWN, None, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"error": "usage_limit_reached"}',
        b'{"error": {"type": "server_error"}}',
        b'{"detail": "Unauthorized"}',
        b"\xff\xfe\xfd",
        b"[" * 100_000,
    ],
)
def test_from_error_body_is_none_for_other_bodies(body: bytes) -> None:
    assert from_error_body(body, NOW) is None


def test_from_status_429_always_blocks() -> None:
    assert from_status_429(b"", NOW) == LimitHit("rate_limited", int(NOW) + DEFAULT_COOLDOWN)
    assert from_status_429(b"<html>Too Many Requests</html>", NOW).resets_at == int(NOW) + 60
    assert from_status_429(usage_limit_body(), NOW).resets_at == S_RESET


# -- from_frame ------------------------------------------------------------------------------


def test_from_frame_reads_a_rate_limits_frame_as_text_or_bytes() -> None:
    expected = UsageReport(EXPECTED.primary, EXPECTED.secondary, "plus")
    frame = json.dumps(rate_limits_event())
    assert from_frame(frame, NOW) == expected
    assert from_frame(frame.encode(), NOW) == expected


def test_from_frame_ignores_another_family() -> None:
    frame = json.dumps(rate_limits_event(metered_limit_name="gpt-5-codex-mini"))
    assert from_frame(frame, NOW) is None


def test_from_frame_reads_a_usage_limit_error_frame_with_headers() -> None:
    frame = {
        "type": "error",
        "status_code": 429,
        "error": json.loads(usage_limit_body())["error"],
        "headers": {
            "X-Codex-Primary-Used-Percent": "100.0",
            "x-codex-primary-reset-at": P_RESET,  # not a string: still read
            "x-codex-secondary-used-percent": "63",
        },
    }
    hit = from_frame(json.dumps(frame), NOW)
    assert hit == LimitHit(
        "usage_limit_reached",
        S_RESET,
        "plus",
        UsageReport(WindowReport(100.0, None, P_RESET), WindowReport(63.0, None, None)),
    )


def test_from_frame_blocks_on_any_429_error_frame() -> None:
    frame = {"type": "error", "status_code": 429, "error": {"type": "weird"}}
    assert from_frame(json.dumps(frame), NOW) == LimitHit(
        "rate_limited", int(NOW) + DEFAULT_COOLDOWN
    )


def test_from_frame_reads_a_quota_error_frame() -> None:
    frame = {"type": "error", "status_code": 403, "error": {"code": "usage_not_included"}}
    hit = from_frame(json.dumps(frame), NOW)
    assert isinstance(hit, LimitHit) and hit.kind == "usage_not_included"


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"response.output_text.delta","delta":"hi"}',
        '{"type":"error","status_code":403,"error":{"type":"forbidden"}}',
        '{"type":"error","status_code":400,"error":{"code":"websocket_connection_limit_reached"}}',
        '{"type":"error","status_code":503,"error":{"type":"usage_limit_reached"}}',
        '{"type":"response.failed","error":{"type":"usage_limit_reached"}}',
        "codex.rate_limits but not JSON",
        "[1, 2, 3]",
        b"\x00\x01error",
        "",
    ],
)
def test_from_frame_ignores_other_frames(frame: str | bytes) -> None:
    assert from_frame(frame, NOW) is None


def test_loads_refuses_absurd_sizes_and_nesting() -> None:
    assert usage.loads(b" " * (4 * 1024 * 1024 + 1)) is None
    assert usage.loads("[" * 100_000 + "]" * 100_000) is None


# -- property tests: any input, never an exception, always in range --------------------------

# Strategies. `a | b` flattens nested one_of's into one list of branches, so a plausible value
# next to the many junk branches would be drawn rarely: `half(good)` draws it half the time.


def half(good: SearchStrategy[Any], junk: SearchStrategy[Any] | None = None) -> SearchStrategy[Any]:
    """`good` half the time, junk (any JSON-ish value by default) the other half."""
    return st.booleans().flatmap(lambda ok: good if ok else (values if junk is None else junk))


# Clocks around NOW, so that generated reset times fall on both sides of "now".
nows = st.floats(min_value=NOW - 10_000, max_value=NOW + 10_000)
numbers = st.one_of(
    st.floats(),  # includes NaN, +-inf, -0.0, subnormals
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(min_value=-5, max_value=150),
    st.floats(min_value=NOW - 100_000, max_value=NOW + MAX_RESET_AHEAD + 100_000),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, numbers.map(str), st.text(max_size=50))
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=6,
)
plausible_percents = st.floats(min_value=-5, max_value=150) | st.integers(-5, 150)
plausible_epochs = st.floats(min_value=NOW - 100_000, max_value=NOW + MAX_RESET_AHEAD + 100_000)
percents = half(plausible_percents | plausible_percents.map(str))
epochs = half(plausible_epochs | plausible_epochs.map(int) | plausible_epochs.map(str))
delays = half(st.floats(-10, MAX_RESET_AHEAD + 100) | st.integers(-10, 10**6))
header_values = half(
    percents.map(str) | epochs.map(str) | st.sampled_from(["100", "1e999", "nan", "-0", "300"]),
    st.text(max_size=45),
)
HEADER_NAMES = [
    f"x-codex-{which}-{field}"
    for which in ("primary", "secondary", "other-primary")
    for field in ("used-percent", "window-minutes", "reset-at")
]
header_dicts = st.builds(
    lambda known, other: other | known,
    st.fixed_dictionaries({}, optional=dict.fromkeys(HEADER_NAMES, header_values)),
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3),
)
windows = st.fixed_dictionaries(
    {"used_percent": percents, "reset_at": epochs},
    optional={"window_minutes": half(st.sampled_from([300, 10080])), "reset_after_seconds": delays},
)
families = st.one_of(
    st.just({}),
    st.just({"metered_limit_name": "codex"}),
    st.just({"limit_name": "codex"}),
    st.sampled_from([{"metered_limit_name": "other"}, {"limit_name": "gpt-5-codex-mini"}]),
    st.fixed_dictionaries({}, optional={"metered_limit_name": values, "limit_name": values}),
)
rate_limits = st.fixed_dictionaries({"primary": windows}, optional={"secondary": windows}) | (
    st.fixed_dictionaries({"secondary": windows}, optional={"primary": values})
)
events = st.builds(
    lambda kind, limits, plan, family: {"type": kind, "rate_limits": limits, **plan, **family},
    half(st.just("codex.rate_limits"), st.sampled_from(["error", "other", "codex"])),
    half(rate_limits),
    st.fixed_dictionaries({}, optional={"plan_type": half(st.just("plus"))}),
    families,
)
errors = st.fixed_dictionaries(
    {"type": half(st.sampled_from(sorted(usage.USAGE_LIMIT_TYPES | usage.QUOTA_TYPES)))},
    optional={
        "code": half(st.sampled_from(sorted(usage.QUOTA_TYPES))),
        "resets_at": epochs,
        "resets_in_seconds": delays,
        "plan_type": half(st.just("plus")),
    },
)
error_frames = st.fixed_dictionaries(
    {
        "type": st.just("error"),
        "status_code": half(st.sampled_from([429, 403, 500])),
        "error": half(errors),
    },
    optional={"headers": half(header_dicts)},
)


def dump(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity become the literals json.loads accepts


@given(header_dicts, nows)
def test_from_headers_never_raises_and_stays_in_range(headers: dict[str, str], now: float) -> None:
    check_report(from_headers(headers, now), now)


@given(values | events, nows)
def test_from_event_never_raises_and_stays_in_range(event: Any, now: float) -> None:
    check_report(from_event(event, now), now)


@given(st.binary(max_size=300) | half(errors).map(lambda e: dump({"error": e})), nows)
def test_from_error_body_never_raises_and_stays_in_range(body: bytes | str, now: float) -> None:
    check_hit(from_error_body(body, now), now)


@given(st.binary(max_size=300) | errors.map(lambda e: dump({"error": e}).encode()), nows)
def test_from_status_429_always_blocks_within_range(body: bytes, now: float) -> None:
    hit = from_status_429(body, now)
    assert hit is not None
    check_hit(hit, now)


@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        events.map(dump),
        error_frames.map(dump),
        error_frames.map(lambda f: dump(f).encode()),
    ),
    nows,
)
def test_from_frame_never_raises_and_stays_in_range(frame: str | bytes, now: float) -> None:
    result = from_frame(frame, now)
    if isinstance(result, LimitHit):
        check_hit(result, now)
    else:
        check_report(result, now)


@given(values)
def test_percent_is_always_none_or_in_range(value: Any) -> None:
    result = percent(value)
    assert result is None or (isinstance(result, float) and 0.0 <= result <= 100.0)
    assert result is None or math.copysign(1.0, result) == 1.0


@given(epochs | delays, nows)
def test_reset_times_are_always_ahead_and_near(value: Any, now: float) -> None:
    for result in (reset_time(value, now), seconds_ahead(value, now)):
        assert result is None or now < result <= math.ceil(now + MAX_RESET_AHEAD)
