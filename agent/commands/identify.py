"""`edgeloop identify CONFIG --loop L [--history DB] [--since T] [--until T] [--out DIR]`.

Builds a loop's model from recorded operation, without a new plant test: the loop's pv,
output and disturbance roles (its `inputs`) are read from the history database by tag
name, put on the loop's period (the last good sample at or before each tick, as the loop
sees them; a sample older than 3 periods or 3 poll intervals is a gap), the longest stretch
without long gaps is kept, its excitation checked, and `agent.control.ident.identify` does
the rest. Prints the model, its held-out fit and the SIMC PID for the fallback; with
`--out` writes `DIR/<loop>.model.json` (the model card, with where the data came from).

Exit status: 0 a model was accepted; 1 the data is not informative (flat output, pv only
noise, too short, missing tags) or the model was refused below the fit threshold - the
message says which; 66 no history database; 78 a bad config or an unknown loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HELP = "identify a loop's model (FOPDT/SOPDT/ARX) and SIMC PID from recorded history"

EX_NOINPUT = 66
MAX_FILL = 5  # gaps up to this many periods are interpolated; longer ones split the data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="edgeloop YAML file (the loop's tags and period)")
    p.add_argument("--loop", required=True, help="the control loop to identify")
    p.add_argument("--history", help="history database (default: the config's store.path)")
    p.add_argument("--since", help="start of the data window, ISO 8601 or epoch s (default: all)")
    p.add_argument("--until", help="end of the window, exclusive (default: now)")
    p.add_argument("--out", help="directory to write <loop>.model.json into")
    p.add_argument(
        "--filtered",
        action="store_true",
        help="use the kernel-filtered values instead of the raw ones (filters add lag)",
    )
    p.add_argument(
        "--min-fit", type=float, default=60.0, help="refuse a model below this held-out fit %% (60)"
    )
    p.add_argument(
        "--holdout", type=float, default=0.3, help="share of the data held out to check the fit"
    )
    p.add_argument(
        "--max-periods",
        type=int,
        default=20_000,
        help="use at most the latest N periods of the window (20000; the fit takes ~5 s on "
        "a PC at that size, minutes on a Pi)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _roles(loop: Any) -> tuple[str, str, list[tuple[str, str]]]:
    """(pv tag, output tag, [(disturbance role, tag)]) in the loop's role order."""
    dist = [(r, t) for r, t in loop.inputs.items() if r != "pv"]
    return loop.inputs["pv"], loop.output, dist


def resample(
    series: dict[str, tuple[Any, ...]],
    tags: list[str],
    period_s: float,
    filtered: bool = False,
) -> tuple[Any, Any, list[str]]:
    """(t_s, values (ticks x tags), notes): each tag's last good sample at or before every
    tick of the period; NaN where it is older than 3 periods or 3 of its poll intervals."""
    import numpy as np

    notes: list[str] = []
    starts, ends = [], []
    clean: dict[str, tuple[Any, Any, float]] = {}
    for tag in tags:
        ts, raw, value, quality = series[tag][:4]
        v = value if filtered else raw
        good = (quality == 0) & np.isfinite(v)
        bad = int((~good).sum())
        if bad:
            notes.append(f"{tag}: {bad} of {len(ts)} samples bad or missing, skipped")
        ts_g, v_g = ts[good], v[good]
        if len(ts_g) < 2:
            raise ValueError(f"{tag}: fewer than 2 good samples in the window")
        poll = float(np.median(np.diff(ts_g))) / 1e9
        clean[tag] = (ts_g, v_g, max(3.0 * period_s, 3.0 * poll))
        starts.append(int(ts_g[0]))
        ends.append(int(ts_g[-1]))
    t0, t1 = max(starts), min(ends)
    step = round(period_s * 1e9)
    if t1 - t0 < 2 * step:
        raise ValueError("the tags were not recorded together in the window")
    grid = np.arange(t0, t1 + 1, step, dtype=np.int64)
    out = np.full((len(grid), len(tags)), np.nan)
    for j, tag in enumerate(tags):
        ts_g, v_g, max_age = clean[tag]
        idx = np.searchsorted(ts_g, grid, side="right") - 1
        ok = idx >= 0
        idx = np.clip(idx, 0, None)
        age = (grid - ts_g[idx]) / 1e9
        col = v_g[idx]
        col[~ok | (age > max_age)] = np.nan
        out[:, j] = col
    return (grid - grid[0]) / 1e9 + t0 / 1e9, out, notes


def longest_run(values: Any, max_fill: int = MAX_FILL) -> tuple[int, int]:
    """[start, stop) of the longest stretch whose gaps (rows with a NaN) are at most
    `max_fill` rows long; identification interpolates those."""
    import numpy as np

    bad = ~np.all(np.isfinite(values), axis=1)
    best = (0, 0)
    start = None
    gap = 0
    last_good = -1
    for i, b in enumerate(bad):
        if not b:
            if start is None:
                start = i
            last_good = i
            gap = 0
            continue
        gap += 1
        if start is not None and gap > max_fill:
            if last_good + 1 - start > best[1] - best[0]:
                best = (start, last_good + 1)
            start = None
    if start is not None and last_good + 1 - start > best[1] - best[0]:
        best = (start, last_good + 1)
    return best


def run(args: argparse.Namespace) -> int:
    from agent.cli import EX_CONFIG
    from agent.commands._common import compile_or_report
    from agent.control import ident
    from agent.store.history import HistoryReader, StoreError, iso, to_ns

    compiled = compile_or_report(args.config)
    if compiled is None:
        return EX_CONFIG
    cfg = compiled.config
    loops = {lp.name: lp for lp in cfg.control.loops}
    if args.loop not in loops:
        print(
            f"edgeloop identify: no control loop {args.loop!r} (have {sorted(loops)})",
            file=sys.stderr,
        )
        return EX_CONFIG
    loop = loops[args.loop]
    pv, out_tag, dist = _roles(loop)
    tags = [out_tag, pv, *(t for _, t in dist)]
    db = args.history or cfg.store.path
    try:
        a = to_ns(args.since) if args.since else 0
        b = to_ns(args.until) if args.until else time.time_ns() + 86_400 * 10**9
    except StoreError as e:
        print(f"edgeloop identify: {e}", file=sys.stderr)
        return 2
    try:
        reader = HistoryReader(db)
    except StoreError as e:
        print(f"edgeloop identify: {e}", file=sys.stderr)
        return EX_NOINPUT
    try:
        series = reader.read_series(tags, a / 1e9, b / 1e9)  # read_series takes seconds
    except StoreError as e:
        print(f"edgeloop identify: {db}: {e}", file=sys.stderr)
        return EX_NOINPUT
    finally:
        reader.close()
    role_of = {out_tag: "output", pv: "pv", **{t: r for r, t in dist}}
    missing = [t for t in tags if t not in series or len(series[t][0]) == 0]
    if missing:
        what = ", ".join(f"{t} ({role_of[t]})" for t in missing)
        print(
            f"edgeloop identify: not informative: no recorded samples of {what} in {db} "
            f"between {_when(a, iso)} and {_when(b, iso)}; is the tag in a polled group?",
            file=sys.stderr,
        )
        return 1
    period = loop.period_s
    try:
        t_s, vals, notes = resample(series, tags, period, args.filtered)
    except ValueError as e:
        print(f"edgeloop identify: not informative: {e}", file=sys.stderr)
        return 1
    i0, i1 = longest_run(vals)
    if i1 - i0 < len(vals):
        notes.append(
            f"gaps longer than {MAX_FILL} periods: using the longest stretch, "
            f"{iso(round(t_s[i0] * 1e9))} .. {iso(round(t_s[max(i1 - 1, i0)] * 1e9))} "
            f"({i1 - i0} of {len(vals)} periods)"
        )
    t_s, vals = t_s[i0:i1], vals[i0:i1]
    if args.max_periods > 0 and len(t_s) > args.max_periods:
        notes.append(
            f"{len(t_s)} periods in the window: using the latest {args.max_periods} "
            f"({args.max_periods * period / 3600:.1f} h); give --since/--until or --max-periods"
        )
        t_s, vals = t_s[-args.max_periods :], vals[-args.max_periods :]
    u, y, D = vals[:, 0], vals[:, 1], vals[:, 2:]
    names = [r for r, _ in dist]
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    window = f"{iso(round(t_s[0] * 1e9))} .. {iso(round(t_s[-1] * 1e9))}" if len(t_s) else "(empty)"
    print(
        f"loop {loop.name}: pv {pv}, output {out_tag}"
        + "".join(f", {r} {t}" for r, t in dist)
        + f"; {len(t_s)} periods of {period:g} s, {window}",
        file=sys.stderr,
    )
    ok, why = ident.excitation(u, y, D, period, d_names=names)
    if not ok:
        print(f"edgeloop identify: the recorded data is not informative: {why}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "why": why, "stage": "excitation"}))
        return 1
    res = ident.identify(
        t_s, u, y, D, period, holdout=args.holdout, min_fit_pct=args.min_fit, d_names=names
    )
    lines = res.summary()
    pid: dict[str, Any] | None = None
    if res.ok:
        # SIMC: PID with Td = tau2 where the second lag exceeds the dead time, else PI
        so = res.sopdt
        basis = so if so is not None and so.tau2_s > so.theta_s else res.fopdt
        try:
            pid = ident.simc_pid(basis)
        except ValueError as e:
            lines.append(f"SIMC PID: not available ({e})")
    if pid is not None:
        lines.append(
            f"SIMC PID (tau_c = {pid['tau_c_s']:.3g} s): kp {pid['kp']:.4g}, "
            f"ti_s {pid['ti_s']:.4g}, td_s {pid['td_s']:.4g}"
            + (", direct_acting: true" if pid["direct_acting"] else "")
        )
        lines.append(
            f"  fallback: {{kind: pid, kp: {pid['kp']:.4g}, ti_s: {pid['ti_s']:.4g}, "
            f"td_s: {pid['td_s']:.4g}"
            + (", direct_acting: true" if pid["direct_acting"] else "")
            + "}"
        )
    for line in lines:
        print(line, file=sys.stderr if args.json else sys.stdout)
    written = None
    if res.ok and args.out:
        card = res.model.to_card()
        card["info"]["source"] = {
            "command": "edgeloop identify",
            "loop": loop.name,
            "history": str(db),
            "window": window,
            "config_sha256": hashlib.sha256(Path(args.config).read_bytes()).hexdigest()[:16],
            "tags": {"pv": pv, "output": out_tag, **{r: t for r, t in dist}},
            "values": "kernel-filtered" if args.filtered else "raw",
        }
        card["info"]["simc_pid"] = pid
        outdir = Path(args.out)
        outdir.mkdir(parents=True, exist_ok=True)
        dest = outdir / f"{loop.name}.model.json"
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(json.dumps(ident.json_safe(card), indent=2, allow_nan=False) + "\n")
        tmp.replace(dest)
        written = str(dest)
        print(f"wrote {dest}", file=sys.stderr)
    if args.json:
        doc = {
            "ok": res.ok,
            "why": res.why,
            "fit_pct": res.fit_pct,
            "whiteness_p": res.whiteness_p,
            "fopdt": asdict(res.fopdt),
            "sopdt": None if res.sopdt is None else asdict(res.sopdt),
            "model": res.model.to_card(),
            "local_gains": res.local_gains,
            "simc_pid": pid,
            "window": window,
            "samples": len(t_s),
            "written": written,
        }
        print(json.dumps(ident.json_safe(doc)))
    if not res.ok:
        print(f"edgeloop identify: {res.why}", file=sys.stderr)
        return 1
    return 0


def _when(ns: int, iso: Any) -> str:
    return "the beginning" if ns <= 0 else iso(ns)
