"""Bench-only mitmproxy script: make reverse-mode requests look like Codex's, for the router.

In reverse mode every request arrives as http://127.0.0.1:PORT/...; addon/router.py routes only
https://chatgpt.com:443/backend-api/codex/... One script, loaded AFTER the router
(`-s addon/router.py -s bench/shims/chatgpt.py`), does both halves:

- `requestheaders` (every addon's requestheaders runs before any addon's `request`): the
  request becomes https://chatgpt.com:443/..., and where it was going is kept in the metadata;
- `request` (runs after the router's, which has by then chosen an account, rewritten the auth
  headers and taken the flow as routed): the destination goes back to the local plain-HTTP
  upstream, which mitmproxy connects to after the `request` hooks.

So the router's whole path runs as in production: choose, rewrite, affinity, usage from the
headers, the SSE tap, the response hook, saving. Every configuration loads this script, `bare`
mitmdump too: all pay for it alike (a real deployment, in regular proxy mode, has none of it).
"""

from __future__ import annotations

from mitmproxy import http

ORIGIN = "bench_origin"


class ChatGPT:
    # On `request.data`: the properties would also rewrite the Host header each time (~50 us
    # a request, charged to the configurations that load this shim, not to bare mitmdump).
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        data = flow.request.data
        flow.metadata[ORIGIN] = (data.scheme, data.host, data.port)
        data.scheme, data.host, data.port = b"https", "chatgpt.com", 443

    def request(self, flow: http.HTTPFlow) -> None:
        origin = flow.metadata.get(ORIGIN)
        if origin is not None:
            data = flow.request.data
            data.scheme, data.host, data.port = origin


addons = [ChatGPT()]
