"""`make demo`: quota-router on an embedded default, end to end, in under a minute.

A local fake of the Codex backend with three demo accounts, a real mitmdump running the router,
and a client that sends Codex-style turns until fill_first moves from one account to the next.
Each routing decision is printed as it happens, then the final `status` table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from addon import placeholder
from tests.e2e.harness import codex_headers, fake_proxy, https_request, responses_request
from tests.fakes.codex_backend import FakeCodexBackend
from tests.fakes.jwt import make_auth_json

ACCOUNTS = (("work", "plus", 62.0), ("home", "plus", 35.0), ("team", "pro", 3.0))
MAX_TURNS = 30


def cli(state: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "addon", "--state", str(state), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.rstrip()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="quota-router-demo-") as tmp:
        state = Path(tmp) / "router-state.toml"
        # Each turn uses 8 % of the 5 h window, so accounts fill up within a few turns.
        with FakeCodexBackend(usage_step=(8.0, 1.0)) as fake:
            print("== importing demo accounts (python -m addon import ...)")
            for name, plan, used in ACCOUNTS:
                auth = make_auth_json(f"demo-{name}", plan, email=f"{name}@example.com")
                fake.register_auth_json(auth, primary_used=used)
                path = Path(tmp) / f"{name}.json"
                path.write_text(json.dumps(auth))
                print("  ", cli(state, "import", str(path), "--name", name))
            client = placeholder.auth_json()
            options = {"router_state": str(state), "router_token_url": f"{fake.url}/oauth/token"}
            print("== starting mitmdump -s addon/router.py against the local fake backend")
            with fake_proxy(
                fake.address, ["addon/router.py"], options, ready_pattern="quota-router ready"
            ) as proxy:
                print("  ", proxy.wait_for_line("quota-router ready").string.split("] ", 1)[1])
                served: list[str] = []
                for turn in range(1, MAX_TURNS + 1):
                    mark = len(proxy.lines)
                    headers = codex_headers(
                        client, **{"session-id": f"demo-{turn}", "accept": "text/event-stream"}
                    )
                    result = https_request(
                        proxy.port,
                        proxy.ca_path,
                        "POST",
                        "https://chatgpt.com/backend-api/codex/responses",
                        headers=headers,
                        body=responses_request(f"demo turn {turn}"),
                        zstd=True,
                    )
                    decision = proxy.wait_for_line(r"-> (.*)$", start=mark).group(1)
                    account = fake.requests_for("/backend-api/codex/responses")[-1].account_id
                    name = (account or "?").removeprefix("demo-")
                    print(f"turn {turn:2d}: HTTP {result.status}  routed to {decision}")
                    if served and served[-1] != name:
                        print(f"== fill_first moved from {served[-1]} to {name}")
                        served.append(name)
                        break
                    served.append(name)
                    if fake.account(account or "").primary_used >= 100:
                        fake.set_limited(account or "", 3600)
                time.sleep(1.0)  # the proxy saves in the background (0.5 s debounce)
            print("== python -m addon status")
            print(cli(state, "status"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
