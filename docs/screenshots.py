"""Make docs/dashboard.png and docs/status.png from a live demo pool.

    .venv/bin/python docs/screenshots.py        (from the repository root; needs /usr/bin/chromium)

A real mitmdump runs the router against the fake Codex backend of the tests, with five accounts
imported by the CLI. Real routed requests put them in different states: one filling up (the next
pick), one under a cap, one rate limited by the upstream, one whose refresh token was used
elsewhere (needs re-login), one paused. Only the request counts from before this run and the
chart's past hours are made up (docs/seed_history.py): everything else is what the proxy saw.
"""

from __future__ import annotations

import html
import json
import os
import pty
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addon import placeholder  # noqa: E402
from addon.state import State  # noqa: E402
from addon.statefile import StateFile  # noqa: E402
from tests.e2e.browser import HeadlessChromium  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    Mitmdump,
    codex_headers,
    fake_proxy,
    https_request,
    responses_request,
)
from tests.fakes.codex_backend import FakeCodexBackend  # noqa: E402
from tests.fakes.jwt import make_auth_json  # noqa: E402

DOCS = ROOT / "docs"
# name, plan, 5 h % and weekly % at the fake upstream, requests routed before this run
ACCOUNTS = (
    ("work", "plus", 60.0, 36.0, 126),
    ("home", "pro", 10.0, 5.0, 41),
    ("spare", "team", 97.0, 93.0, 230),
    ("lapsed", "plus", 34.0, 56.0, 88),
    ("old", "plus", 0.0, 0.0, 12),
)


class Demo:
    def __init__(self, tmp: Path, fake: FakeCodexBackend) -> None:
        self.tmp, self.fake = tmp, fake
        self.state = tmp / "router-state.toml"
        self.auth: dict[str, dict[str, object]] = {}
        self.proxy: Mitmdump | None = None
        self.turns = 0

    def cli(self, *args: str) -> None:
        command = [sys.executable, "-m", "addon", "--state", str(self.state), *args]
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)

    def import_accounts(self) -> None:
        for name, plan, primary, secondary, _ in ACCOUNTS:
            auth = make_auth_json(f"acct-{name}", plan, email=f"{name}@example.com")
            self.fake.register_auth_json(auth, primary_used=primary, secondary_used=secondary)
            path = self.tmp / f"{name}.json"
            path.write_text(json.dumps(auth))
            self.cli("import", str(path), "--name", name)
            self.auth[name] = auth
        before = {name: requests for name, *_, requests in ACCOUNTS}

        def history(state: State) -> None:  # the pool was in use before this run
            for account in state.accounts:
                account.requests = before[account.name]
                account.last_used_at = int(time.time()) - 3600 * (2 + len(account.name))

        StateFile(self.state).edit(history)

    def status(self) -> dict[str, dict[str, object]]:
        assert self.proxy is not None
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.proxy.proxy_url})
        )
        with opener.open("http://router.mitm/api/status", timeout=10) as reply:
            return {row["name"]: row for row in json.load(reply)["accounts"]}

    def wait(self, name: str, key: str, value: object) -> None:
        deadline = time.monotonic() + 10
        while self.status()[name][key] != value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}.{key} never became {value!r}")
            time.sleep(0.1)

    def turn(self) -> int:
        assert self.proxy is not None
        self.turns += 1
        headers = codex_headers(
            placeholder.auth_json(),
            **{"session-id": f"demo-{self.turns}", "accept": "text/event-stream"},
        )
        result = https_request(
            self.proxy.port,
            self.proxy.ca_path,
            "POST",
            "https://chatgpt.com/backend-api/codex/responses",
            headers=headers,
            body=responses_request(f"demo turn {self.turns}"),
            zstd=True,
        )
        return result.status

    def turn_on(self, name: str) -> None:
        """One new conversation, steered to `name` by a temporary priority."""
        self.cli("set", name, "--priority", "-1")
        self.wait(name, "priority", -1)
        self.turn()
        self.cli("set", name, "--priority", "0")
        self.wait(name, "priority", 0)

    def refresh_elsewhere(self, name: str) -> None:
        """Another machine used this login's refresh token, and its access token expired."""
        tokens = self.auth[name]["tokens"]
        assert isinstance(tokens, dict)
        body = json.dumps({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        request = urllib.request.Request(
            f"{self.fake.url}/oauth/token",
            data=body.encode(),
            headers={"content-type": "application/json"},
        )
        context = ssl._create_unverified_context()  # the fake's self-signed certificate
        urllib.request.urlopen(request, context=context, timeout=10).read()
        self.fake.revoke_token(tokens["access_token"])


def play(demo: Demo) -> None:
    demo.turn_on("work")
    demo.turn_on("lapsed")  # a usage report, before its login breaks
    demo.refresh_elsewhere("lapsed")
    demo.turn_on("lapsed")  # 401, refresh_token_reused: needs re-login; the turn fails over
    demo.wait("lapsed", "status", "reauth_required")
    demo.turn_on("home")
    demo.cli("set", "home", "--max-primary", "80")
    demo.fake.set_limited("acct-spare", 49 * 60)
    demo.turn_on("spare")  # 429 usage_limit_reached: blocked until its reset; fails over
    demo.wait("spare", "status", "rate_limited")
    demo.cli("pause", "old")
    demo.wait("old", "status", "paused")
    demo.turn()  # fill_first: the fullest usable account, work
    time.sleep(1.0)  # the saver writes the file every 0.5 s


def ansi_to_html(text: str) -> str:
    styles = {"1": "font-weight:bold", "2": "opacity:.55", "31": "color:#ff6b61"}
    styles |= {"32": "color:#3fd07a", "33": "color:#f0c43c", "36": "color:#5ec8f0"}
    out, open_spans = [], 0
    for part in re.split(r"(\x1b\[[0-9;]*m)", text):
        match = re.fullmatch(r"\x1b\[([0-9;]*)m", part)
        if not match:
            out.append(html.escape(part))
            continue
        codes = [c for c in match.group(1).split(";") if c]
        if not codes or codes == ["0"]:
            out.append("</span>" * open_spans)
            open_spans = 0
            continue
        css = ";".join(styles[c] for c in codes if c in styles)
        out.append(f'<span style="{css}">')
        open_spans += 1
    return "".join(out) + "</span>" * open_spans


def terminal_page(command: str, output: str) -> str:
    return f"""<!doctype html><meta charset="utf-8"><style>
body {{ margin: 0; background: #e8eaee; padding: 24px; display: inline-block; }}
#term {{ background: #16181d; color: #d8dce3; border-radius: 10px; padding: 0 0 18px;
  box-shadow: 0 6px 24px rgba(0,0,0,.25); display: inline-block; }}
.bar {{ height: 30px; display: flex; gap: 8px; align-items: center; padding: 0 14px; }}
.dot {{ width: 12px; height: 12px; border-radius: 50%; }}
pre {{ margin: 6px 22px 0; font: 14px/1.5 "DejaVu Sans Mono", monospace; }}
.prompt {{ color: #7fb0ff; }}
</style><div id="term"><div class="bar"><span class="dot" style="background:#ff5f57"></span>
<span class="dot" style="background:#febc2e"></span><span class="dot" style="background:#28c840">
</span></div><pre><span class="prompt">$</span> {html.escape(command)}
{ansi_to_html(output)}</pre></div>"""


def coloured_status(state: Path) -> str:
    """`python -m addon status` on a terminal (a pty), so it colours like for a person."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "addon", "--state", str(state), "status"],
        stdout=follower,
        stderr=follower,
        cwd=ROOT,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(10)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n").rstrip("\n")


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="qr-docs-") as tmp,
        FakeCodexBackend(usage_step=(3.0, 0.5)) as fake,
    ):
        demo = Demo(Path(tmp), fake)
        demo.import_accounts()
        options = {
            "router_state": str(demo.state),
            "router_token_url": f"{fake.url}/oauth/token",
        }
        scripts = ["addon/router.py", "docs/seed_history.py"]
        ready = "seed_history: backfilled"
        with fake_proxy(fake.address, scripts, options, ready_pattern=ready) as proxy:
            demo.proxy = proxy
            try:
                play(demo)
            except Exception:
                print("\n".join(proxy.lines[-40:]), file=sys.stderr)
                raise
            with HeadlessChromium(proxy.proxy_url, width=1280, height=800) as browser:
                browser.open("http://router.mitm/")
                browser.wait_for("document.querySelectorAll('#chart-primary g').length >= 4")
                time.sleep(0.5)
                browser.screenshot(DOCS / "dashboard.png")
            output = coloured_status(demo.state)
        page = Path(tmp) / "status.html"
        page.write_text(terminal_page("python -m addon status", output), encoding="utf-8")
        with HeadlessChromium(width=1500, height=400) as browser:
            browser.open(page.as_uri())
            browser.screenshot(DOCS / "status.png", selector="body")
        print(re.sub(r"\x1b\[[0-9;]*m", "", output))
        print(f"wrote {DOCS / 'dashboard.png'} and {DOCS / 'status.png'}")


if __name__ == "__main__":
    main()
