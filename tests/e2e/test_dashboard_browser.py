"""The dashboard in a real headless Chromium, through a real mitmdump running the router.

Chromium uses the proxy (`--proxy-server`) and opens http://router.mitm/, exactly like an
operator's browser would; it is driven over the DevTools protocol on a pipe (tests/e2e/browser.py).
Needs Debian's `chromium` package; skipped, saying so, when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from addon import placeholder, report
from tests.e2e.browser import CHROMIUM, HeadlessChromium
from tests.e2e.harness import Mitmdump, codex_headers, fake_proxy, https_request, responses_request
from tests.fakes.codex_backend import FakeCodexBackend
from tests.fakes.jwt import make_auth_json

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]

DASHBOARD = "http://router.mitm/"
RESPONSES_URL = "https://chatgpt.com/backend-api/codex/responses"
# name, plan, 5 h used % at the fake upstream
ACCOUNTS = (("alpha", "plus", 30.0), ("bravo", "pro", 5.0), ("charlie", "team", 0.0))

ROWS_JS = """[...document.querySelectorAll('#accounts tbody tr[data-account]')].map(tr => ({
  name: tr.dataset.account,
  plan: tr.querySelector('.plan').textContent,
  state: tr.querySelector('.state .pill').textContent,
  requests: tr.querySelector('.requests').textContent,
  primary: tr.querySelector('.primary .pct').textContent,
  next: tr.classList.contains('is-next'),
}))"""


def row_matches(name: str, condition: str) -> str:
    """JS that returns the row of `name` once `condition` (on the row `x`) holds, else null."""
    return f"(() => {{ const x = {ROWS_JS}.find(x => x.name === {json.dumps(name)});" + (
        f" return x && ({condition}) ? x : null; }})()"
    )


@dataclass
class Pool:
    proxy: Mitmdump
    fake: FakeCodexBackend
    state: Path
    secrets: list[str]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "addon", "--state", str(self.state), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    state = tmp_path / "router-state.toml"
    secrets: list[str] = []
    with FakeCodexBackend() as fake:
        for name, plan, used in ACCOUNTS:
            auth = make_auth_json(f"acct-{name}", plan, email=f"{name}@example.com")
            fake.register_auth_json(auth, primary_used=used)
            secrets += [auth["tokens"]["access_token"], auth["tokens"]["refresh_token"]]
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(auth))
            command = ["import", str(path), "--name", name]
            subprocess.run(
                [sys.executable, "-m", "addon", "--state", str(state), *command],
                check=True,
                capture_output=True,
            )
        options = {"router_state": str(state)}
        with fake_proxy(
            fake.address, ["addon/router.py"], options, ready_pattern="quota-router ready"
        ) as proxy:
            yield Pool(proxy, fake, state, secrets)


def routed_turn(pool: Pool) -> None:
    client = placeholder.auth_json()
    headers = codex_headers(client, **{"session-id": "browser-test", "accept": "text/event-stream"})
    result = https_request(
        pool.proxy.port,
        pool.proxy.ca_path,
        "POST",
        RESPONSES_URL,
        headers=headers,
        body=responses_request(),
        zstd=True,
    )
    assert result.status == 200, result.body[:300]


def test_dashboard_shows_the_pool_and_follows_it_live(pool: Pool) -> None:
    with HeadlessChromium(pool.proxy.proxy_url) as browser:
        browser.open(DASHBOARD)
        rows: list[dict[str, Any]] = browser.wait_for(
            f"(() => {{ const r = {ROWS_JS}; return r.length === 3 ? r : null; }})()"
        )
        assert [(r["name"], r["plan"]) for r in rows] == [(n, p) for n, p, _ in ACCOUNTS]
        assert all(r["state"] == "active" and r["requests"] == "0" for r in rows)
        assert all(r["primary"] == "no report yet" for r in rows)
        assert browser.evaluate("document.getElementById('strategy').textContent") == "fill_first"
        assert browser.evaluate("document.getElementById('saving').hidden") is True
        # Nothing known yet: fill_first takes the first name.
        assert [r["name"] for r in rows if r["next"]] == ["alpha"]

        # One routed Codex turn: the page shows its request and the usage the upstream reported.
        routed_turn(pool)
        alpha = browser.wait_for(row_matches("alpha", "x.requests === '1' && x.primary === '40 %'"))
        assert alpha["next"] is True
        assert pool.fake.turns[-1].account_id == "acct-alpha"
        browser.wait_for("!!document.querySelector('#chart-primary g[data-account=alpha] path')")

        # A change made with the CLI while the proxy runs shows up too.
        pool.cli("pause", "bravo")
        browser.wait_for(row_matches("bravo", "x.state === 'paused'"))

        # The page never holds a credential, nor does anything it fetched.
        page = browser.evaluate("document.documentElement.outerHTML")
        api = browser.evaluate(
            "Promise.all(['/api/status', '/api/history'].map(u => fetch(u).then(r => r.text())))"
        )
        assert "alpha@example.com" in page
        for text in (page, *api):
            for secret in pool.secrets:
                assert secret not in text

        # The page words times like the CLI's table.
        now = 1_800_000_000
        for seconds in (5, 59, 60, 3599, 3600, 2 * 3600 + 14 * 60, 3 * 86400 + 7200):
            shown = browser.evaluate(f"until({now + seconds}, {now})")
            assert shown == report.until(now + seconds, now)
