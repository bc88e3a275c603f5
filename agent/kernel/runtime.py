"""`KernelRuntime`: the kernel as the service sees it, over the tag table.

It needs only these attributes of the table (so it does not depend on `agent.tags`):
`names`, `raw`, `value`, `quality`, `flags`, `score`, `ts_ns`, `min`, `max`, and optionally
`kinds` (each tag's `settings.signal_kind`; every tag analog without it).
`process(group)` runs the per-tag stage over the poll group's slice, then every multivariate
group with a member in that slice, and returns alarm transition events.  Groups learn their
model from their first `warmup_samples` valid samples; until then they score nothing.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import numpy as np

from agent import names as N
from agent.kernel import flags as F
from agent.kernel import jit
from agent.kernel import multivar as mv
from agent.kernel import pertag as pt
from agent.kernel.alarm_metrics import AlarmBook, group_cause
from agent.kernel.settings import GroupSettings, KernelConfig
from agent.names import ANOMALY_ALARM

log = logging.getLogger(__name__)


class KernelError(ValueError):
    """The kernel settings do not fit the tag table (unknown tag names)."""


class TableLike(Protocol):
    names: list[str]
    raw: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    flags: np.ndarray
    score: np.ndarray
    ts_ns: np.ndarray
    min: np.ndarray
    max: np.ndarray


class SliceLike(Protocol):
    name: str
    start: int
    stop: int


class _Group:
    """One configured group: warm-up buffer until fitted, then the fitted model."""

    def __init__(self, settings: GroupSettings, idx: np.ndarray) -> None:
        self.settings = settings
        self.idx = idx
        self.buf = np.empty((settings.warmup_samples, idx.size))
        self.ts = np.zeros(settings.warmup_samples, dtype=np.int64)  # for the sample period
        self.n = 0
        self.contrib: dict[str, float] = {}  # top contributions at the last alarm onset
        self.model: mv.GroupModel | None = None
        self.failed: str | None = None


class KernelRuntime:
    """Per-tag stage + multivariate groups over a tag table; state lives in numpy arrays."""

    def __init__(self, kernel_cfg: KernelConfig, table: TableLike, metrics: Any = None) -> None:
        """`metrics` (an `agent.metrics.Metrics`, optional) gets `edgeloop_anomaly_alarm`;
        the caller times `process` itself as `edgeloop_kernel_seconds`."""
        self.cfg = kernel_cfg
        self.table = table
        self.metrics = metrics
        names = list(table.names)
        problems = kernel_cfg.unknown_tags(names)
        if problems:
            raise KernelError("; ".join(problems))
        index = {name: i for i, name in enumerate(names)}
        kinds = getattr(table, "kinds", None) or ["analog"] * len(names)
        P = pt.compile_params(
            [kernel_cfg.params_for(n, k) for n, k in zip(names, kinds, strict=True)],
            table.min,
            table.max,
        )
        self.state = pt.TagState.new(P)
        self.groups: list[_Group] = [
            _Group(g, np.array([index[t] for t in g.tags], dtype=np.int64))
            for g in kernel_cfg.groups
        ]
        self._by_slice: dict[tuple[int, int], list[_Group]] = {}
        self._alarm_seen = np.zeros(len(names), dtype=np.int64)  # alarm state last reported
        st, tb = self.state, table
        jit.check(  # once: `process` passes these arrays to the compiled kernel unchecked
            "step_tags",
            (st.P, st.S, st.I, st.ring, st.srt, st.win, st.wbuf, st.due, tb.raw, tb.quality,
             tb.ts_ns, tb.value, tb.flags, tb.score, 0, 0),
        )  # fmt: skip
        groups = [(g.settings.name, g.idx) for g in self.groups]
        self.alarms = AlarmBook(metrics, names, self.state.P, groups)

    def warmup(self) -> None:
        """Load the compiled live path and run it once on throwaway state.

        Called from a worker thread before acquisition starts, so the first poll of a cold
        box does not stall the event loop for seconds while LLVM compiles; the runtime's
        own state is not touched.  Unless `EDGELOOP_KERNEL=jit`, a missing ahead-of-time
        module is built here in a child process (`aot.ensure`), so this process never
        imports numba; where it cannot be built, numba's JIT compiles (or loads its cache).
        """
        n = len(self.table.names)
        if n == 0:
            return
        if jit.mode() != "jit" and not jit.chosen():
            from agent.kernel import aot

            aot.ensure()
        live = jit.live()
        log.info("kernel: %s backend", live.backend)
        P = pt.compile_params(
            [self.cfg.params_for(self.table.names[0])], self.table.min[:1], self.table.max[:1]
        )
        st = pt.TagState.new(P)
        one = np.zeros(1)
        pt.step(
            st,
            one,
            np.zeros(1, np.uint8),
            np.zeros(1, np.int64),
            np.zeros(1),
            np.zeros(1, np.uint16),
            np.zeros(1),
        )
        for g in self.groups[:1]:
            k = g.idx.size
            rng = np.random.default_rng(0)
            X = rng.normal(size=(max(g.settings.warmup_samples, 4 * k), k))
            try:
                m = mv.fit_group(g.settings, np.arange(k, dtype=np.int64), X, 1.0)
            except mv.GroupFitError:
                return
            jit.live().group_step(X[0].copy(), np.zeros(k, np.uint16), *mv.model_args(m))

    # --- live path ------------------------------------------------------------------------

    def _groups_for(self, lo: int, hi: int) -> list[_Group]:
        key = (lo, hi)
        found = self._by_slice.get(key)
        if found is None:
            found = [g for g in self.groups if np.any((g.idx >= lo) & (g.idx < hi))]
            self._by_slice[key] = found
        return found

    def process(self, group: SliceLike) -> list[dict[str, Any]]:
        """Run the kernel over one poll group's slice; returns alarm transition events."""
        tb = self.table
        lo, hi = group.start, group.stop
        changed = pt.step(
            self.state, tb.raw, tb.quality, tb.ts_ns, tb.value, tb.flags, tb.score, lo, hi, True
        )
        events: list[dict[str, Any]] = []
        if changed:
            alarm = self.state.I[lo:hi, pt.I_ALARM]
            for j in np.flatnonzero(alarm != self._alarm_seen[lo:hi]):
                i = lo + int(j)
                on = bool(alarm[j])
                self._alarm_seen[i] = alarm[j]
                ev = {
                    "kind": N.EVENT_ANOMALY_ON if on else N.EVENT_ANOMALY_OFF,
                    "source": tb.names[i],
                    "level": "tag",
                    "score": float(tb.score[i]),
                    "flags": F.describe(int(tb.flags[i])),
                    "ts_ns": int(tb.ts_ns[i]),
                }
                cause = self.alarms.tag_transition(i, on, int(tb.flags[i]), float(tb.score[i]))
                if cause is not None:
                    ev["cause"] = cause
                events.append(ev)
        for g in self._groups_for(lo, hi):
            ev = self._step_group(g)
            if ev is not None:
                events.append(ev)
        return events

    def _step_group(self, g: _Group) -> dict[str, Any] | None:
        tb = self.table
        if g.model is None:
            if g.failed is not None:
                return None
            fl = tb.flags[g.idx]
            x = tb.value[g.idx]
            if np.any(fl & (F.INVALID | F.OUT_OF_RANGE)) or not np.all(np.isfinite(x)):
                return None
            g.buf[g.n] = x
            g.ts[g.n] = int(tb.ts_ns[g.idx].max())
            g.n += 1
            if g.n == g.buf.shape[0]:
                try:
                    g.model = mv.fit_group(g.settings, g.idx, g.buf, _period_s(g.ts))
                except mv.GroupFitError as exc:
                    g.failed = str(exc)
                    log.warning("kernel group disabled: %s", exc)
                    return None
                jit.check("group_step", (tb.value, tb.flags, *mv.model_args(g.model)))
                if self.metrics is not None:
                    self.metrics.set(ANOMALY_ALARM, 0.0, group=g.settings.name)
                if g.model.excluded:
                    log.warning(
                        "kernel group %s: constant in warm-up, excluded from the model: %s",
                        g.settings.name,
                        ", ".join(g.settings.tags[j] for j in g.model.excluded),
                    )
                g.buf = np.empty((0, g.idx.size))
            return None
        m = g.model
        trans = jit.live().group_step(tb.value, tb.flags, *mv.model_args(m))
        if trans == 0:
            return None
        if self.metrics is not None:
            self.metrics.set(ANOMALY_ALARM, float(m.alarm), group=m.name)
        ev = self._group_event(g, trans > 0, int(tb.ts_ns[g.idx].max()))
        cause = None
        if trans > 0:
            cause = group_cause(ev["t2"], ev["spe"], float(m.lims[0]), float(m.lims[1]))
            ev["cause"] = cause
        self.alarms.group_transition(m.name, g.idx, trans > 0, cause)
        return ev

    def _group_event(self, g: _Group, on: bool, ts_ns: int) -> dict[str, Any]:
        m = g.model
        assert m is not None
        if on:
            g.contrib = top_contributions(m, g.settings.tags)
        return {
            "kind": N.EVENT_ANOMALY_ON if on else N.EVENT_ANOMALY_OFF,
            "source": m.name,
            "level": "group",
            "score": m.score,
            "t2": float(m.fs[mv.GS_T2]),
            "spe": float(m.fs[mv.GS_SPE]),
            "contributions": dict(g.contrib),
            "ts_ns": ts_ns,
        }

    def group_status(self) -> dict[str, tuple[float, bool]]:
        """Per group: (smoothed score, alarm); NaN score while still learning."""
        out: dict[str, tuple[float, bool]] = {}
        for g in self.groups:
            if g.model is None:
                out[g.settings.name] = (float("nan"), False)
            else:
                out[g.settings.name] = (g.model.score, g.model.alarm)
        return out

    def last_contributions(self) -> dict[str, dict[str, float]]:
        """Per group: the top contributing tags (share of the deviation) at its last alarm
        onset; empty for a group that has not alarmed.  Kept after the alarm clears."""
        return {g.settings.name: dict(g.contrib) for g in self.groups}

    def group_summary(self) -> dict[str, dict[str, Any]]:
        """Per group, for `/readyz` and the report: learning | ok | alarm | failed, the
        score, the budget and the top contributing tags of the last alarm onset."""
        out: dict[str, dict[str, Any]] = {}
        for g in self.groups:
            m = g.model
            d: dict[str, Any] = {}
            if g.failed is not None:
                d["state"], d["error"] = "failed", g.failed
            elif m is None:
                d["state"] = "learning"
                d["collected"] = f"{g.n}/{g.settings.warmup_samples}"
            else:
                d["state"] = "alarm" if m.alarm else "ok"
                d["score"] = round(m.score, 3) if np.isfinite(m.score) else None
                d["budget"] = m.info.get("budget", f"alpha {g.settings.alpha:g}")
            if g.contrib:
                d["contributions"] = dict(g.contrib)
            out[g.settings.name] = d
        return out

    def group_info(self) -> dict[str, dict[str, Any]]:
        """Learning progress and model facts per group, for status pages and `replay`."""
        info: dict[str, dict[str, Any]] = {}
        for g in self.groups:
            d: dict[str, Any] = {"warmup": g.settings.warmup_samples, "collected": g.n}
            if g.failed:
                d["error"] = g.failed
            if g.model is not None:
                d["components"] = g.model.n_components
                d["t2_limit"] = float(g.model.lims[0])
                d["spe_limit"] = float(g.model.lims[1])
                d["excluded"] = [g.settings.tags[j] for j in g.model.excluded]
                d.update(g.model.info)
                if g.contrib:
                    d["contributions"] = dict(g.contrib)
            info[g.settings.name] = d
        return info

    def tag_budget_info(self) -> dict[str, dict[str, Any]]:
        """How each budgeted tag's score limit and k of n were set (`pertag.budget_limit`
        notes, or `error`), for tags whose warm-up is complete."""
        return {self.table.names[i]: dict(d) for i, d in sorted(self.state.info.items())}

    # --- replay path ----------------------------------------------------------------------

    def run(
        self,
        raw_2d: np.ndarray,
        quality_2d: np.ndarray | None = None,
        ts_ns: np.ndarray | None = None,
        period_s: float = 1.0,
    ) -> RunResult:
        """Replay a (samples x tags) array through the same jitted code as `process`.

        Each group learns from the valid rows among its first `warmup_samples` rows and
        scores every row after them; warm-up rows get a NaN group score and no alarm.
        Raises `mv.GroupFitError` when a group cannot be learned from its warm-up.
        """
        value, flags, score = pt.run(self.state, raw_2d, quality_2d, ts_ns, period_s)
        n_rows = value.shape[0]
        g_score: dict[str, np.ndarray] = {}
        g_alarm: dict[str, np.ndarray] = {}
        contrib: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for g in self.groups:
            w = g.settings.warmup_samples
            s_out = np.full(n_rows, np.nan)
            a_out = np.zeros(n_rows, dtype=np.uint8)
            if n_rows > w:
                rows = value[:w, g.idx]
                ok = np.all(np.isfinite(rows), axis=1) & ~np.any(
                    flags[:w, g.idx] & (F.INVALID | F.OUT_OF_RANGE), axis=1
                )
                t_ok = ts_ns[:w][ok] if ts_ns is not None else None
                period = _period_s(t_ok) if t_ok is not None else period_s
                g.model = mv.fit_group(g.settings, g.idx, rows[ok], period)
                g.n = int(ok.sum())
                contrib[g.settings.name] = self._run_group(g, value, flags, w, s_out, a_out)
            g_score[g.settings.name] = s_out
            g_alarm[g.settings.name] = a_out
        res = RunResult(value, flags, score, g_score, g_alarm)
        res.group_contrib = contrib
        return res

    def _run_group(
        self,
        g: _Group,
        value: np.ndarray,
        flags: np.ndarray,
        first: int,
        s_out: np.ndarray,
        a_out: np.ndarray,
    ) -> list[tuple[int, dict[str, float]]]:
        """Score rows first.. and return the contributions at each alarm onset (row, tags).

        A dry run on a copy of the model finds the onset rows; the real run then stops at
        each of them (the jitted scorer is deterministic) to read the contributions from the
        scorer's own scratch, exactly as the live path does at an onset.
        """
        m = g.model
        assert m is not None
        jit.check("group_run", (value, flags, first, *mv.model_args(m), s_out, a_out))
        dry = copy.deepcopy(m)
        a_dry = np.zeros_like(a_out)
        jit.live().group_run(value, flags.copy(), first, *mv.model_args(dry), s_out.copy(), a_dry)
        rows = np.flatnonzero(np.diff(a_dry.astype(np.int8), prepend=0) == 1)
        rows = rows[rows >= first][:MAX_REPLAY_ONSETS]
        out: list[tuple[int, dict[str, float]]] = []
        start = first
        for r in rows:
            end = int(r) + 1
            jit.live().group_run(value[:end], flags[:end], start, *mv.model_args(m), s_out, a_out)
            out.append((int(r), top_contributions(m, g.settings.tags)))
            start = end
        jit.live().group_run(value, flags, start, *mv.model_args(m), s_out, a_out)
        if out:
            g.contrib = out[-1][1]
        return out


TOP_CONTRIBUTORS = 3  # tags named in a group alarm event
MAX_REPLAY_ONSETS = 200  # alarm onsets per group whose contributions a replay keeps


def top_contributions(m: mv.GroupModel, tags: list[str]) -> dict[str, float]:
    """The members with the largest reconstruction-based contribution to the last sample."""
    contrib = mv.contributions(m)
    top = np.argsort(contrib, kind="stable")[::-1][:TOP_CONTRIBUTORS]
    return {tags[int(j)]: round(float(contrib[j]), 3) for j in top}


def _period_s(ts_ns: np.ndarray) -> float | None:
    """Median spacing of increasing timestamps in seconds; None when they do not advance."""
    d = np.diff(np.asarray(ts_ns, dtype=np.int64))
    d = d[d > 0]
    return float(np.median(d)) / 1e9 if d.size else None


class RunResult:
    """Replay output: per-tag arrays (samples x tags) and per-group score/alarm (samples)."""

    __slots__ = ("flags", "group_alarm", "group_contrib", "group_score", "score", "value")

    def __init__(
        self,
        value: np.ndarray,
        flags: np.ndarray,
        score: np.ndarray,
        group_score: dict[str, np.ndarray],
        group_alarm: dict[str, np.ndarray],
    ) -> None:
        self.value = value
        self.flags = flags
        self.score = score
        self.group_score = group_score
        self.group_alarm = group_alarm
        # per group: (row, top contributing tags) at each alarm onset, the first 200
        self.group_contrib: dict[str, list[tuple[int, dict[str, float]]]] = {}
