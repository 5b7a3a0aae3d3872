"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

Stdlib only, no chromedriver and no WebSocket: Chromium reads commands from its fd 3 and writes
answers to its fd 4, each a JSON message ended by a NUL byte. Enough for tests and screenshots:
open a page, evaluate JavaScript, wait for a condition, take a PNG.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")

# Quiet, deterministic, no background traffic worth mentioning (it would go through the proxy).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,OptimizationGuideModelDownloading,MediaRouter,"
    "Translate,AutofillServerCommunication",
    "--no-pings",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


_TRAMPOLINE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 5) for fd in sys.argv[1:3]]
os.dup2(ends[0], 3)
os.dup2(ends[1], 4)
os.execv(sys.argv[3], sys.argv[3:])
"""


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(
        self,
        proxy: str | None = None,
        *,
        binary: Path = CHROMIUM,
        width: int = 1280,
        height: int = 900,
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.proxy = proxy
        self.size = (width, height)
        self.extra_flags = extra_flags
        self.proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None
        self._to: int | None = None
        self._from: int | None = None
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> HeadlessChromium:
        self._profile = tempfile.TemporaryDirectory(prefix="qr-chromium-")
        flags = [*FLAGS, f"--user-data-dir={self._profile.name}"]
        flags.append(f"--window-size={self.size[0]},{self.size[1]}")
        if self.proxy:
            flags += [f"--proxy-server={self.proxy}", "--proxy-bypass-list=<-loopback>"]
        command_r, command_w = os.pipe()
        answer_r, answer_w = os.pipe()
        # A tiny trampoline puts our pipe ends on fds 3 and 4, where Chromium expects them.
        argv = [sys.executable, "-c", _TRAMPOLINE, str(command_r), str(answer_w)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (open for the browser's life)
        try:
            self.proc = subprocess.Popen(
                [*argv, str(self.binary), *flags, *self.extra_flags, "about:blank"],
                pass_fds=(command_r, answer_w),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
            )
        finally:
            os.close(command_r)
            os.close(answer_w)
        self._to, self._from = command_w, answer_r
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            if page is None:
                page = {"targetId": self.call("Target.createTarget", url="about:blank")["targetId"]}
            attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
            self.session = attached["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(BrowserError, OSError, TimeoutError):
                self.call("Browser.close", timeout=5, session=False)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for fd in (self._to, self._from):
            if fd is not None:
                os.close(fd)
        self._to = self._from = None
        if self._profile is not None:
            shutil.rmtree(self._profile.name, ignore_errors=True)
            self._profile = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> HeadlessChromium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    # -- protocol --------------------------------------------------------------------------
    def call(
        self, method: str, timeout: float = 20.0, session: bool = True, **params: Any
    ) -> dict[str, Any]:
        assert self._to is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") != message["id"]:
                continue  # an event, or the answer to an abandoned call
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._from is not None
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from Chromium\n{self.log()}")
            ready, _, _ = select.select([self._from], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited\n{self.log()}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    # -- page ------------------------------------------------------------------------------
    def open(self, url: str, timeout: float = 15.0) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Evaluate until the value is truthy; returns it. TimeoutError with the last value."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"still falsy after {timeout} s: {expression} -> {value!r}")

    def screenshot(self, path: Path, full_page: bool = True, selector: str | None = None) -> None:
        """A PNG of the page (all of it with `full_page`), or of one element."""
        width, height = self.size
        if full_page or selector:
            metrics = self.call("Page.getLayoutMetrics")
            height = max(height, int(metrics["cssContentSize"]["height"]))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        params: dict[str, Any] = {"format": "png"}
        if selector:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
            )
            x, y, w, h = box
            params["clip"] = {"x": x, "y": y, "width": w, "height": h, "scale": 1}
        png = self.call("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(png))
