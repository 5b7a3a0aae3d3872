"""Bench-only mitmproxy script, loaded BEFORE addon/router.py.

In reverse mode every request arrives as http://127.0.0.1:PORT/...; the router only routes
https://chatgpt.com:443/backend-api/codex/... So, in `requestheaders` (before the router's
`request` hook), make the request look like the real thing, and remember where it was going:
bench/shims/to_upstream.py (loaded after the router) points it back at the local upstream.
"""

from __future__ import annotations

from mitmproxy import http

ORIGIN = "bench_origin"


class ToChatGPT:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        flow.metadata[ORIGIN] = (req.scheme, req.host, req.port)
        req.scheme, req.host, req.port = "https", "chatgpt.com", 443


addons = [ToChatGPT()]
