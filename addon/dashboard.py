"""The live dashboard at http://router.mitm/ (served by mitmproxy itself, like mitm.it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mitmproxy.addons import asgiapp

HOST = "router.mitm"


def make_app(snapshot: Callable[[], dict[str, Any]]):  # type: ignore[no-untyped-def]
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        body = json.dumps(snapshot()).encode()
        start_response("200 OK", [("content-type", "application/json")])
        return [body]

    return app


class Dashboard(asgiapp.WSGIApp):
    name = "quota-router-dashboard"

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        super().__init__(make_app(snapshot), HOST, None)
