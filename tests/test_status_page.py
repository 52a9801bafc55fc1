"""The status page in a real headless Chromium, driven over the DevTools protocol.

One page session: load it, read the DOM, change the bot root (an active trading freeze), and read
the DOM of the same session again. The page must show the freeze without anyone reloading it,
i.e. its own JS refresh fetched /api/failure_points. A marker set on ``window`` before the change
proves no navigation happened in between. The screenshot lands in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from exporter.core.audit import AuditLog
from exporter.core.config import load as load_config
from sandbox.botroot import BotRoot, iso, write_json

from .conftest import REPO, Procs, wait_for
from .test_exporter import SECRETS, Exporter, fast_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
#: the browser's time zone, different from the host's UTC, so the page must convert
VIEWER_TZ = "America/New_York"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make system-deps)")

# the CDP client: websockets is in the test extra (alpaca-py brings it too)
import websockets.sync.client as ws_client  # noqa: E402


class Chromium:
    """Headless Chromium with a DevTools port; a tiny CDP client for one page target."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.profile = tmp / "chromium-profile"
        self.profile.mkdir()
        self.log = tmp / "chromium.log"
        self._err = open(self.log, "wb")  # noqa: SIM115 (lives as long as the process; closed in stop())
        # port 0: Chromium picks a free port and writes it to DevToolsActivePort (no port race)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1280,1600", url],
            stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True,
            env={**os.environ, "TZ": VIEWER_TZ, "LANG": "en_US.UTF-8"})
        self._ids = itertools.count(1)
        self.ws: Any = None
        self._stack = contextlib.ExitStack()

    def connect(self) -> None:
        active = self.profile / "DevToolsActivePort"

        def port_written() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            return active.exists() and bool(active.read_text().split("\n", 1)[0].strip())

        wait_for(port_written, timeout=60, what="chromium DevTools port", every=0.1)
        port = int(active.read_text().split("\n", 1)[0])

        def page_target() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:  # noqa: S310
                    targets = json.loads(r.read())
            except OSError:
                return None
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        ws_url = wait_for(page_target, timeout=30, what="page target", every=0.1)
        self.ws = self._stack.enter_context(ws_client.connect(ws_url, max_size=None, open_timeout=10))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; events arriving in between are ignored (none are enabled)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                return msg["result"]  # type: ignore[no-any-return]

    def js(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def stop(self) -> None:
        self._stack.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the Debian wrapper script plus its children
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._err.close()


#: what the test reads from the page, in one evaluation so it is one consistent view
STATE_JS = """(() => !document.getElementById('readiness') ? {refreshes: 0} : ({
  refreshes: Number(document.body.dataset.refreshes || 0),
  marker: window.__sameSession === true,
  readiness: document.getElementById('readiness').textContent,
  summaryClass: document.getElementById('summary').className,
  critical: document.getElementById('critical-count').textContent,
  warnings: document.getElementById('warning-count').textContent,
  why: document.getElementById('why').innerText,
  whyFps: Array.from(document.querySelectorAll('#why li')).map(li => li.dataset.fp),
  funnel: Array.from(document.querySelectorAll('#funnel .stage')).map(e => e.textContent),
  funnelAnswer: (document.querySelector('#why .funnel-answer') || {}).textContent || null,
  rows: Array.from(document.querySelectorAll('#fps tbody tr')).map(tr =>
    Array.from(tr.children).map(td => td.innerText)),
  html: document.documentElement.outerHTML,
}))()"""


@pytest.fixture
def page_session(bot: BotRoot, running: Procs, tmp_path: Path) -> Iterator[tuple[Exporter, Chromium]]:
    fast_config(bot.path)
    # the healer's audit record, as `heal` writes it: one failed and one successful attempt
    cfg = load_config(None, str(bot.path))
    audit = AuditLog(cfg.resolve(cfg["healer"]["audit_file"]))
    audit.append({"event": "attempt", "fp": "FP-1.1", "outcome": "failed", "epoch": bot.now - 60})
    audit.append({"event": "attempt", "fp": "FP-6.1", "outcome": "success", "epoch": bot.now - 30})
    # one warning, so the warning count has something to count: the supervisor reports a service
    # of its own (not the bot's, not the daemon's) failed
    write_json(bot.p("state/health.json"), {
        "overall_status": "DEGRADED", "services": {"trading-bot": "OK", "uw-daemon": "OK", "dashboard": "FAILED"},
        "timestamp": iso(bot.now), "details": {}})
    exp = Exporter(bot.path, tmp_path / "serve.log")
    browser: Chromium | None = None
    try:
        wait_for(exp.ready, timeout=30, what="every check ran once")
        browser = Chromium(tmp_path, exp.url + "/")
        browser.connect()
        yield exp, browser
    finally:
        if browser is not None:
            browser.stop()
        exp.stop()


def test_status_page_renders_and_follows_the_bot_without_a_reload(
        page_session: tuple[Exporter, Chromium], bot: BotRoot) -> None:
    exp, browser = page_session
    enabled = load_config(None, str(bot.path)).enabled_ids()

    state = wait_for(lambda: (s := browser.js(STATE_JS))["refreshes"] >= 1 and s, timeout=30,
                     what="first refresh rendered", every=0.2)
    before = exp.api()
    assert before["readiness"] in ("READY", "DEGRADED"), before["critical_fps"]
    assert state["readiness"] == before["readiness"]
    assert state["summaryClass"] == "card " + before["color"]
    assert state["critical"] == "0"
    assert state["warnings"] == str(sum(row[3] == "WARN" for row in state["rows"]))
    assert state["warnings"] == str(before["warning_count"]) and before["warning_count"] >= 1
    assert "FP-6.7" in before["warning_fps"] and "FP-6.7" in state["whyFps"]
    assert [row[0] for row in state["rows"]] == list(before["failure_points"])
    assert len(state["rows"]) == len(enabled)
    for row in state["rows"]:
        fp_id, name, category, status, last_check = row[:5]
        api = before["failure_points"][fp_id]
        assert (name, category, status) == (api["name"], api["category"], api["status"])
        assert last_check and last_check != "never" and "T" not in last_check  # localised, not raw ISO
    assert "FP-3.1" not in state["why"]
    # the self-healing column: what the healer's audit says, "–" where nothing was attempted
    healing = {row[0]: row[6] for row in state["rows"]}
    assert healing["FP-1.1"] == "attempted, failed"
    assert healing["FP-6.1"] == "attempted, succeeded"
    assert {v for fp, v in healing.items() if fp not in ("FP-1.1", "FP-6.1")} == {"–"}
    assert_funnel_shown(state, before)
    # last check in the viewer's zone: FP-1.5 runs every 900 s, so its time is stable here
    ts = before["failure_points"]["FP-1.5"]["last_check"]
    local = datetime.fromtimestamp(int(ts), ZoneInfo(VIEWER_TZ))
    expected = f"{local.month}/{local.day}/{local.year}, {local:%I:%M:%S %p}".replace(", 0", ", ")
    shown = next(r for r in state["rows"] if r[0] == "FP-1.5")[4]
    assert " ".join(shown.replace("\u202f", " ").split()) == expected, (shown, expected)

    # same page session from here on: a reload or navigation would drop this marker
    browser.js("window.__sameSession = true")
    seen = state["refreshes"]
    bot.freeze()

    def shows_freeze() -> dict[str, Any] | None:
        s: dict[str, Any] = browser.js(STATE_JS)
        return s if s["readiness"] == "BLOCKED" else None

    after = wait_for(shows_freeze, timeout=30, what="page shows the freeze", every=0.25)
    assert after["marker"], "the page was reloaded; the JS refresh must update it in place"
    assert after["refreshes"] > seen
    assert after["summaryClass"] == "card red" and after["critical"] == "1"
    assert after["warnings"] == str(sum(row[3] == "WARN" for row in after["rows"]))
    row = next(r for r in after["rows"] if r[0] == "FP-3.1")
    assert row[3] == "ERROR" and row[5], row  # status and the error text
    why = after["why"]
    assert "FP-3.1" in why and "ERROR" in why
    # "why am I not trading?" lists exactly the failing points, errors first, and then the funnel
    failing = [r for r in after["rows"] if r[3] in ("ERROR", "WARN")]
    assert sorted(after["whyFps"]) == sorted(r[0] for r in failing)
    assert after["whyFps"][0] == "FP-3.1"
    assert f"FP-3.1 {row[1]}: {row[5]}" in why
    assert_funnel_shown(after, exp.api())

    # root causes first: with the kill switch on, the freeze point is skipped because of it and
    # is listed under the kill switch, not as a failure of its own
    bot.kill_switch(True)

    def shows_cause() -> dict[str, Any] | None:
        s: dict[str, Any] = browser.js(STATE_JS)
        return s if "FP-3.10" in s["why"] else None

    cause = wait_for(shows_cause, timeout=30, what="page shows the kill switch", every=0.25)
    assert cause["marker"]
    lines = [ln for ln in cause["why"].splitlines() if ln.strip()]
    first = next(i for i, ln in enumerate(lines) if "FP-3.10" in ln)
    assert "also not evaluated because of it: FP-3.1" in lines[first + 1], lines
    assert not any(ln.startswith("ERROR") and "FP-3.1 " in ln for ln in lines), lines
    row = next(r for r in cause["rows"] if r[0] == "FP-3.1")
    assert row[3] == "SKIPPED" and "FP-3.10" in row[5], row

    # nothing secret reached the page the person sees
    for secret in SECRETS:
        assert secret not in after["html"]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = browser.send("Page.captureScreenshot", format="png")  # the 1280x1600 window
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    (ARTIFACTS / "status-page.png").write_bytes(png)


def assert_funnel_shown(state: dict[str, Any], api: dict[str, Any]) -> None:
    """The funnel part of "why am I not trading?": every stage with the exporter's count."""
    stages = api["funnel"]["stages"]
    assert state["funnel"] == [f"{name}: {'?' if stages[name] is None else stages[name]}"
                               for name in ("symbols", "clusters", "blocked", "orders")]
    assert "Signal funnel (recent cycles)" in state["why"]
    assert stages["symbols"] == 12  # the sandbox cache: the page shows real numbers, not "?"
    if api["funnel"].get("answer"):
        assert state["funnelAnswer"] == api["funnel"]["answer"]
