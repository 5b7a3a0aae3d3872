"""mitmproxy's "Streaming response from HOST." line, kept out of the log for Codex's clients.

mitmproxy logs that line at INFO for every answer it streams. The router streams every Codex
turn, so the line would come once per turn, saying nothing the flow's own line does not. And a
log record is not free: mitmproxy hands each one to every addon on the event loop, ~0.15 ms a
record, 5 % of the proxy's throughput under load (bench/). Only the line for connections whose
answers the router streams is dropped; other clients' lines, and every other line, pass.
"""

from __future__ import annotations

import logging
from typing import Any

# mitmproxy's connection handler logs what its protocol layers say on this logger, with the
# client's address as the record's `client` (mitmproxy 11 and 12 alike).
LOGGER = "mitmproxy.proxy.server"
NOTICE = "Streaming response from "

Peername = tuple[Any, ...]  # a client's address as mitmproxy gives it: (host, port[, ...])


class StreamNotices(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.clients: set[Peername] = set()

    def quiet(self, client: Peername | None) -> None:
        """The router streams answers to this client (a peername): drop mitmproxy's line."""
        if client is not None:
            self.clients.add(client)

    def forget(self, client: Peername | None) -> None:
        if client is not None:
            self.clients.discard(client)

    def filter(self, record: logging.LogRecord) -> bool:
        message, client = record.msg, getattr(record, "client", None)
        return not (
            isinstance(message, str)
            and message.startswith(NOTICE)
            and isinstance(client, tuple)
            and client in self.clients
        )

    def install(self) -> None:
        logging.getLogger(LOGGER).addFilter(self)

    def remove(self) -> None:
        logging.getLogger(LOGGER).removeFilter(self)
        self.clients.clear()
