"""A pooled set-up for end-to-end tests: the fake backend, a state file with accounts imported
through the real CLI, and a real mitmdump running the router (plus the test redirect)."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addon import placeholder
from tests.e2e.harness import (
    REPO_ROOT,
    HttpResult,
    Mitmdump,
    codex_headers,
    fake_proxy,
    https_request,
    responses_request,
)
from tests.fakes.codex_backend import FakeCodexBackend
from tests.fakes.jwt import make_auth_json

ROUTER = "addon/router.py"
READY = "quota-router ready"
RESPONSES = "https://chatgpt.com/backend-api/codex/responses"


@dataclass(frozen=True)
class Spec:
    """One pooled account: name, plan, and the usage the fake starts it with."""

    name: str
    plan: str = "plus"
    primary: float = 0.0
    secondary: float = 0.0
    exp: int | None = None  # access-token expiry; None: in 10 days


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon", "--state", str(state), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def import_accounts(
    fake: FakeCodexBackend, state: Path, specs: Sequence[Spec]
) -> dict[str, dict[str, Any]]:
    """Register each account with the fake and import its auth.json with the real CLI."""
    auths = {}
    for spec in specs:
        auth = make_auth_json(f"acct-{spec.name}", spec.plan, exp=spec.exp)
        fake.register_auth_json(auth, primary_used=spec.primary, secondary_used=spec.secondary)
        path = state.parent / f"{spec.name}.auth.json"
        path.write_text(json.dumps(auth))
        done = cli(state, "import", str(path), "--name", spec.name)
        assert done.returncode == 0, done.stderr
        auths[spec.name] = auth
    return auths


@dataclass
class PoolEnv:
    fake: FakeCodexBackend
    proxy: Mitmdump
    state: Path
    auths: dict[str, dict[str, Any]]
    client: dict[str, Any] = field(default_factory=placeholder.auth_json)

    def token(self, name: str) -> str:
        return str(self.auths[name]["tokens"]["access_token"])

    def headers(self, **extra: str) -> dict[str, str]:
        return codex_headers(self.client, **extra)

    def turn(self, session: str = "conversation-1", **extra: str) -> HttpResult:
        """One Codex-style turn over HTTP: a zstd POST answered with SSE."""
        headers = self.headers(**{"session-id": session, "accept": "text/event-stream", **extra})
        return https_request(
            self.proxy.port,
            self.proxy.ca_path,
            "POST",
            RESPONSES,
            headers=headers,
            body=responses_request(),
            zstd=True,
        )

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> HttpResult:
        return https_request(
            self.proxy.port, self.proxy.ca_path, "GET", url, headers=headers or self.headers()
        )

    def status(self, wait_for: Any = None, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """`status --json` by account name; with `wait_for`, poll until it holds (the proxy
        saves in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            done = cli(self.state, "status", "--json")
            assert done.returncode == 0, done.stderr
            rows = {row["name"]: row for row in json.loads(done.stdout)["accounts"]}
            if wait_for is None or wait_for(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def fake_refresh(self, body: Mapping[str, Any]) -> int:
        """POST straight to the fake's token endpoint (as another client would), no proxy."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.fake.url}/oauth/token",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as e:
            return e.code

    def account_of(self, token_or_id: str | None) -> str | None:
        """The pooled account name a token or account id belongs to."""
        for name, auth in self.auths.items():
            tokens = auth["tokens"]
            if token_or_id in (tokens["account_id"], tokens["access_token"]):
                return name
        return None


@contextlib.contextmanager
def pool_env(
    tmp_path: Path,
    specs: Sequence[Spec],
    options: Mapping[str, str] | None = None,
    fake: FakeCodexBackend | None = None,
    scripts: Sequence[str] = (),
    **proxy_kwargs: Any,
) -> Iterator[PoolEnv]:
    """The router, then `scripts` (test-only ones), then the redirect to the fake."""
    state = tmp_path / "router-state.toml"
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(fake or FakeCodexBackend())
        auths = import_accounts(backend, state, specs)
        opts = {
            "router_state": str(state),
            "router_token_url": f"{backend.url}/oauth/token",
            **(options or {}),
        }
        proxy = stack.enter_context(
            fake_proxy(
                backend.address, [ROUTER, *scripts], opts, ready_pattern=READY, **proxy_kwargs
            )
        )
        yield PoolEnv(backend, proxy, state, auths)
