"""Test-only mitmproxy script, loaded AFTER the router: records what each request carries when
it leaves the proxy, and answers requests for any host other than the redirected ones itself
(so no test ever reaches a real server).

``QR_RECORD_FILE``: a JSON-lines file, one line per request (scheme, host, port, path,
authorization, chatgpt-account-id), written in the ``request`` hook, i.e. after the router's.
"""

from __future__ import annotations

import json
import os

from mitmproxy import http

REDIRECTED = {("chatgpt.com", 443), ("auth.openai.com", 443)}


class RecordHeaders:
    def request(self, flow: http.HTTPFlow) -> None:
        path = os.environ.get("QR_RECORD_FILE")
        req = flow.request
        entry = {
            "scheme": req.scheme,
            "host": req.host,
            "pretty_host": req.pretty_host,
            "port": req.port,
            "path": req.path,
            "authorization": req.headers.get("authorization"),
            "chatgpt_account_id": req.headers.get("chatgpt-account-id"),
            "answered": flow.response is not None,
        }
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        bound_for_fake = req.scheme == "https" and (req.host, req.port) in REDIRECTED
        if flow.response is None and not bound_for_fake:
            flow.response = http.Response.make(
                418, b"answered by the test recorder", {"content-type": "text/plain"}
            )


addons = [RecordHeaders()]
