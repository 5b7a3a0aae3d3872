"""Bench-only mitmproxy script: the router's hooks, doing nothing.

Loaded with the `stream` baseline's scripts, it shows what mitmproxy itself charges for an
addon script with these hooks (calling them for every flow), apart from what the router does
in them: `addon-N` against `hooks` is the router's own work.
"""

from __future__ import annotations

from mitmproxy import http


class Hooks:
    async def request(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pass

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
