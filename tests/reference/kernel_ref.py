"""Plain-Python reference of the per-tag stage and the group scoring: obvious, not fast.

Written from the algorithm description in docs/kernel.md with plain lists and `sorted`, no
numpy and no shared code with `agent.kernel.pertag` beyond the flag bits, so a property test
comparing the two catches mistakes in the incremental sorted window, the MAD merge walk and
the state bookkeeping of the jitted code.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from agent.kernel import flags as F
from agent.kernel.pertag import budget_limit
from agent.kernel.settings import TagParams

MAD_TO_SIGMA = 1.4826
MEANABS_TO_SIGMA = 1.2533
MOVE_BETA = 0.02


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n % 2 == 1:
        return s[n // 2]
    return 0.5 * (s[n // 2 - 1] + s[n // 2])


@dataclass
class RefTag:
    """One tag's filter, written the slow and obvious way."""

    p: TagParams
    lo: float = -math.inf
    hi: float = math.inf
    window: list[float] = field(default_factory=list)
    y: float = math.nan
    kp: float = 0.0
    last_in: float = 0.0
    last_ts: int = 0
    base: float = 0.0
    scale: float = 0.0
    cpos: float = 0.0
    cneg: float = 0.0
    stuck_ref: float = 0.0
    stuck_run: int = 0
    move: float = 0.0
    move_at_run: float = 0.0
    last_score: float = 0.0
    zprev: float = 0.0
    zvar: float = 0.0
    zcov: float = 0.0
    n: int = 0
    on_run: int = 0
    off_run: int = 0
    alarm: bool = False
    t0: int = 0
    warm: list[float] = field(default_factory=list)  # budget: warm-up inputs
    bads: list[bool] = field(default_factory=list)  # budget: the last n bad/clear samples
    slim: float | None = None  # score alarm limit (budget: None until the warm-up is done)
    k: int = 0

    def __post_init__(self) -> None:
        self.slim = None if self.p.budgeted else self.p.score_threshold
        self.k = self.p.persistence_window

    def update(self, x: float, q: int, t: int) -> tuple[float, int, float]:
        p = self.p
        if q != 0 or not math.isfinite(x):
            return self.y, F.INVALID | (F.ANOMALOUS if self.alarm else 0), self.last_score
        f = 0
        bad = False
        calibrate = False
        if x < self.lo or x > self.hi:
            f = F.OUT_OF_RANGE
            score = self.last_score
        else:
            n = self.n
            xc = x
            w = p.hampel_window if p.hampel_window >= 3 else 0
            if w:
                self.window.append(x)
                if len(self.window) > w:
                    self.window.pop(0)
                if len(self.window) == w:
                    med = _median(self.window)
                    mad = _median([abs(v - med) for v in self.window])
                    dev = abs(x - med)
                    if dev > p.hampel_k * MAD_TO_SIGMA * mad and dev > p.spike_min_dev:
                        f |= F.SPIKE
                        xc = med
            if n > 0 and p.rate_limit_per_s is not None:
                dt = max((t - self.last_ts) * 1e-9, 0.0)
                lim = p.rate_limit_per_s * dt
                if xc > self.last_in + lim:
                    xc = self.last_in + lim
                    f |= F.RATE_LIMITED
                elif xc < self.last_in - lim:
                    xc = self.last_in - lim
                    f |= F.RATE_LIMITED
            self.last_in = xc
            self.last_ts = t
            if n == 0:
                self.t0 = t
            calibrate = False
            if p.budgeted and n < p.warmup_samples:
                self.warm.append(xc)
                calibrate = len(self.warm) == p.warmup_samples
            if n == 0:
                self.y = xc
                self.kp = p.kalman_r
            elif p.filter == "ewma":
                self.y += p.ewma_alpha * (xc - self.y)
            elif p.filter == "kalman":
                pk = self.kp + p.kalman_q
                gain = pk / (pk + p.kalman_r)
                self.y += gain * (xc - self.y)
                self.kp = (1.0 - gain) * pk
            else:
                self.y = xc
            if p.stuck_samples > 0:
                if n == 0:
                    self.stuck_ref = x
                elif abs(x - self.stuck_ref) <= p.stuck_epsilon:
                    if self.stuck_run == 0:
                        self.move_at_run = self.move
                    self.stuck_run += 1
                    self.move += MOVE_BETA * (0.0 - self.move)
                else:
                    self.stuck_ref = x
                    self.stuck_run = 0
                    self.move += MOVE_BETA * (1.0 - self.move)
                if self.stuck_run >= p.stuck_samples and self.move_at_run >= p.stuck_min_move_rate:
                    f |= F.STUCK
            if n == 0:
                self.base = xc
                self.scale = 0.0
            r = xc - self.base
            scale = max(self.scale, p.noise_floor)
            thr = p.score_threshold
            z = r / scale
            score = abs(z)
            z = min(max(z, -thr), thr)
            rho = self.zcov / self.zvar if self.zvar > 0.0 else 0.0
            rho = min(max(rho, 0.0), 0.95)
            if n >= p.warmup_samples:
                zc = z / math.sqrt((1.0 + rho) / (1.0 - rho))
                self.cpos = max(0.0, self.cpos + zc - p.cusum_k)
                self.cneg = max(0.0, self.cneg - zc - p.cusum_k)
                if self.cpos > p.cusum_h or self.cneg > p.cusum_h:
                    f |= F.DRIFT
                rc = min(max(r, -thr * scale), thr * scale)
                a = p.baseline_alpha
            else:
                score = 0.0
                rc = r
                a = max(1.0 / (n + 1.0), p.baseline_alpha)
            if n > 0:
                self.zvar += a * (z * z - self.zvar)
                self.zcov += a * (z * self.zprev - self.zcov)
            self.zprev = z
            self.base += a * rc
            self.scale += a * (abs(rc) * MEANABS_TO_SIGMA - self.scale)
            self.last_score = score
            self.n = n + 1
            if self.slim is not None and score > self.slim and "score" in p.alarm_on:
                bad = True
        causes = {
            "drift": F.DRIFT,
            "spike": F.SPIKE,
            "stuck": F.STUCK,
            "out_of_range": F.OUT_OF_RANGE,
        }
        if any(f & bit for cause, bit in causes.items() if cause in p.alarm_on):
            bad = True
        if p.budgeted:
            self.bads = [*self.bads, bad][-p.persistence_window :]
            self.alarm = sum(self.bads) >= self.k
        elif bad:
            self.on_run += 1
            self.off_run = 0
            if not self.alarm and self.on_run >= p.alarm_on_samples:
                self.alarm = True
        else:
            self.off_run += 1
            self.on_run = 0
            if self.alarm and self.off_run >= p.alarm_off_samples:
                self.alarm = False
        if self.alarm:
            f |= F.ANOMALOUS
        if calibrate:
            nb = p.warmup_samples
            period = (self.last_ts - self.t0) * 1e-9 / (nb - 1) if nb > 1 else None
            with contextlib.suppress(ValueError):  # no period: no score alarm
                self.slim, self.k, _ = budget_limit(
                    p.false_alarm_rate or 0.0, p.false_alarms_per_day or 0.0,
                    p.persistence_window, self.warm, p.baseline_alpha, period,
                )  # fmt: skip
        return self.y, f, score


def run_reference(
    params: list[TagParams],
    raw: list[list[float]],
    quality: list[list[int]] | None = None,
    ts_ns: list[int] | None = None,
    ranges: list[tuple[float, float]] | None = None,
) -> tuple[list[list[float]], list[list[int]], list[list[float]]]:
    """Rows of samples -> (values, flags, scores) rows, like `agent.kernel.pertag.run`."""
    tags = [RefTag(p) for p in params]
    if ranges is not None:
        for tag, (lo, hi) in zip(tags, ranges, strict=True):
            tag.lo, tag.hi = lo, hi
    values, flag_rows, scores = [], [], []
    for r, row in enumerate(raw):
        t = ts_ns[r] if ts_ns is not None else r * 1_000_000_000
        out = [
            tag.update(x, quality[r][i] if quality is not None else 0, t)
            for i, (tag, x) in enumerate(zip(tags, row, strict=True))
        ]
        values.append([o[0] for o in out])
        flag_rows.append([o[1] for o in out])
        scores.append([o[2] for o in out])
    return values, flag_rows, scores
