"""Test-only mitmproxy script: send chatgpt.com / auth.openai.com traffic to the local fake.

Load it AFTER the router: ``mitmdump -s addon/router.py -s tests/e2e/redirect.py
--set ssl_insecure=true --set connection_strategy=lazy`` with ``QR_FAKE_UPSTREAM=127.0.0.1:PORT``.

It redirects in the ``server_connect`` hook, i.e. only the TCP connection's address changes:
``flow.request.host`` / ``pretty_host`` / the Host header / SNI all stay ``chatgpt.com`` (or
``auth.openai.com``) in every hook of every addon, exactly as in production. That also covers
WebSocket handshakes and flows replayed by an addon (they open connections the same way). It
does not cover requests an addon sends on its own without going through mitmproxy.

``ssl_insecure`` is needed because the fake's certificate is self-signed.
"""

from __future__ import annotations

import logging
import os

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

# ab.chatgpt.com: the CLI's OTLP metrics; sent to the fake too so no test resolves real names.
REDIRECTED_HOSTS = frozenset({"chatgpt.com", "auth.openai.com", "ab.chatgpt.com"})

log = logging.getLogger(__name__)


def _fake_address() -> tuple[str, int] | None:
    value = os.environ.get("QR_FAKE_UPSTREAM", "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


class RedirectToFake:
    def __init__(self) -> None:
        self.target = _fake_address()

    def running(self) -> None:
        if self.target is None:
            log.warning("redirect: QR_FAKE_UPSTREAM is not set, nothing is redirected")
        else:
            log.info("redirect: ready, sending %s to %s:%d", sorted(REDIRECTED_HOSTS), *self.target)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server: connection.Server = data.server
        if self.target is None or server.address is None:
            return
        host, port = server.address
        if host in REDIRECTED_HOSTS and port == 443:
            server.address = self.target

    def request(self, flow: http.HTTPFlow) -> None:
        # Only for visibility in the log: the redirect itself happens in server_connect.
        if self.target is not None and flow.request.pretty_host in REDIRECTED_HOSTS:
            flow.metadata["qr_test_redirect"] = f"{self.target[0]}:{self.target[1]}"


addons = [RedirectToFake()]
