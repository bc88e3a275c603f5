"""`edgeloop report`: plots from the history database (matplotlib, the `plot` extra).

Two views an engineer asks for after a run: the control loop (PV, SP and MV with the spans
where the fallback or manual was in charge shaded) and the monitored equipment (signals,
anomaly scores and alarm spans against known fault spans when a JSONL span file - the
simulator's ground-truth log, or incidents written by hand - is given).  Everything comes
from what the agent stored, so a report of a real site is made the same way as the demo's.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import names


def _get(p: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in p and p[k] is not None:
            return p[k]
    return None


@dataclass
class LoopTrace:
    """One control loop's history, as arrays over the stored control steps."""

    name: str
    t: np.ndarray
    pv: np.ndarray
    sp: np.ndarray
    mv: np.ndarray
    active: list[str]
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_rows(cls, name: str, rows: Sequence[dict[str, Any]]) -> LoopTrace:
        steps = [r for r in rows if r["payload"].get("kind") in ("control_action", None)]
        t = np.array([r["ts_ns"] / 1e9 for r in steps], dtype=float)

        def arr(*keys: str) -> np.ndarray:
            return np.array(
                [
                    float(v) if (v := _get(r["payload"], *keys)) is not None else np.nan
                    for r in steps
                ],
                dtype=float,
            )

        active = [str(_get(r["payload"], "active", "controller") or "?") for r in steps]
        reasons = [
            str(_get(r["payload"], "reason", "reasons") or "")
            for r in rows
            if r["payload"].get("kind") == names.EVENT_CONTROL_FALLBACK
        ]
        return cls(
            name,
            t,
            arr("pv", "measurement"),
            arr("sp", "setpoint"),
            arr("mv", "output"),
            active,
            reasons,
        )

    def spans(self, pred: Any) -> list[tuple[float, float]]:
        """Time spans where pred(active) holds."""
        out: list[tuple[float, float]] = []
        start = None
        for i, a in enumerate(self.active):
            if pred(a) and start is None:
                start = self.t[i]
            elif not pred(a) and start is not None:
                out.append((start, self.t[i]))
                start = None
        if start is not None and len(self.t):
            out.append((start, self.t[-1]))
        return out


def alarm_spans(
    events: Sequence[dict[str, Any]], t_end: float
) -> dict[str, list[tuple[float, float]]]:
    """anomaly_on/off event pairs per source -> spans (an unclosed alarm runs to t_end)."""
    open_: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = {}
    for ev in events:
        src, t = ev["source"], ev["ts_ns"] / 1e9
        if ev["kind"] == names.EVENT_ANOMALY_ON:
            open_.setdefault(src, t)
        elif ev["kind"] == names.EVENT_ANOMALY_OFF and src in open_:
            out.setdefault(src, []).append((open_.pop(src), t))
    for src, t in open_.items():
        out.setdefault(src, []).append((t, t_end))
    return out


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Marked spans from a JSONL file: one object per line with `id`, `start_wall` (epoch s)
    and, once known, `end_wall`; a later line with the same id updates the earlier one.

    The simulator writes its ground-truth fault log in this form; an operator can write
    known incidents (maintenance, trips) the same way to see them against the alarms."""
    by_id: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_id.setdefault(rec["id"], {}).update({k: v for k, v in rec.items() if k != "event"})
    return list(by_id.values())


def fault_spans(faults_log: Path | None, t_end: float) -> list[dict[str, Any]]:
    if faults_log is None or not faults_log.exists():
        return []
    out = []
    for f in read_spans(faults_log):
        if f.get("start_wall") is None:
            continue
        out.append({**f, "t0": float(f["start_wall"]), "t1": float(f.get("end_wall") or t_end)})
    return out


def visible_faults(
    faults: Sequence[dict[str, Any]], monitored: Sequence[str], t0: float, t_end: float
) -> list[tuple[str, float, float]]:
    """(kind, start, end) in seconds from `t0` of the faults on the plotted signals, clipped
    to the data: a fault on another machine, or the open end of one still running when the
    recording stopped, is not drawn over signals it did not touch."""
    out = []
    for f in faults:
        if not set(f.get("signals") or []) & set(monitored):
            continue
        f0, f1 = max(f["t0"], t0) - t0, min(f["t1"], t_end) - t0
        if f1 > f0:
            out.append((str(f.get("kind", "fault")), f0, f1))
    return out


def make_report(
    db_path: str | Path,
    out_path: str | Path,
    *,
    loops: Sequence[str] | None = None,
    pv_tags: dict[str, str] | None = None,
    monitored: Sequence[str] | None = None,
    faults_log: str | Path | None = None,
    t_from: float = 0.0,
    t_to: float = 4e9,
    title: str = "edgeloop report",
    units: dict[str, str] | None = None,
) -> Path:
    """Write a PNG or an HTML report (by the suffix of `out_path`); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.store.history import open_reader

    out_path = Path(out_path)
    reader = open_reader(str(db_path))
    try:
        all_tags = [t for g in reader.groups() for t in g[3]]
        control_rows = reader.read_control(t_from, t_to)
        events = reader.read_events(t_from, t_to)
        loop_names = list(loops) if loops else sorted({r["loop"] for r in control_rows})
        traces = [
            LoopTrace.from_rows(n, [r for r in control_rows if r["loop"] == n]) for n in loop_names
        ]
        mon = [t for t in (monitored or []) if t in all_tags]
        series = reader.read_series(mon + list((pv_tags or {}).values()), t_from, t_to)
    finally:
        reader.close()
    t_end = max(
        [tr.t[-1] for tr in traces if len(tr.t)]
        + [s[0][-1] / 1e9 for s in series.values() if len(s[0])]
        + [0.0]
    )
    faults = fault_spans(Path(faults_log) if faults_log else None, t_end)
    alarms = alarm_spans(events, t_end)
    t0 = min(
        [tr.t[0] for tr in traces if len(tr.t)]
        + [s[0][0] / 1e9 for s in series.values() if len(s[0])]
        + [t_end]
    )

    n_panels = 2 * len(traces) + (2 if mon else 0)
    fig, axes = plt.subplots(
        max(n_panels, 1), 1, figsize=(12, 2.6 * max(n_panels, 1)), sharex=True, squeeze=False
    )
    ax_i = 0
    for tr in traces:
        ax, ax2 = axes[ax_i][0], axes[ax_i + 1][0]
        ax_i += 2
        x = tr.t - t0
        ax.plot(x, tr.pv, lw=1.0, label="PV")
        ax.plot(x, tr.sp, lw=1.2, ls="--", label="SP")
        pv_unit = (units or {}).get((pv_tags or {}).get(tr.name, ""), "")
        ax.set_ylabel(f"PV / SP ({pv_unit})" if pv_unit else "PV / SP")
        ax.set_title(f"loop {tr.name}")
        ax2.plot(x, tr.mv, lw=1.0, color="tab:green", label="MV (written)")
        ax2.set_ylabel("MV %")
        for a in (ax, ax2):
            for s0, s1 in tr.spans(lambda a: a not in ("model", "tflite", "policy")):
                a.axvspan(s0 - t0, s1 - t0, color="tab:orange", alpha=0.2, lw=0)
            a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
        ax2.text(
            0.01, 0.9, "orange: fallback/manual in charge", transform=ax2.transAxes, fontsize=8
        )
    if mon:
        ax, ax2 = axes[ax_i][0], axes[ax_i + 1][0]
        for tag in mon:
            if tag not in series:
                continue
            ts, _raw, val, _q, _fl, score = series[tag]
            x = ts / 1e9 - t0
            v = val.astype(float)
            span = np.nanmax(v) - np.nanmin(v) if np.isfinite(v).any() else 1.0
            unit = (units or {}).get(tag, "")
            lo, hi = np.nanmin(v), np.nanmax(v)
            label = f"{tag} ({lo:.3g}..{hi:.3g} {unit})".replace(" )", ")")
            ax.plot(x, (v - lo) / (span or 1.0), lw=0.8, label=label)
            ax2.plot(x, score, lw=0.8, label=tag)
        ax.set_ylabel("signals (0-1 of their range)")
        ax.set_title("monitored equipment: red = ground-truth faults, purple = alarms")
        ax2.set_ylabel("anomaly score")
        shown = visible_faults(faults, mon, t0, t_end)
        for a in (ax, ax2):
            for _kind, f0, f1 in shown:
                a.axvspan(f0, f1, color="tab:red", alpha=0.15, lw=0)
        for kind, f0, _f1 in shown:
            ax.text(f0, 0.97, f" {kind}", fontsize=7, color="tab:red", va="top",
                    transform=ax.get_xaxis_transform())  # fmt: skip
        if ax2.get_ylim()[1] > 100:  # one wild score would flatten every other line
            ax2.set_yscale("symlog", linthresh=10)
            ax2.set_ylim(bottom=0)
            for spans in alarms.values():
                for s0, s1 in spans:
                    a.axvspan(
                        s0 - t0, s1 - t0, ymin=0.0, ymax=0.08, color="tab:purple", alpha=0.8, lw=0
                    )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    axes[-1][0].set_xlabel("seconds from start")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() in (".html", ".htm"):
        out_path.write_text(_html(title, buf.getvalue(), traces, faults, alarms, events))
    else:
        out_path.write_bytes(buf.getvalue())
    return out_path


def _local(t: float) -> str:
    """Local wall time an operator reads off the cabinet clock, to the millisecond."""
    import time

    lt = time.localtime(t)
    return time.strftime("%Y-%m-%d %H:%M:%S", lt) + f".{int(t % 1 * 1000):03d} {lt.tm_zone}"


def _moved(payload: Any) -> str:
    """A group alarm's top contributing tags with their share, e.g. `flow 71 %, current 12 %`."""
    contrib = payload.get("contributions") if isinstance(payload, dict) else None
    if not isinstance(contrib, dict):
        return ""
    return ", ".join(f"{k} {100 * float(v):.0f} %" for k, v in contrib.items())


def _html(
    title: str,
    png: bytes,
    traces: Sequence[LoopTrace],
    faults: Sequence[dict[str, Any]],
    alarms: dict[str, list[tuple[float, float]]],
    events: Sequence[dict[str, Any]],
) -> str:
    img = base64.b64encode(png).decode()
    rows = "".join(
        f"<tr><td>{html.escape(str(f.get('kind')))}</td>"
        f"<td>{html.escape(', '.join(f.get('signals', [])))}</td>"
        f"<td>{f['t1'] - f['t0']:.1f} s</td></tr>"
        for f in faults
    )
    ev_rows = "".join(
        f"<tr><td>{_local(e['ts_ns'] / 1e9)}</td><td>{html.escape(e['kind'])}</td>"
        f"<td>{html.escape(e['source'])}</td><td>{html.escape(_moved(e['payload']))}</td>"
        f"<td><code>{html.escape(json.dumps(e['payload'])[:160])}</code></td></tr>"
        for e in events[:500]
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1>"
        f"<img src='data:image/png;base64,{img}' style='max-width:100%'>"
        "<h2>Injected faults</h2><table border=1>"
        f"<tr><th>kind</th><th>signals</th><th>duration</th></tr>{rows}</table>"
        f"<h2>Alarm spans</h2><p>{sum(len(v) for v in alarms.values())} alarms on "
        f"{html.escape(', '.join(sorted(alarms)) or 'nothing')}</p>"
        "<h2>Events</h2><table border=1>"
        "<tr><th>local time</th><th>kind</th><th>source</th><th>what moved</th>"
        "<th>payload</th></tr>"
        f"{ev_rows}</table>"
    )
