"""Headless Chromium driven over the DevTools protocol, for the report's browser tests.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from its file descriptor 3 and
writes responses and events to descriptor 4, each message one JSON object followed by a NUL byte.
:meth:`Browser.load` opens a new tab, enables the ``Runtime`` and ``Log`` domains *before* navigating (so nothing the
page does while loading is missed), loads the page, waits for its load event, takes a screenshot and closes the tab.
The page's errors are the events

- ``Runtime.consoleAPICalled`` of type ``error`` or ``assert`` (``console.error(...)``, a failed ``console.assert``),
- ``Runtime.exceptionThrown`` (an uncaught exception, a syntax error),
- ``Log.entryAdded`` at level ``error`` (the browser's own errors: a resource that fails to load, a blocked request).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["Browser", "PageLoad", "find_chromium"]


@dataclass(frozen=True)
class PageLoad:
    """What loading a page produced."""

    errors: list[str]
    """One line per console error, uncaught exception or error log entry, in the order they came."""
    screenshot: bytes
    """PNG of the viewport."""


def find_chromium() -> str | None:
    """The Chromium executable on PATH (Debian's package installs ``chromium``), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class Browser:
    """One headless Chromium (its own temporary profile) for several page loads; a context manager."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="condorbrain-chromium-")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the browser; close() closes it)
        cmd_r, self._write_fd = os.pipe()  # we write commands; chromium reads them as its fd 3
        self._read_fd, out_w = os.pipe()  # chromium writes to its fd 4; we read
        # The child's ends, moved to fds >= 10 so that the redirections below cannot overwrite one with the other.
        cmd_r, out_w = _move_above(cmd_r, 10), _move_above(out_w, 10)
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", "--hide-scrollbars",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "about:blank"]
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-', "bash", *args],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        os.close(cmd_r)
        os.close(out_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, url: str, *, width: int = 1280, height: int = 2000) -> PageLoad:
        """Load ``url`` in a new tab with a ``width`` x ``height`` viewport; its errors and a screenshot.
        Raises TimeoutError / RuntimeError when the browser does not answer or cannot load the page."""
        deadline = time.monotonic() + self.timeout
        target = self._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                             deadline=deadline)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._call(f"{domain}.enable", session=session, deadline=deadline)
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                   session=session, deadline=deadline)
        nav = self._call("Page.navigate", {"url": url}, session=session, deadline=deadline)
        if nav.get("errorText"):
            raise RuntimeError(f"chromium could not load {url}: {nav['errorText']}")
        self._wait_event("Page.loadEventFired", session, deadline)
        # A round trip after the load event: the events the page raised before it have arrived by its answer.
        self._call("Runtime.evaluate", {"expression": "document.readyState"}, session=session, deadline=deadline)
        png = base64.b64decode(self._call("Page.captureScreenshot", {"format": "png"}, session=session,
                                          deadline=deadline)["data"])
        errors = _errors([e for e in self._events if e.get("sessionId") == session])
        self._call("Target.closeTarget", {"targetId": target}, deadline=deadline)
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return PageLoad(errors=errors, screenshot=png)

    def close(self) -> None:
        """Close the browser (killed if it does not exit within 10 s) and remove its profile."""
        try:
            if self._proc.poll() is None:
                os.write(self._write_fd, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            for fd in (self._write_fd, self._read_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            self._profile.cleanup()

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
              deadline: float) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        while True:
            msg = self._receive(deadline)
            if msg.get("id") == self._next_id:
                if "error" in msg:
                    raise RuntimeError(f"chromium: {method} failed: {msg['error']}")
                return msg.get("result", {})

    def _wait_event(self, method: str, session: str, deadline: float) -> None:
        if any(e.get("method") == method and e.get("sessionId") == session for e in self._events):
            return
        while True:
            msg = self._receive(deadline)
            if msg.get("method") == method and msg.get("sessionId") == session:
                return

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next message (events are also kept, for :func:`_errors`)."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer in time; its stderr:\n{self._stderr_tail()}")
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if ready:
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (rc {self._proc.poll()}); its stderr:\n{self._stderr_tail()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._events.append(msg)
        return msg

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:].decode(errors="replace")


def _move_above(fd: int, low: int) -> int:
    """``fd`` duplicated to the lowest free descriptor >= ``low`` (the original closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return moved


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {text}")
        elif e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip())
    return out
