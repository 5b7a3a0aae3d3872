"""Bench-only mitmproxy script: stream server-sent events, nothing else.

The fair baseline for the router: plain mitmdump buffers an SSE answer until it ends (the client
sees nothing for seconds); the router streams it. This is the smallest script that streams too,
and that, as the router does, keeps mitmproxy's "Streaming response from HOST." line out of the
log (addon/streamnotice.py): that line costs about as much as the router's own work, so a
baseline that paid for it would hide what the router costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mitmproxy import connection, http

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # mitmproxy puts only this script's folder on the path
    sys.path.insert(0, _ROOT)

from addon.streamnotice import StreamNotices  # noqa: E402


class Stream:
    def __init__(self) -> None:
        self.notices = StreamNotices()

    def load(self, loader: object) -> None:
        self.notices.install()

    def done(self) -> None:
        self.notices.remove()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True
            self.notices.quiet(flow.client_conn.peername)

    def client_disconnected(self, client: connection.Client) -> None:
        self.notices.forget(client.peername)


addons = [Stream()]
