"""The operator's status page: its assets and the JSON it polls (issue 17).

The page (`status/index.html`, `app.js`, `style.css`, package data) is served as one HTML
document with the script and style inlined, so a browser needs one request to load it (the
HTTP server allows a client only a few connections) and a Content-Security-Policy can name
the exact script and style by hash: nothing else runs on the page.  It holds no data, so it
is served without the bearer token; every JSON route below needs the token when one is
configured, like /control.

Cost is kept flat in the number of open pages: `live()` renders the whole snapshot (every
tag's value, quality, flags and score as arrays, devices, loops, groups, recent events) at
most once per `LIVE_CACHE_S` and hands every page the same bytes.  History for sparklines
and the loop trend comes from the SQLite store on a thread, only when a page asks (load,
filter change), never per poll.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import numpy as np

from agent.names import POLL_OVERRUNS_TOTAL, POLLS_TOTAL
from agent.telemetry.httpwire import json_plain as _plain

LIVE_CACHE_S = 0.5  # pages polling at 1 Hz share one snapshot
EVENTS_KEPT = 200  # recent events in memory (device up/down, anomalies, control)
MAX_HISTORY_TAGS = 100  # tags per history request
MAX_HISTORY_S = 900.0
SPARK_POINTS = 120  # points per tag in a history answer (downsampled)
TREND_POINTS = 600  # points per loop in a trend answer


def _asset(name: str) -> str:
    return (resources.files("agent.telemetry") / "status" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class PageAssets:
    """index.html with app.js and style.css inlined, and the CSP that allows exactly them."""

    def __init__(self) -> None:
        html, js, css = _asset("index.html"), _asset("app.js"), _asset("style.css")
        style = f"<style>\n{css}</style>"
        script = f"<script>\n{js}</script>"
        self.body = (
            html.replace("<!--STYLE-->", style).replace("<!--SCRIPT-->", script).encode("utf-8")
        )
        self.csp = (
            f"default-src 'none'; script-src {_sha256(chr(10) + js)}; "
            f"style-src {_sha256(chr(10) + css)}; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )


def _json_array(a: np.ndarray) -> str:
    """A float array as a JSON array with NaN/inf as null (json.dumps would write NaN)."""
    text = json.dumps(a.tolist())
    if "N" in text or "I" in text:
        text = text.replace("-Infinity", "null").replace("Infinity", "null")
        text = text.replace("NaN", "null")
    return text


def _num(x: Any, nd: int = 4) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, nd) if math.isfinite(v) else None


class StatusSource:
    """What the page shows, read from the running pipeline's own state (nothing new is
    computed per sample).  `bind()` points it at a new pipeline after a reload."""

    def __init__(self, site: str, token_configured: bool) -> None:
        self.site = site
        self.token_configured = token_configured
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self._dev_seen: dict[str, tuple[str, float]] = {}
        self._live: bytes = b""
        self._live_at = -math.inf
        self._rate_prev: tuple[float, dict[tuple[str, str], float]] | None = None
        self._rates: dict[str, float] = {}
        self._req_rates: dict[str, float] = {}
        self.pipeline: Any = None
        self._meta: bytes = b""

    def bind(self, pipeline: Any) -> None:
        """Show this pipeline (the service's, or a reload's new one)."""
        self.pipeline = pipeline
        self._meta = b""
        self._live_at = -math.inf

    # --- fed by the service -------------------------------------------------------------

    def note_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        """An event the pipeline routed (anomaly on/off, control mode/fallback)."""
        ts_ns = int(payload.get("ts_ns") or time.time_ns())
        source = str(payload.get("source") or payload.get("loop") or "")
        self.events.append(
            {
                "t": ts_ns // 1_000_000,
                "kind": kind,
                "source": source,
                "text": _event_text(kind, payload),
            }
        )

    def tick(self) -> None:
        """Device state changes become events (called by the service's main loop, ~5 Hz;
        the state's own `since` time is used, so the event time is exact)."""
        p = self.pipeline
        if p is None:
            return
        for name, h in p.acquirer.health().items():
            state, since = str(h.get("state")), float(h.get("since") or 0.0)
            prev = self._dev_seen.get(name)
            if prev == (state, since):
                continue
            self._dev_seen[name] = (state, since)
            if prev is None and state == "connecting":
                continue
            err = h.get("last_error")
            text = f"{name} {state}" + (f": {err}" if err and state != "up" else "")
            self.events.append(
                {
                    "t": int((since or time.time()) * 1000),
                    "kind": f"device_{state}",
                    "source": name,
                    "text": text,
                }
            )

    # --- what the routes answer ---------------------------------------------------------

    def meta(self) -> bytes:
        """The static part: tag names, devices, groups, units; loops and their limits."""
        if self._meta:
            return self._meta
        p = self.pipeline
        table = p.table
        group_of = [""] * len(table.names)
        for g in p.compiled.groups:
            for i in range(g.start, g.stop):
                group_of[i] = g.name
        loops: dict[str, Any] = {}
        control = p.control
        for name, lp in (getattr(control, "loops", None) or {}).items():
            sp = getattr(lp.cfg, "setpoint", None)
            loops[name] = {
                "sp_min": getattr(sp, "min", None),
                "sp_max": getattr(sp, "max", None),
                "output": getattr(lp.cfg, "output", None),
                "period_ms": getattr(lp.cfg, "period_ms", None),
                "has_model": getattr(lp, "policy", None) is not None,
            }
        groups = {g.name: list(g.tags) for g in getattr(p.cfg.kernel, "groups", [])}
        body = {
            "site": self.site,
            "token": self.token_configured,
            "tags": {
                "name": table.names,
                "device": table.devices,
                "group": group_of,
                "unit": [u or "" for u in table.units],
                "text": sorted(table.texts) if table.texts else [],
            },
            "devices": list(p.compiled.devices),
            "loops": loops,
            "groups": groups,
            "store": p.store is not None,
        }
        self._meta = json.dumps(body).encode()
        return self._meta

    def live(self) -> bytes:
        """The whole live snapshot, rendered at most once per LIVE_CACHE_S for all pages."""
        now = time.monotonic()
        if now - self._live_at < LIVE_CACHE_S and self._live:
            return self._live
        self._live_at = now
        self._live = self._render_live()
        return self._live

    def _render_live(self) -> bytes:
        p = self.pipeline
        table = p.table
        now_ns = time.time_ns()
        health = p.acquirer.health()
        self._update_rates(p)
        devices = {}
        for name, h in health.items():
            devices[name] = {
                "state": h.get("state"),
                "since": h.get("since"),
                "last_error": h.get("last_error"),
                "reconnects": h.get("reconnects"),
                "polls_per_s": _num(self._rates.get(name), 2),
                "requests_per_s": _num(self._req_rates.get(name), 2),
                "overruns": int(self._overruns(p, name)),
            }
        ts = table.ts_ns
        age = np.where(ts > 0, (now_ns - ts) // 1_000_000, -1)
        quality = table.quality
        reasons = self._reasons(p, quality, health)
        texts = {str(i): t for i, t in table.texts.items()}
        loops = {}
        if p.control is not None:
            for name, st in p.control.status().items():
                loops[name] = {
                    k: st.get(k)
                    for k in (
                        "mode",
                        "active",
                        "reasons",
                        "in_fallback",
                        "healthy_s",
                        "heartbeat",
                        "failing",
                        "shadow",
                    )
                }
                for k in ("setpoint", "pv", "output", "model_output"):
                    loops[name][k] = _num(st.get(k))
        groups: dict[str, Any] = {}
        kernel = p.kernel
        if getattr(kernel, "groups", None):
            groups = kernel.group_summary()
        events = list(self.events)[-50:]
        head = {
            "t": now_ns // 1_000_000,
            "devices": devices,
            "loops": loops,
            "groups": groups,
            "events": events,
            "alarms": sorted(p.active_alarms),
            "texts": texts,
            "reasons": reasons,
        }
        # the per-tag arrays are written directly: json.dumps of a list of floats is the
        # cost that matters at 1,000 tags, and NaN has to become null
        value = np.round(table.raw, 4)
        score = np.round(table.score, 2)
        arrays = (
            f'"v":{_json_array(value)},"q":{json.dumps(quality.tolist())},'
            f'"f":{json.dumps(table.flags.tolist())},"s":{_json_array(score)},'
            f'"age":{json.dumps(age.tolist())}'
        )
        text = json.dumps(_plain(head), allow_nan=False)
        return (text[:-1] + "," + arrays + "}").encode()

    def _reasons(self, p: Any, quality: np.ndarray, health: Mapping[str, Any]) -> dict[str, str]:
        """Why each tag that is not good is not: its own reason code when the table has
        one (drivers.base.Reason), else its device's last error."""
        bad = np.flatnonzero(quality != 0)
        if bad.size == 0:
            return {}
        table = p.table
        codes = getattr(table, "reason", None)
        name_of: Callable[[int], str] | None = None
        if codes is not None:
            try:
                from drivers.base import reason_name

                name_of = reason_name
            except ImportError:
                name_of = None
        out: dict[str, str] = {}
        for i in bad.tolist():
            why = ""
            if name_of is not None and codes is not None and int(codes[i]):
                why = name_of(int(codes[i]))
            dev = health.get(table.devices[i]) or {}
            err = dev.get("last_error")
            if err and dev.get("state") != "up":  # the device's error says more
                why = f"{why}: {err}" if why and why != "comm_lost" else str(err)
            out[str(i)] = why or "no reason recorded"
        return out

    def _update_rates(self, p: Any) -> None:
        """Polls and requests per second per device, over the time since the previous
        snapshot.  Requests per poll come from the group's read plan (a Modbus plan's
        merged reads; one read per poll otherwise; none for a subscription, which the
        server pushes)."""
        now = time.monotonic()
        totals: dict[tuple[str, str], float] = {}
        for g in p.compiled.groups:
            totals[(g.device, g.name)] = p.metrics.get(POLLS_TOTAL, device=g.device, group=g.name)
        prev = self._rate_prev
        if prev is not None and now - prev[0] >= 0.25:
            dt = now - prev[0]
            polls: dict[str, float] = {}
            reqs: dict[str, float] = {}
            for g in p.compiled.groups:
                key = (g.device, g.name)
                rate = max(0.0, (totals[key] - prev[1].get(key, totals[key])) / dt)
                polls[g.device] = polls.get(g.device, 0.0) + rate
                reqs[g.device] = reqs.get(g.device, 0.0) + rate * _requests_per_poll(p, g)
            self._rates, self._req_rates = polls, reqs
        if prev is None or now - prev[0] >= 0.25:
            self._rate_prev = (now, totals)

    @staticmethod
    def _overruns(p: Any, device: str) -> float:
        return float(
            sum(
                p.metrics.get(POLL_OVERRUNS_TOTAL, device=g.device, group=g.name)
                for g in p.compiled.groups
                if g.device == device
            )
        )

    async def history(self, query: Mapping[str, str]) -> bytes:
        """Sparkline series of some tags over the last seconds, from the SQLite history
        (read on a thread with its own read-only connection)."""
        p = self.pipeline
        names = [t for t in query.get("tags", "").split(",") if t in p.table.index]
        names = names[:MAX_HISTORY_TAGS]
        seconds = _seconds(query.get("s"), 300.0)
        if p.store is None or not names:
            return json.dumps({"tags": {}}).encode()
        path = p.store.cfg.path
        return await asyncio.to_thread(_read_history, path, names, seconds)

    async def trend(self, query: Mapping[str, str]) -> bytes:
        """Each loop's SP/PV/MV and fallback over the last seconds, and the stored events of
        the last hour, from the SQLite history."""
        p = self.pipeline
        seconds = _seconds(query.get("s"), 600.0)
        if p.store is None:
            return json.dumps({"loops": {}, "events": []}).encode()
        return await asyncio.to_thread(_read_trend, p.store.cfg.path, seconds)


def _requests_per_poll(p: Any, group: Any) -> int:
    if getattr(group, "mode", "poll") == "subscribe":
        return 0
    plan = (
        p.compiled.plans.get((group.device, group.name)) if hasattr(p.compiled, "plans") else None
    )
    return len(getattr(plan, "requests", ())) or 1


def _seconds(text: str | None, default: float) -> float:
    try:
        v = float(text) if text else default
    except ValueError:
        v = default
    return min(MAX_HISTORY_S, max(1.0, v)) if math.isfinite(v) else default


def _read_history(path: str, names: list[str], seconds: float) -> bytes:
    from agent.store.history import HistoryReader, StoreError

    now = time.time()
    try:
        reader = HistoryReader(path)
    except StoreError:
        return json.dumps({"tags": {}}).encode()
    try:
        series = reader.read_series(names, now - seconds, now + 1)
    finally:
        reader.close()
    out: dict[str, Any] = {}
    for name, (ts_ns, raw, *_rest) in series.items():
        step = max(1, len(ts_ns) // SPARK_POINTS)
        t = (ts_ns[::step] // 1_000_000).tolist()
        out[name] = [t, json.loads(_json_array(np.round(raw[::step], 4)))]
    return json.dumps({"tags": out}).encode()


def _read_trend(path: str, seconds: float) -> bytes:
    from agent.store.history import HistoryReader, StoreError

    now = time.time()
    try:
        reader = HistoryReader(path)
    except StoreError:
        return json.dumps({"loops": {}, "events": []}).encode()
    try:
        rows = reader.read_control(now - seconds, now + 1)
        stored = reader.read_events(now - 3600, now + 1)
    finally:
        reader.close()
    loops: dict[str, list[list[Any]]] = {}
    events = []
    for r in rows:
        pl = r["payload"]
        kind = pl.get("kind", "control_action")
        if kind == "control_action":
            loops.setdefault(r["loop"], []).append(
                [
                    r["ts_ns"] // 1_000_000,
                    _num(pl.get("sp")),
                    _num(pl.get("pv")),
                    _num(pl.get("mv")),
                    1 if pl.get("active") == "fallback" else 0,
                ]
            )
        else:
            events.append(
                {
                    "t": r["ts_ns"] // 1_000_000,
                    "kind": kind,
                    "source": r["loop"],
                    "text": _event_text(kind, pl),
                }
            )
    for e in stored:
        events.append(
            {
                "t": e["ts_ns"] // 1_000_000,
                "kind": e["kind"],
                "source": e["source"],
                "text": _event_text(e["kind"], e["payload"]),
            }
        )
    for name, pts in loops.items():
        step = max(1, len(pts) // TREND_POINTS)
        if step > 1:  # keep every fallback sample's flag in the thinned series
            thin = [pts[i] for i in range(0, len(pts), step)]
            loops[name] = thin
    events.sort(key=lambda e: e["t"])
    return json.dumps({"loops": loops, "events": events[-200:]}, allow_nan=False).encode()


def _event_text(kind: str, payload: Mapping[str, Any]) -> str:
    """One readable line per event for the page's event list."""
    if kind.startswith("anomaly"):
        score = payload.get("score")
        contrib = payload.get("contributions") or payload.get("top") or {}
        text = f"{kind.replace('_', ' ')}"
        if payload.get("cause"):
            text += f" ({payload['cause']})"
        if isinstance(score, int | float) and math.isfinite(score):
            text += f", score {score:.3g}"
        if isinstance(contrib, Mapping) and contrib:
            text += ", top: " + ", ".join(list(contrib)[:3])
        return text
    if kind == "control_fallback":
        return "fallback: " + ", ".join(map(str, payload.get("reasons") or []))
    if kind == "control_mode":
        if "to" in payload:
            return f"mode {payload.get('from')} -> {payload.get('to')}"
        if "active" in payload:
            return f"active {payload.get('from')} -> {payload.get('active')}"
        if "setpoint" in payload:
            return f"setpoint -> {payload.get('setpoint')}"
        if "commission" in payload:
            return f"commissioning {payload.get('commission')}"
    return kind.replace("_", " ")
