"""Bench-only mitmproxy script, loaded AFTER addon/router.py (see to_chatgpt.py).

Its `request` hook runs after the router's: the router has chosen an account, rewritten the
auth headers and taken the flow as routed (flow.metadata["quota_router"]), so every later
router hook (usage from headers, the SSE tap, the response hook, saving) works as in
production. Here only the destination goes back to the local plain-HTTP upstream, which the
server connection then uses (mitmproxy connects after the `request` hooks).
"""

from __future__ import annotations

from mitmproxy import http

ORIGIN = "bench_origin"


class ToUpstream:
    def request(self, flow: http.HTTPFlow) -> None:
        origin = flow.metadata.get(ORIGIN)
        if origin is not None:
            flow.request.scheme, flow.request.host, flow.request.port = origin


addons = [ToUpstream()]
