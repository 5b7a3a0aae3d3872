"""Watch a server-sent-event stream for `codex.rate_limits` without holding it back.

The tap sees each chunk as mitmproxy forwards it, keeps only the unfinished tail of the current
event, and hands complete rate-limit events to a callback. Bytes pass through unchanged.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from addon import usage

logger = logging.getLogger(__name__)

MARKER = b"codex.rate_limits"
# An event that grows past this without ending is not a rate-limit event worth keeping.
MAX_PENDING = 256 * 1024
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


def _decoder(encoding: str) -> _Decoder | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    if encoding == "zstd":
        import zstandard

        try:  # a zstd stream may hold several frames (RFC 8878)
            return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        except TypeError:  # zstandard < 0.21
            return zstandard.ZstdDecompressor().decompressobj()
    if encoding == "br":
        import brotli

        return _Brotli(brotli.Decompressor())
    raise ValueError(f"unsupported content-encoding {encoding!r}")


class _Brotli:
    """brotli's Decompressor has `process`, not `decompress` (brotlicffi has both)."""

    def __init__(self, decompressor: Any) -> None:
        self._decompress = getattr(decompressor, "decompress", None) or decompressor.process

    def decompress(self, data: bytes) -> bytes:
        return self._decompress(data)  # type: ignore[no-any-return]


class SSETap:
    """A `flow.response.stream` callable: forwards chunks, reports rate-limit events."""

    def __init__(
        self, on_event: Callable[[dict[str, Any]], None], content_encoding: str = ""
    ) -> None:
        self.on_event = on_event
        self.pending = b""
        self.broken = False
        try:
            self.decoder = _decoder(content_encoding)
        except (ValueError, ImportError) as e:
            logger.warning("not reading usage from this stream: %s", e)
            self.decoder, self.broken = None, True

    def __call__(self, chunk: bytes) -> bytes:
        if not self.broken:
            try:
                self.feed(self.decoder.decompress(chunk) if self.decoder else chunk)
            except Exception as e:  # a tap must never break the stream it watches
                logger.warning("stopped reading usage from a stream: %s", e)
                self.broken, self.pending = True, b""
        return chunk

    def feed(self, data: bytes) -> None:
        if not self.pending and data.endswith(b"\n\n") and MARKER not in data:
            return  # whole events, none of them a rate-limit event: the common chunk
        self.pending += data
        start = 0
        for end in _EVENT_END.finditer(self.pending):
            self._event(self.pending[start : end.start()])
            start = end.end()
        self.pending = self.pending[start:]
        if len(self.pending) > MAX_PENDING:
            self.pending = b""  # a huge event is not a rate-limit event: drop it

    def _event(self, raw: bytes) -> None:
        if MARKER not in raw:
            return
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:")
        )
        event = usage.loads(data)
        if isinstance(event, dict):
            self.on_event(event)
