"""The dashboard: the WSGI app (page, JSON endpoints, no secrets) and the mitmproxy addon."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy.test import taddons, tflow

from addon import dashboard
from addon.dashboard import Dashboard, history_payload, make_app, status_payload

NOW = 1_800_000_000.0
SECRET = "eyJhbGciOiJSUzI1NiJ9.secret-access-token.sig"
REFRESH = "rt_secret_refresh_0123456789"


def row(name: str = "work", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "plan": "plus",
        "email": f"{name}@example.com",
        "status": "active",
        "reason": "",
        "primary_used_percent": 42.0,
        "primary_reset_at": int(NOW) + 3600,
        "secondary_used_percent": 7.5,
        "secondary_reset_at": int(NOW) + 86400,
        "blocked_until": None,
        "requests": 3,
        "last_used_at": int(NOW) - 60,
        "priority": 0,
        "max_primary_percent": 100.0,
        "max_secondary_percent": 100.0,
        "next_pick": True,
        "history": [(NOW - 120, 30.0, 7.0), (NOW - 60, 42.0, None)],
    }
    return base | changes


def snapshot(*rows: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "now": NOW,
        "strategy": "fill_first",
        "state_file": "/home/me/.mitmproxy/router-state.toml",
        "saving_error": None,
        "accounts": list(rows) or [row()],
    } | top


def leaky_snapshot() -> dict[str, Any]:
    """A snapshot that wrongly carries credentials: none of them may reach the page."""
    secrets = {
        "access_token": SECRET,
        "refresh_token": REFRESH,
        "credentials": {"access_token": SECRET, "refresh_token": REFRESH},
    }
    return snapshot(
        row("work", **secrets), row("home", next_pick=False), token=SECRET, **{"x": REFRESH}
    )


def call(
    app: Callable[..., Any], path: str, method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(),
    }
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


# -- the WSGI app ---------------------------------------------------------------------------


def test_status_endpoint_serves_the_pool_as_json() -> None:
    status, headers, body = call(make_app(lambda: snapshot()), "/api/status")
    assert status == "200 OK"
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    data = json.loads(body)
    assert data["strategy"] == "fill_first"
    assert data["now"] == NOW
    assert data["saving_error"] is None
    assert data["state_file"].endswith("router-state.toml")
    [account] = data["accounts"]
    assert account["name"] == "work"
    assert account["primary_used_percent"] == 42.0
    assert account["next_pick"] is True
    assert "history" not in account  # the chart has its own endpoint
    assert set(account) == set(dashboard.ROW_FIELDS)


def test_history_endpoint_serves_points_per_account() -> None:
    _, _, body = call(make_app(lambda: snapshot(row("a"), row("b", history=[]))), "/api/history")
    data = json.loads(body)
    assert data["max_age"] == 6 * 3600
    assert [a["name"] for a in data["accounts"]] == ["a", "b"]
    assert data["accounts"][0]["points"] == [[NOW - 120, 30.0, 7.0], [NOW - 60, 42.0, None]]
    assert data["accounts"][1]["points"] == []


def test_history_payload_tolerates_missing_and_odd_values() -> None:
    snap = snapshot(row("a", history=None), row("b", history=[(NOW, float("nan"), True), (1,)]))
    accounts = history_payload(snap)["accounts"]
    assert accounts == [{"name": "a", "points": []}, {"name": "b", "points": [[NOW, None, None]]}]


def test_etag_ignores_the_clock_and_follows_the_pool() -> None:
    first = status_payload(snapshot())
    later = status_payload(snapshot(now=NOW + 5))
    assert first["etag"] == later["etag"]
    changed = status_payload(snapshot(row(requests=4)))
    assert changed["etag"] != first["etag"]
    saving = status_payload(snapshot(saving_error="disk full"))
    assert saving["etag"] != first["etag"]


@pytest.mark.parametrize("path", ["/", "/api/status", "/api/history", "/nope"])
def test_no_credential_ever_leaves(path: str) -> None:
    _, _, body = call(make_app(leaky_snapshot), path)
    text = body.decode()
    assert SECRET not in text
    assert REFRESH not in text
    assert "access_token" not in text
    assert "refresh_token" not in text


def test_page_is_self_contained_with_the_expected_structure() -> None:
    status, headers, body = call(make_app(lambda: snapshot()), "/")
    page = body.decode()
    assert status == "200 OK"
    assert headers["content-type"].startswith("text/html")
    for needle in (
        'id="accounts"',  # the table of accounts
        'id="saving"',  # the banner when saving fails
        'id="pool-banner"',  # the banner when nothing can serve
        'id="strategy"',
        'id="chart-primary"',
        'id="chart-secondary"',
        "/api/status",
        "/api/history",
        "<style>",
    ):
        assert needle in page, needle
    # Nothing from elsewhere: no CDN, no external script, style sheet, font or image.
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", page)
    # The page holds no data of its own: it reads it from the API.
    assert "work@example.com" not in page


def test_page_policy_allows_exactly_its_inline_script() -> None:
    _, headers, body = call(make_app(lambda: snapshot()), "/")
    policy = headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", body.decode(), flags=re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy


def test_the_page_reads_no_snapshot() -> None:
    def boom() -> dict[str, Any]:
        raise AssertionError("the page itself needs no snapshot")

    status, _, _ = call(make_app(boom), "/")
    assert status == "200 OK"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/missing", "404 Not Found"),
        ("POST", "/api/status", "405 Method Not Allowed"),
        ("DELETE", "/", "405 Method Not Allowed"),
        ("GET", "/favicon.ico", "204 No Content"),
        ("GET", "/index.html", "200 OK"),
    ],
)
def test_other_requests(method: str, path: str, expected: str) -> None:
    status, _, _ = call(make_app(lambda: snapshot()), path, method)
    assert status == expected


# -- the addon inside mitmproxy -------------------------------------------------------------


def dashboard_flow(path: str, host: str = "router.mitm") -> Any:
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "http", host, 80
    flow.request.path = path
    flow.request.headers["host"] = host
    return flow


def serve(addon: Dashboard, flow: Any) -> Any:
    async def run() -> None:
        with taddons.context(addon):
            await addon.request(flow)

    asyncio.run(run())
    return flow


def test_addon_serves_router_mitm_only() -> None:
    addon = Dashboard(lambda: snapshot())
    flow = serve(addon, dashboard_flow("/api/status"))
    assert flow.response.status_code == 200
    assert json.loads(flow.response.content)["accounts"][0]["name"] == "work"
    other = serve(addon, dashboard_flow("/api/status", host="chatgpt.com"))
    assert other.response is None


def test_addon_serves_router_mitm_named_by_the_host_header_alone() -> None:
    """Transparent mode: the request's host is an address; the Host header names the page."""
    addon = Dashboard(lambda: snapshot())
    flow = dashboard_flow("/api/status", host="10.0.0.1")
    flow.request.headers["host"] = "router.mitm:80"
    assert serve(addon, flow).response.status_code == 200
    lookalike = dashboard_flow("/api/status", host="10.0.0.1")
    lookalike.request.headers["host"] = "router.mitm.example"
    assert serve(addon, lookalike).response is None


def test_addon_page_and_token_safety_through_mitmproxy() -> None:
    addon = Dashboard(leaky_snapshot)
    for path in ("/", "/api/status", "/api/history"):
        flow = serve(addon, dashboard_flow(path))
        assert flow.response.status_code == 200
        assert SECRET.encode() not in flow.response.content
        assert REFRESH.encode() not in flow.response.content


def test_long_poll_answers_as_soon_as_the_pool_changes() -> None:
    calls = {"n": 0}

    def changing() -> dict[str, Any]:
        calls["n"] += 1
        return snapshot(row(requests=3 if calls["n"] < 3 else 4))

    addon = Dashboard(changing)
    addon.poll_step = 0.01
    etag = status_payload(snapshot(row(requests=3)))["etag"]
    flow = serve(addon, dashboard_flow(f"/api/status?wait={etag}"))
    data = json.loads(flow.response.content)
    assert data["accounts"][0]["requests"] == 4
    assert data["etag"] != etag
    assert calls["n"] == 3


def test_long_poll_gives_up_after_its_time() -> None:
    addon = Dashboard(lambda: snapshot())
    addon.long_poll, addon.poll_step = 0.05, 0.01
    etag = status_payload(snapshot())["etag"]
    flow = serve(addon, dashboard_flow(f"/api/status?wait={etag}"))
    assert json.loads(flow.response.content)["etag"] == etag


def test_a_stale_etag_answers_at_once() -> None:
    calls = {"n": 0}

    def counted() -> dict[str, Any]:
        calls["n"] += 1
        return snapshot()

    addon = Dashboard(counted)
    addon.long_poll = 30.0
    flow = serve(addon, dashboard_flow("/api/status?wait=0000000000000000"))
    assert flow.response.status_code == 200
    assert calls["n"] == 1


def test_a_failing_snapshot_is_a_500_not_a_crash() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("pool exploded")

    flow = serve(Dashboard(broken), dashboard_flow("/api/status"))
    assert flow.response.status_code == 500
    assert b"pool exploded" not in flow.response.content
