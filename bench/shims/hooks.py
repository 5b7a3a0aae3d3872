"""Bench-only mitmproxy script: the router's shape, doing nothing.

The router is one script that streams SSE and has these hooks. This one streams as the `stream`
baseline does (bench/shims/stream.py) and has the same hooks, all empty: it shows what mitmproxy
itself charges for such a script (calling its hooks for every flow), apart from what the router
does in them. `addon-N` against `hooks` is the router's own work. Loaded beside `stream.py`
instead, it would be one script more than the router is, and mitmproxy charges every script
for every event (~0.2 M instructions a request): the router's own work would look that much
smaller.
"""

from __future__ import annotations

from mitmproxy import http
from stream import Stream  # mitmproxy puts this script's folder on the path while loading it


class Hooks(Stream):
    async def request(self, flow: http.HTTPFlow) -> None:
        pass

    # responseheaders and client_disconnected: Stream's, which the router's also do.

    async def response(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        pass

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        pass


class Page:
    """The dashboard's hook (addon/dashboard.py): one more addon with a `request` hook."""

    async def request(self, flow: http.HTTPFlow) -> None:
        pass


addons = [Hooks(), Page()]
