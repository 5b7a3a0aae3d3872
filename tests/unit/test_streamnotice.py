"""The filter that keeps mitmproxy's "Streaming response from" line out for the router's
clients (addon/streamnotice.py), on the logger mitmproxy really uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from addon.streamnotice import LOGGER, StreamNotices

CODEX = ("127.0.0.1", 50001)
OTHER = ("127.0.0.1", 50002)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[tuple[StreamNotices, list[str]]]:
    logger, capture, notices = logging.getLogger(LOGGER), Capture(), StreamNotices()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    notices.install()
    yield notices, capture.messages
    notices.remove()
    logger.removeHandler(capture)
    logger.setLevel(level)


def log(message: str, client: object) -> None:
    # As mitmproxy's ConnectionHandler.log does it.
    logging.getLogger(LOGGER).info(message, extra={"client": client})


def test_the_line_is_dropped_for_a_quieted_client_only(
    logged: tuple[StreamNotices, list[str]],
) -> None:
    notices, messages = logged
    notices.quiet(CODEX)
    log("Streaming response from chatgpt.com.", CODEX)
    log("Streaming response from chatgpt.com.", OTHER)
    assert messages == ["Streaming response from chatgpt.com."]


def test_other_lines_from_a_quieted_client_pass(logged: tuple[StreamNotices, list[str]]) -> None:
    notices, messages = logged
    notices.quiet(CODEX)
    log("Streaming request to chatgpt.com.", CODEX)
    log("client disconnect", CODEX)
    log("Streaming response from chatgpt.com.", None)
    assert len(messages) == 3


def test_a_forgotten_client_is_logged_again(logged: tuple[StreamNotices, list[str]]) -> None:
    notices, messages = logged
    notices.quiet(CODEX)
    notices.forget(CODEX)
    notices.forget(OTHER)  # never quieted: nothing to do
    log("Streaming response from chatgpt.com.", CODEX)
    assert messages == ["Streaming response from chatgpt.com."]


def test_without_a_peername_nothing_is_quieted(logged: tuple[StreamNotices, list[str]]) -> None:
    notices, messages = logged
    notices.quiet(None)
    assert not notices.clients
    log("Streaming response from chatgpt.com.", None)
    assert len(messages) == 1


def test_removed_it_drops_nothing(logged: tuple[StreamNotices, list[str]]) -> None:
    notices, messages = logged
    notices.quiet(CODEX)
    notices.remove()
    assert notices not in logging.getLogger(LOGGER).filters
    log("Streaming response from chatgpt.com.", CODEX)
    assert len(messages) == 1


def test_a_record_that_is_not_text_passes() -> None:
    notices = StreamNotices()
    notices.quiet(CODEX)
    record = logging.LogRecord(LOGGER, logging.INFO, __file__, 1, {"not": "text"}, None, None)
    record.client = CODEX
    assert notices.filter(record)
