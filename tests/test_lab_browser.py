"""report.html renders in a real headless browser: every figure loads, no console errors.

Drives Debian's ``chromium`` through the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON messages), so no
extra Python package, driver or network port is needed; the page is opened from
``file://``. ``.ci/run`` installs ``chromium``; without it the test is skipped locally and
fails under CI (``CI=true``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ntkit import lab

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """A minimal CDP client over the pipe of ``chromium --remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chrome's ends are moved to fds >= 10 first, so that "3<&N" never aliases fd 3 or 4.
        to_chrome_r, from_chrome_w = _high_fd(to_chrome_r), _high_fd(from_chrome_w)
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", "about:blank",
        ]
        # bash (dash cannot redirect fds > 9) moves our pipe ends onto fds 3 (read by Chrome)
        # and 4 (written by it).
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "bash", "-c", script, binary, *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._next(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._next(timeout)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from chromium over the DevTools pipe")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def render(binary: str, page: Path, profile: Path) -> dict:
    """Open ``page`` from file://; return its images and the console/log errors."""
    tools = DevTools(binary, profile)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        tools.wait_for("Page.loadEventFired", timeout=60)
        probe = (
            "JSON.stringify({images: Array.from(document.images).map(i => "
            "({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})), "
            "figures: document.querySelectorAll('figure').length, "
            "ranges: Array.from(document.querySelectorAll('figure')).map(f => f.dataset.axisRanges || ''), "
            "problems: document.querySelectorAll('.problem').length, "
            "nan: Array.from(document.querySelectorAll('body *')).filter(el => el.children.length === 0 "
            "&& /\\bNaN\\b/.test(el.textContent)).length, "
            "captions: Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent)})"
        )
        value = tools.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                           session=session)["result"]["value"]
        tools.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush pending events
        errors = []
        for ev in tools.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(f"log: {params['entry'].get('text')}")
        result = json.loads(value)
        result["errors"] = errors
        return result
    finally:
        tools.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "report"
    tiny = {"width_seeds": 2, "lazy_steps": 40, "rl_max_steps": 400, "spectrum_steps": 40,
            "n_train": 80, "n_test": 40, "width_points": 30}
    lab.run("all", quick=True, sizes=tiny, out=out)
    return out


def test_report_renders_every_figure_without_console_errors(chromium, report, tmp_path):
    result = render(chromium, report / "report.html", tmp_path / "profile")
    pngs = sorted((report / "figures").glob("*.png"))
    assert len(pngs) >= 10
    assert len(result["images"]) == len(pngs) == result["figures"]
    for img in result["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    assert result["errors"] == []
    assert all(any(ch.isdigit() for ch in c) for c in result["captions"])  # readings state numbers
    assert result["nan"] == 0 and result["problems"] == 0
    for ranges in result["ranges"]:  # every axes of every figure spans a non-empty finite range
        assert ranges, "a figure without recorded axis ranges"
        for rng in ranges.split(";"):
            x0, x1, y0, y1 = map(float, rng.split(","))
            assert x0 != x1 and y0 != y1 and all(map(math.isfinite, (x0, x1, y0, y1))), ranges


def test_the_check_catches_nan_and_empty_ranges(chromium, tmp_path):
    page = tmp_path / "nan.html"
    page.write_text("<!DOCTYPE html><html><body><figure data-axis-ranges='0,1,0,0'><figcaption>"
                    "slope NaN</figcaption></figure></body></html>")
    result = render(chromium, page, tmp_path / "profile")
    assert result["nan"] == 1
    _x0, _x1, y0, y1 = map(float, result["ranges"][0].split(","))
    assert y0 == y1


def test_the_check_catches_broken_images_and_console_errors(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><figure><img src='data:image/png;base64,AAAA'></figure>"
        "<script>console.error('boom')</script></body></html>"
    )
    result = render(chromium, page, tmp_path / "profile")
    assert result["images"][0]["width"] == 0
    assert any("boom" in e for e in result["errors"])
