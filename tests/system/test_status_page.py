"""The operator's status page in a real browser (issue 17): hw_sim and `edgeloop run` as
processes, Debian's Chromium driven by Playwright.

One plant and one agent (with a bearer token) serve the module; the tests run in file
order on that timeline: live values first, then a setpoint through the page, the read-only
page of a second agent without a token, the anomaly the scenario injects at 30 s into the
pump skid (an imbalance: vibration up), and last the simulator stopped under the page.

Skipped, with a message, only when /usr/bin/chromium is missing (`apt-get install chromium`;
`.ci/run` installs it).  Playwright's own `playwright install` is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import demo

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "statuspage-test-token-5f1c"
FAULT_AT_S = 30.0  # sim seconds: soon after the pump group's 20 s warm-up
DOCS_SHOT = ROOT / "docs" / "status_page.png"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests need it)",
)


def _http(port: int, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait(cond: Any, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cond():
                return True
        time.sleep(every_s)
    return False


def start_sim(ports: demo.Ports, tmp: Path) -> subprocess.Popen[bytes]:
    """hw_sim with one pump fault at FAULT_AT_S (sim s) and its ground-truth log."""
    scenario = tmp / "scenario.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "statuspage",
                "faults": [
                    {
                        "kind": "imbalance",
                        "at_s": FAULT_AT_S,
                        "duration_s": 900,
                        "profile": "step",
                        "magnitude": 8.0,
                    }
                ],
            }
        )
    )
    return demo.start_sim(
        ports,
        tmp / "sim.log",
        "--seed",
        "3",
        "--scenario",
        str(scenario),
        "--faults-log",
        str(tmp / "faults.jsonl"),
    )


def start_agent(
    ports: demo.Ports, tmp: Path, *, token: bool, patch_loop: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    """`edgeloop run` on config/edgeloop.yaml re-pointed at this plant (no MQTT)."""
    cfg = demo.demo_config(ROOT / "config" / "edgeloop.yaml", ports, tmp, mqtt=False, token=token)
    if patch_loop:
        loop = cfg["control"]["loops"][0]
        for k, v in patch_loop.items():
            if v is None:
                loop.pop(k, None)
            else:
                loop[k] = v
    path = tmp / "edgeloop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, demo.TOKEN_ENV: TOKEN} if token else None
    proc = demo.start_agent(path, tmp / "agent.log", env)
    tok = TOKEN if token else None
    ok = _wait(lambda: _http(ports.http, "/readyz", tok)[0] == 200, 60, 0.3)
    assert ok, (tmp / "agent.log").read_text()[-4000:]
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    def __init__(self, ports: demo.Ports, tmp: Path, sim: Any, agent: Any, t0: float) -> None:
        self.ports, self.tmp, self.sim, self.agent, self.t0 = ports, tmp, sim, agent, t0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}/"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("statuspage")
    ports = demo.Ports()
    t0 = time.monotonic()
    sim = start_sim(ports, tmp)
    agent = None
    try:
        agent = start_agent(ports, tmp, token=True)
        yield Stack(ports, tmp, sim, agent, t0)
    finally:
        stop(agent)
        stop(sim)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A 1280x800 page that records console errors and script exceptions (a CSP violation
    or a bug in app.js shows up there)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    p = ctx.new_page()
    p.errors = []
    p.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    try:
        yield p
    finally:
        ctx.close()


def _login(page: Any, stack: Stack) -> None:
    """Open the page and enter the token in it, as an operator does."""
    page.goto(stack.url)
    page.wait_for_selector("#banner:not([hidden])")
    assert "needs its HTTP access token" in page.inner_text("#banner")
    page.fill("#token", TOKEN)
    page.click("#tokenform button[type=submit]")
    page.wait_for_selector("#devices tr[data-device='heater_plc']", timeout=15000)
    assert all("401" in e for e in page.errors), page.errors  # the first try, without it
    page.errors.clear()


TANK_Q = "#tags tr[data-tag='tank_temp'] td.q"


def _q(selector: str) -> str:
    """The page-side expression for the element a selector names."""
    return f"document.querySelector({json.dumps(selector)})"


def _until(page: Any, expr: str, **kw: Any) -> None:
    """Wait until a JS expression holds in the page (as a function: the page's CSP allows
    no eval of strings)."""
    page.wait_for_function("() => " + expr, **kw)


def _cell(page: Any, tag: str, cls: str) -> str:
    return page.inner_text(f"#tags tr[data-tag='{tag}'] td.{cls}")


# --- the tests, in timeline order ------------------------------------------------------------


def test_page_is_one_small_document_with_a_strict_policy(stack: Stack) -> None:
    req = urllib.request.Request(stack.url, headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
        csp = r.headers["Content-Security-Policy"]
        ctype = r.headers["Content-Type"]
    assert ctype.startswith("text/html")
    assert len(body) < 300_000, len(body)
    assert b"<script>" in body and b"http://" not in body and b"https://" not in body  # no CDN
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    # API clients keep the JSON index at /, and the data needs the token
    assert _http(stack.ports.http, "/", TOKEN)[1]["endpoints"]
    assert _http(stack.ports.http, "/status/live")[0] == 401


def test_devices_and_tags_live(page: Any, stack: Stack) -> None:
    _login(page, stack)
    assert page.inner_text("#access") == "operator"
    for dev in ("heater_plc", "pump_skid"):
        row = f"#devices tr[data-device='{dev}']"
        page.wait_for_function(
            f"() => document.querySelector(\"{row} td.state\")?.textContent === 'up'", timeout=15000
        )
    page.wait_for_selector("#tags tr[data-tag='tank_temp'] td.value:not(:empty)")
    first = _cell(page, "tank_temp", "value")
    assert first.endswith("degC") and _cell(page, "tank_temp", "q") == "good"
    seen = {first}
    assert _wait(lambda: seen.add(_cell(page, "tank_temp", "value")) or len(seen) >= 3, 15)
    assert re.fullmatch(r"\d+\.\d s", _cell(page, "tank_temp", "age")), _cell(
        page, "tank_temp", "age"
    )
    # the filter narrows the table to what matches device, group and name
    page.fill("#filter", "pump_skid vibration")
    page.wait_for_function("() => document.querySelectorAll('#tags tbody tr').length === 2")
    rows = page.eval_on_selector_all("#tags tbody tr", "rs => rs.map(r => r.dataset.tag)")
    assert sorted(rows) == ["pump_vibration_x", "pump_vibration_y"]
    # the sparkline has been drawn (history backfill and live points)
    drawn = page.evaluate(
        """() => { const c = document.querySelector("#tags tr[data-tag='pump_vibration_x'] canvas");
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    )
    assert drawn > 20
    assert page.inner_text("#loops [data-loop='tank_temperature'] b.mode") == "auto"
    assert not page.errors, page.errors


def test_setpoint_through_the_page_with_the_token(page: Any, stack: Stack) -> None:
    _login(page, stack)
    loop = "#loops [data-loop='tank_temperature']"
    page.fill(f"{loop} input.sp-input", "61.5")
    page.click(f"{loop} button.sp-set")
    _until(page, f"{_q(loop + ' .msg')}.textContent.includes('setpoint set to 61.5')")
    # the loop uses it from its next period on
    sp = lambda: _http(stack.ports.http, "/control", TOKEN)[1]["tank_temperature"]["setpoint"]  # noqa: E731
    assert _wait(lambda: sp() == 61.5, 3), sp()
    page.wait_for_function(f"() => document.querySelector(\"{loop} b.sp\").textContent === '61.5'")
    # the loop's limits hold, with the API's own 422 message
    page.fill(f"{loop} input.sp-input", "200")
    page.click(f"{loop} button.sp-set")
    _until(page, f"{_q(loop + ' .msg')}.textContent.includes('422')")
    msg = page.inner_text(f"{loop} .msg")
    api = _http(stack.ports.http, "/control/tank_temperature/setpoint", TOKEN, {"value": 200})
    assert api[0] == 422 and api[1]["error"] in msg, (msg, api)
    assert sp() == 61.5
    # a wrong token: the page says so and shows nothing
    page.fill("#token", "not-the-token")
    page.click("#tokenform button[type=submit]")
    _until(page, f"{_q('#banner')}.textContent.includes('refused')")
    assert page.locator("#devices tbody tr").count() == 0
    assert page.locator("button.sp-set").count() == 0


def test_read_only_without_a_token(page: Any, stack: Stack, tmp_path: Path) -> None:
    """A second agent on the same plant, with no token configured (its loop off and
    without a heartbeat, so it writes nothing)."""
    ports = demo.Ports(modbus=stack.ports.modbus, opcua=stack.ports.opcua)
    quiet = {"mode": "off", "heartbeat": None, "plc_trip": None}
    agent = start_agent(ports, tmp_path, token=False, patch_loop=quiet)
    try:
        page.goto(f"http://127.0.0.1:{ports.http}/")
        page.wait_for_selector("#devices tr[data-device='heater_plc']")
        assert page.inner_text("#access") == "read-only"
        assert "Read-only" in page.inner_text("#banner")
        loop = "#loops [data-loop='tank_temperature']"
        assert "Read-only" in page.inner_text(f"{loop} .ops")
        assert page.locator("button.sp-set").count() == 0
        before = _http(ports.http, "/control")[1]["tank_temperature"]["setpoint"]
        # the page's own request, forced: the gateway refuses it
        page.evaluate("edgeloopCommand('tank_temperature', 'setpoint', {value: 42})")
        _until(page, f"{_q(loop + ' .msg')}.textContent.includes('403')")
        assert "needs a bearer token" in page.inner_text(f"{loop} .msg")
        assert _http(ports.http, "/control")[1]["tank_temperature"]["setpoint"] == before != 42
        assert [e for e in page.errors if "403 (Forbidden)" not in e] == [], page.errors
    finally:
        stop(agent)


def test_injected_anomaly_shows_with_its_contributing_tag(page: Any, stack: Stack) -> None:
    _login(page, stack)
    group = "#groups [data-group='pump_health']"
    page.wait_for_selector(group)
    truth = stack.tmp / "faults.jsonl"
    left_s = FAULT_AT_S + 30 - (time.monotonic() - stack.t0)
    assert _wait(lambda: truth.read_text().strip(), max(5.0, left_s)), "the fault did not start"
    start_ms = json.loads(truth.read_text().splitlines()[0])["start_wall"] * 1000
    # the alarm that follows the fault names a vibration signal first, in the group's panel
    # and in the event list (an alarm before the fault would not count)
    vib = ("pump_vibration_x", "pump_vibration_y")
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(
            """([group, start, vib]) => {
          const g = document.querySelector(group);
          const top = g.querySelector('ol.contrib li');
          return g.querySelector('.gstate').textContent === 'alarm' && top
            && vib.includes(top.dataset.tag)
            && [...document.querySelectorAll("#events tr[data-kind='anomaly_on']")]
               .some(r => +r.dataset.t >= start - 1000 && vib.some(v => r.textContent.includes(v)));
        }""",
            arg=[group, start_ms, list(vib)],
            timeout=30000,
        )
    except PageTimeout:  # say what the page showed (an alarm before the fault, say)
        shown = page.inner_text(group) + "\n" + page.inner_text("#events")
        raise AssertionError(
            f"no vibration alarm after the fault; the page shows:\n{shown}"
        ) from None
    tags = page.eval_on_selector_all(f"{group} ol.contrib li", "ls => ls.map(l => l.dataset.tag)")
    assert tags[0] in vib, tags
    assert "/ limit 1.00" in page.inner_text(f"{group} .gscore")
    page.wait_for_selector("#events tr[data-kind='anomaly_on']")
    ev = page.inner_text("#events tr[data-kind='anomaly_on']")
    assert "pump_health" in ev and re.search(r"\d{1,2}:\d{2}:\d{2}", ev), ev
    page.fill("#filter", "pump_vibration")
    page.wait_for_function(
        "() => document.querySelector(\"#tags tr[data-tag='pump_vibration_x'] td.flags\")"
        ".textContent.includes('group alarm')"
    )
    shot = stack.tmp / "status_page.png"
    page.fill("#filter", "")
    time.sleep(1.5)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("EDGELOOP_DOCS_SHOT"):  # refresh docs/status_page.png on request
        shutil.copy(shot, DOCS_SHOT)
    # a phone: one column
    page.set_viewport_size({"width": 390, "height": 844})
    time.sleep(1.2)  # the next update redraws the canvases at their new size
    xs = page.evaluate(
        "['#devices-box', '#loops-box', '#tags-box'].map(s => document.querySelector(s)"
        ".getBoundingClientRect().x)"
    )
    assert len(set(xs)) == 1, xs
    page.screenshot(path=str(stack.tmp / "status_page_phone.png"), full_page=False)
    assert not page.errors, page.errors


def test_stopped_device_turns_bad_with_its_reason(page: Any, stack: Stack) -> None:
    _login(page, stack)
    _until(page, f"{_q(TANK_Q)}?.textContent === 'good'")
    t0 = time.monotonic()
    stack.sim.terminate()
    _until(
        page,
        f"{_q(TANK_Q)}.textContent !== 'good'",
        timeout=3000,
        polling=100,
    )
    took = time.monotonic() - t0
    stack.sim.wait(10)
    q = _cell(page, "tank_temp", "q")
    quality, _, reason = q.partition(": ")
    assert quality in ("comm lost", "bad", "stale") and reason.strip(), q
    assert took <= 3.0
    row = "#devices tr[data-device='heater_plc']"
    page.wait_for_function(f"() => document.querySelector(\"{row} td.state\").textContent !== 'up'")
    assert page.inner_text(f"{row} td.error")
    page.wait_for_selector("#events tr[data-kind^='device_']")
    page.screenshot(path=str(stack.tmp / "status_page_device_down.png"), full_page=True)
    print(f"tank_temp turned {q!r} {took:.2f} s after the simulator stopped")
