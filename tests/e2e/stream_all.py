"""Test-only mitmproxy script: stream every answer that no earlier script streams.

Loaded after the router, it makes mitmproxy stream (and log its "Streaming response from" line
for) the traffic the router leaves alone, next to the Codex turns the router streams itself.
"""

from __future__ import annotations

from mitmproxy import http


class StreamAll:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and not flow.response.stream:
            flow.response.stream = True


addons = [StreamAll()]
