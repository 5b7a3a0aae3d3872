"""Bench-only mitmproxy script: stream server-sent events, nothing else.

The fair baseline for the router: plain mitmdump buffers an SSE answer until it ends (the client
sees nothing for seconds); the router streams it. This is the smallest script that streams too.
"""

from __future__ import annotations

from mitmproxy import http


class Stream:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


addons = [Stream()]
