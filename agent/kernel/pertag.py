"""Per-tag stage: validity, Hampel spikes, rate limit, EWMA/Kalman, stuck, CUSUM drift, score.

All state lives in arrays owned by the caller (`TagState`), one row per tag, so a frame of
one poll group is a single jitted call over `lo:hi` that allocates nothing.  `step_tags` (one
frame) and `run_tags` (a samples x tags array) both call the same `_update_tag`.

The Hampel window is kept twice per tag: a ring buffer in arrival order and a sorted copy,
updated by one deletion and one insertion (O(window)), so the median is a lookup and the
Hampel test is one counting loop (`_is_spike`) instead of a sort per sample.

A tag with a false-alarm budget (`false_alarm_rate` / `false_alarms_per_day`) alarms on "k of
the last n samples bad" instead of the on/off hysteresis; the jitted path keeps its warm-up
inputs in a preallocated buffer (`TagState.wbuf`) and counts finished warm-ups in
`TagState.due`, and `calibrate` (plain Python, once per tag) writes its score limit and k
into the parameter table (`budget_limit`, with `agent.kernel.stats`).

Every jitted function is compiled with `_nrt=False` (no numba reference-counting runtime):
the kernel allocates nothing, and the atomic incref/decref calls numba otherwise emits for
the array arguments of each inlined helper cost more than the arithmetic (32 -> 17 ns per
tag-sample on the path without Hampel and stuck checks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.kernel import jit
from agent.kernel import stats as st
from agent.kernel.flags import (
    ANOMALOUS,
    DRIFT,
    INVALID,
    OUT_OF_RANGE,
    RATE_LIMITED,
    SPIKE,
    STUCK,
)
from agent.kernel.settings import TagParams

# --- parameter columns (float64 [n, NP]) -----------------------------------------------------
P_FILTER = 0  # 0 none, 1 ewma, 2 kalman
P_ALPHA = 1
P_KQ = 2
P_KR = 3
P_HWIN = 4
P_HK = 5
P_SPIKE_MIN = 6
P_RATE = 7  # +inf = off
P_STUCK_N = 8
P_STUCK_EPS = 9
P_STUCK_MOVE = 10
P_BASE_ALPHA = 11
P_FLOOR = 12
P_CUSUM_K = 13
P_CUSUM_H = 14
P_THR = 15
P_ON = 16
P_OFF = 17
P_WARMUP = 18
P_MIN = 19  # -inf when unbounded
P_MAX = 20  # +inf when unbounded
P_ALARM = 21  # bit mask: flag bits + ALARM_SCORE that count as bad for the per-tag alarm
P_SLIM = 22  # score alarm limit: score_threshold, or (budget) computed at the warm-up's end
P_MODE = 23  # 0: on/off hysteresis; 1 (budget): k of the last n samples bad
P_K = 24  # k of the k-out-of-n alarm (budget; n until calibrated)
P_N = 25  # n, the persistence window (budget)
P_FAR = 26  # false_alarm_rate (share of samples), 0 = not given
P_FAPD = 27  # false_alarms_per_day (alarm onsets), 0 = not given
NP = 28

FILTER_CODES = {"none": 0, "ewma": 1, "kalman": 2}

# --- float state columns (float64 [n, NS]) ---------------------------------------------------
S_Y = 0  # filter output
S_KP = 1  # Kalman error variance
S_LAST_IN = 2  # last accepted (despiked, rate-limited) input
S_BASE = 3  # robust baseline
S_SCALE = 4  # robust residual scale
S_CPOS = 5
S_CNEG = 6
S_STUCK_REF = 7
S_MOVE = 8  # EWMA of "the value changed" per sample
S_MOVE_AT_RUN = 9  # S_MOVE when the current no-change run started
S_SCORE = 10  # last score, held over invalid samples
S_ZPREV = 11  # previous clipped standardised residual
S_ZVAR = 12  # EWMA of z^2
S_ZCOV = 13  # EWMA of z * z_prev (lag-1 autocovariance)
NS = 14

# --- integer state columns (int64 [n, NI]) ---------------------------------------------------
I_NSEEN = 0  # valid samples used so far
I_POS = 1  # ring write position
I_CNT = 2  # samples in the Hampel window
I_STUCK_RUN = 3
I_ON_RUN = 4
I_OFF_RUN = 5
I_ALARM = 6
I_LAST_TS = 7
I_WPOS = 8  # budget: next slot of the persistence window
I_WCOUNT = 9  # budget: bad samples in the window
I_T0 = 10  # timestamp of the first valid sample (the warm-up's sample period)
I_CALIB = 11  # budget: 0 not budgeted / learning, 1 warm-up done, limits due, 2 calibrated
NI = 12

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution -> its standard deviation
MEANABS_TO_SIGMA = 1.2533  # mean |x - mu| of a normal distribution -> its standard deviation
MOVE_BETA = 0.02  # EWMA weight of the "moves normally" estimate used by the stuck check
RHO_MAX = 0.95  # cap of the lag-1 autocorrelation used to widen the CUSUM (factor <= 6.2)
ALARM_SCORE = 256  # pseudo-bit in P_ALARM: score > score_threshold counts as bad
ALARM_BITS = {
    "score": ALARM_SCORE,
    "drift": DRIFT,
    "spike": SPIKE,
    "stuck": STUCK,
    "out_of_range": OUT_OF_RANGE,
}


def compile_params(
    params: Sequence[TagParams],
    mins: np.ndarray | None = None,
    maxs: np.ndarray | None = None,
) -> np.ndarray:
    """Settings of n tags -> the float64 [n, NP] parameter table the jitted code reads.

    `mins`/`maxs` are the tag table's engineering range (NaN = unbounded); a tag with
    `check_range: false` ignores them.
    """
    n = len(params)
    P = np.zeros((n, NP), dtype=np.float64)
    for i, p in enumerate(params):
        P[i, P_FILTER] = FILTER_CODES[p.filter]
        P[i, P_ALPHA] = p.ewma_alpha
        P[i, P_KQ] = p.kalman_q
        P[i, P_KR] = p.kalman_r
        P[i, P_HWIN] = p.hampel_window if p.hampel_window >= 3 else 0
        P[i, P_HK] = p.hampel_k
        P[i, P_SPIKE_MIN] = p.spike_min_dev
        P[i, P_RATE] = math.inf if p.rate_limit_per_s is None else p.rate_limit_per_s
        P[i, P_STUCK_N] = p.stuck_samples
        P[i, P_STUCK_EPS] = p.stuck_epsilon
        P[i, P_STUCK_MOVE] = p.stuck_min_move_rate
        P[i, P_BASE_ALPHA] = p.baseline_alpha
        P[i, P_FLOOR] = p.noise_floor
        P[i, P_CUSUM_K] = p.cusum_k
        P[i, P_CUSUM_H] = p.cusum_h
        P[i, P_THR] = p.score_threshold
        P[i, P_ON] = p.alarm_on_samples
        P[i, P_OFF] = p.alarm_off_samples
        P[i, P_WARMUP] = p.warmup_samples
        lo = -math.inf
        hi = math.inf
        if p.check_range:
            if mins is not None and not math.isnan(mins[i]):
                lo = float(mins[i])
            if maxs is not None and not math.isnan(maxs[i]):
                hi = float(maxs[i])
        P[i, P_MIN] = lo
        P[i, P_MAX] = hi
        P[i, P_ALARM] = sum({ALARM_BITS[c] for c in p.alarm_on})
        P[i, P_SLIM] = p.score_threshold
        P[i, P_N] = p.persistence_window
        if p.budgeted:
            # until the warm-up has set them: no score alarm, and all n samples bad
            P[i, P_MODE] = 1.0
            P[i, P_SLIM] = math.inf
            P[i, P_K] = p.persistence_window
            P[i, P_FAR] = p.false_alarm_rate or 0.0
            P[i, P_FAPD] = p.false_alarms_per_day or 0.0
    return P


@dataclass(slots=True)
class TagState:
    """Everything the per-tag stage remembers, as arrays; reset by building a new one."""

    P: np.ndarray  # float64 [n, NP]
    S: np.ndarray  # float64 [n, NS]
    I: np.ndarray  # int64 [n, NI]  # noqa: E741
    ring: np.ndarray  # float64 [n, W]
    srt: np.ndarray  # float64 [n, W]
    win: np.ndarray  # int64 [n, max persistence window of budgeted tags, or 1]
    wbuf: np.ndarray  # float64 [n, max warm-up of budgeted tags, or 1]: warm-up inputs
    due: np.ndarray  # int64 [1]: budgeted tags whose limits are due (`calibrate`)
    info: dict[int, dict[str, object]]  # per budgeted tag: how its limits were set

    @classmethod
    def new(cls, P: np.ndarray) -> TagState:
        n = P.shape[0]
        w = max(1, int(P[:, P_HWIN].max())) if n else 1
        bud = P[:, P_MODE] == 1.0
        nw = max(1, int(P[bud, P_N].max())) if bud.any() else 1
        nb = max(1, int(P[bud, P_WARMUP].max())) if bud.any() else 1
        S = np.zeros((n, NS), dtype=np.float64)
        S[:, S_Y] = np.nan
        return cls(
            P=np.array(P, dtype=np.float64, order="C"),  # own copy: calibration writes it
            S=S,
            I=np.zeros((n, NI), dtype=np.int64),
            ring=np.zeros((n, w), dtype=np.float64),
            srt=np.zeros((n, w), dtype=np.float64),
            win=np.zeros((n, nw), dtype=np.int64),
            wbuf=np.zeros((n, nb), dtype=np.float64),
            due=np.zeros(1, dtype=np.int64),
            info={},
        )

    @property
    def size(self) -> int:
        return int(self.P.shape[0])


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _is_spike(
    srt: np.ndarray, i: int, w: int, x: float, kk: float, min_dev: float
) -> tuple[bool, float]:
    """Hampel test on a full, sorted, odd window: (|x - median| > kk * MAD, median).

    The MAD is never formed: with h = w // 2, `kk * MAD < dev` holds exactly when at least
    h + 1 deviations d satisfy `kk * d < dev` (the MAD is the (h+1)-th smallest deviation and
    multiplying by kk > 0 keeps the order), so one fixed-length, branch-free counting loop
    replaces a selection with a data-dependent walk.  Bit-identical to forming the MAD.
    Most samples leave earlier, on a lower bound of the MAD read off the sorted window.
    """
    h = w // 2
    med = srt[i, h]
    dev = abs(x - med)
    # fast exit: at most 2m-1 <= h deviations are below lo, so MAD >= lo
    m = (h + 1) // 2
    lo = med - srt[i, h - m]
    hi = srt[i, h + m] - med
    spike = False
    if dev > kk * (lo if lo < hi else hi):
        c = 0
        for j in range(w):
            c += 1 if kk * abs(srt[i, j] - med) < dev else 0
        spike = c >= h + 1 and dev > min_dev
    return spike, med


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _window_push(ring: np.ndarray, srt: np.ndarray, I: np.ndarray, i: int, w: int, x: float) -> int:  # noqa: E741
    """Add x to tag i's Hampel window (dropping the oldest when full); returns the count.

    Positions are found by fixed-length counting loops (branch-free, vectorisable); only the
    shift between the removed and the inserted position is a variable-length loop.
    """
    cnt = I[i, I_CNT]
    pos = I[i, I_POS]
    if cnt == w:
        old = ring[i, pos]
        p = 0  # index of (the first copy of) old in the sorted window
        c = 0  # elements <= x
        for j in range(w):
            p += 1 if srt[i, j] < old else 0
            c += 1 if srt[i, j] <= x else 0
        q = c - (1 if old <= x else 0)  # insert position once old is removed
        if q >= p:
            for j in range(p, q):
                srt[i, j] = srt[i, j + 1]
        else:
            for j in range(p, q, -1):
                srt[i, j] = srt[i, j - 1]
        srt[i, q] = x
    else:
        q = 0
        for j in range(cnt):
            q += 1 if srt[i, j] <= x else 0
        for j in range(cnt, q, -1):
            srt[i, j] = srt[i, j - 1]
        srt[i, q] = x
        cnt += 1
        I[i, I_CNT] = cnt
    ring[i, pos] = x
    pos += 1
    I[i, I_POS] = pos if pos < w else 0
    return cnt


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _update_tag(
    i: int,
    x: float,
    q: int,
    t: int,
    P: np.ndarray,
    S: np.ndarray,
    I: np.ndarray,  # noqa: E741
    ring: np.ndarray,
    srt: np.ndarray,
    win: np.ndarray,
    wbuf: np.ndarray,
    due: np.ndarray,
) -> tuple[float, int, float]:
    """One sample of one tag -> (filtered value, flags, score); updates row i of the state."""
    # one exit only: every return of an inlined function keeps numba's reference counting of
    # the array arguments alive, and those atomic calls cost more than the arithmetic
    f = 0
    score = 0.0
    if q != 0 or not math.isfinite(x):
        f = INVALID
        if I[i, I_ALARM] != 0:
            f |= ANOMALOUS
        score = S[i, S_SCORE]
    else:
        bad = False
        mask = int(P[i, P_ALARM])
        if x < P[i, P_MIN] or x > P[i, P_MAX]:
            f = OUT_OF_RANGE
            score = S[i, S_SCORE]
        else:
            n = I[i, I_NSEEN]
            xc = x
            # Hampel spike rejection on the raw window
            w = int(P[i, P_HWIN])
            if w >= 3:
                cnt = _window_push(ring, srt, I, i, w, x)
                if cnt == w:
                    spike, med = _is_spike(
                        srt, i, w, x, P[i, P_HK] * MAD_TO_SIGMA, P[i, P_SPIKE_MIN]
                    )
                    if spike:
                        f |= SPIKE
                        xc = med
            # rate-of-change limit against the last accepted input
            if n > 0:
                rate = P[i, P_RATE]
                if rate < math.inf:
                    dt = (t - I[i, I_LAST_TS]) * 1e-9
                    if dt < 0.0:
                        dt = 0.0
                    lim = rate * dt
                    last = S[i, S_LAST_IN]
                    if xc > last + lim:
                        xc = last + lim
                        f |= RATE_LIMITED
                    elif xc < last - lim:
                        xc = last - lim
                        f |= RATE_LIMITED
            S[i, S_LAST_IN] = xc
            I[i, I_LAST_TS] = t
            if n == 0:
                I[i, I_T0] = t
            budget = P[i, P_MODE] != 0.0
            if budget and n < P[i, P_WARMUP]:
                # the budgeted limits are computed from these once the warm-up is complete
                wbuf[i, n] = xc
                if n + 1 >= P[i, P_WARMUP]:
                    I[i, I_CALIB] = 1
                    due[0] += 1
            # smoothing
            kind = int(P[i, P_FILTER])
            y = S[i, S_Y]
            if n == 0:
                y = xc
                S[i, S_KP] = P[i, P_KR]
            elif kind == 1:
                y += P[i, P_ALPHA] * (xc - y)
            elif kind == 2:
                pk = S[i, S_KP] + P[i, P_KQ]
                gain = pk / (pk + P[i, P_KR])
                y += gain * (xc - y)
                S[i, S_KP] = (1.0 - gain) * pk
            else:
                y = xc
            S[i, S_Y] = y
            # stuck sensor: a no-change run on the raw value of a tag that normally moves
            sn = P[i, P_STUCK_N]
            if sn > 0:
                run = I[i, I_STUCK_RUN]
                move = S[i, S_MOVE]
                if n == 0:
                    S[i, S_STUCK_REF] = x
                elif abs(x - S[i, S_STUCK_REF]) <= P[i, P_STUCK_EPS]:
                    if run == 0:
                        S[i, S_MOVE_AT_RUN] = move
                    run += 1
                    move += MOVE_BETA * (0.0 - move)
                else:
                    S[i, S_STUCK_REF] = x
                    run = 0
                    move += MOVE_BETA * (1.0 - move)
                I[i, I_STUCK_RUN] = run
                S[i, S_MOVE] = move
                if run >= sn and S[i, S_MOVE_AT_RUN] >= P[i, P_STUCK_MOVE]:
                    f |= STUCK
            # robust score and CUSUM drift on the residual from a slow, clipped baseline
            # (state in locals: loaded once, stored once)
            if n == 0:
                base = xc
                scale0 = 0.0
            else:
                base = S[i, S_BASE]
                scale0 = S[i, S_SCALE]
            r = xc - base
            floor = P[i, P_FLOOR]
            scale = scale0 if scale0 >= floor else floor
            thr = P[i, P_THR]
            z = r / scale
            score = abs(z)
            if z > thr:
                z = thr
            elif z < -thr:
                z = -thr
            # lag-1 autocorrelation of z: process signals wander, and a CUSUM that assumes
            # independent samples false-alarms on them; widen z by sqrt((1+rho)/(1-rho))
            zvar = S[i, S_ZVAR]
            zcov = S[i, S_ZCOV]
            rho = zcov / zvar if zvar > 0.0 else 0.0
            if rho < 0.0:
                rho = 0.0
            elif rho > RHO_MAX:
                rho = RHO_MAX
            if n >= P[i, P_WARMUP]:
                zc = z / math.sqrt((1.0 + rho) / (1.0 - rho))
                ck = P[i, P_CUSUM_K]
                cp = S[i, S_CPOS] + zc - ck
                cm = S[i, S_CNEG] - zc - ck
                cp = cp if cp > 0.0 else 0.0
                cm = cm if cm > 0.0 else 0.0
                S[i, S_CPOS] = cp
                S[i, S_CNEG] = cm
                h = P[i, P_CUSUM_H]
                if cp > h or cm > h:
                    f |= DRIFT
                lim = thr * scale
                rc = r
                if rc > lim:
                    rc = lim
                elif rc < -lim:
                    rc = -lim
                a = P[i, P_BASE_ALPHA]
            else:
                score = 0.0
                rc = r
                a = 1.0 / (n + 1.0)
                if a < P[i, P_BASE_ALPHA]:
                    a = P[i, P_BASE_ALPHA]
            if n > 0:
                S[i, S_ZVAR] = zvar + a * (z * z - zvar)
                S[i, S_ZCOV] = zcov + a * (z * S[i, S_ZPREV] - zcov)
            S[i, S_ZPREV] = z
            S[i, S_BASE] = base + a * rc
            S[i, S_SCALE] = scale0 + a * (abs(rc) * MEANABS_TO_SIGMA - scale0)
            S[i, S_SCORE] = score
            I[i, I_NSEEN] = n + 1
            if score > P[i, P_SLIM] and (mask & ALARM_SCORE) != 0:
                bad = True
        if f & mask:
            bad = True
        alarm = I[i, I_ALARM]
        if P[i, P_MODE] != 0.0:
            # budget: the alarm is exactly "k of the last n samples bad", what k was chosen for
            pos = I[i, I_WPOS]
            b = 1 if bad else 0
            cnt = I[i, I_WCOUNT] + b - win[i, pos]
            win[i, pos] = b
            pos += 1
            I[i, I_WPOS] = pos if pos < P[i, P_N] else 0
            I[i, I_WCOUNT] = cnt
            alarm = 1 if cnt >= P[i, P_K] else 0
        # alarm hysteresis: on after N consecutive bad samples, off after M consecutive clear
        elif bad:
            on_run = I[i, I_ON_RUN] + 1
            I[i, I_ON_RUN] = on_run
            I[i, I_OFF_RUN] = 0
            if alarm == 0 and on_run >= P[i, P_ON]:
                alarm = 1
        else:
            off_run = I[i, I_OFF_RUN] + 1
            I[i, I_OFF_RUN] = off_run
            I[i, I_ON_RUN] = 0
            if alarm != 0 and off_run >= P[i, P_OFF]:
                alarm = 0
        I[i, I_ALARM] = alarm
        if alarm != 0:
            f |= ANOMALOUS
    return S[i, S_Y], f, score


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def step_tags(
    P: np.ndarray,
    S: np.ndarray,
    I: np.ndarray,  # noqa: E741
    ring: np.ndarray,
    srt: np.ndarray,
    win: np.ndarray,
    wbuf: np.ndarray,
    due: np.ndarray,
    raw: np.ndarray,
    quality: np.ndarray,
    ts_ns: np.ndarray,
    value: np.ndarray,
    flags: np.ndarray,
    score: np.ndarray,
    lo: int,
    hi: int,
) -> int:
    """One frame: tags lo:hi of the table arrays; returns how many tags changed alarm state."""
    changed = 0
    for i in range(lo, hi):
        a0 = I[i, I_ALARM]
        y, f, s = _update_tag(i, raw[i], quality[i], ts_ns[i], P, S, I, ring, srt, win, wbuf, due)
        value[i] = y
        flags[i] = f
        score[i] = s
        if I[i, I_ALARM] != a0:
            changed += 1
    return changed


@jit.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def run_tags(
    P: np.ndarray,
    S: np.ndarray,
    I: np.ndarray,  # noqa: E741
    ring: np.ndarray,
    srt: np.ndarray,
    win: np.ndarray,
    wbuf: np.ndarray,
    due: np.ndarray,
    raw: np.ndarray,
    quality: np.ndarray,
    ts_ns: np.ndarray,
    value: np.ndarray,
    flags: np.ndarray,
    score: np.ndarray,
    first: int,
) -> int:
    """Replay: rows first.. of a (samples x tags) array, one timestamp per row.

    Returns the next row to run: the number of rows, or earlier, after the row at whose end
    a budgeted tag's warm-up completed (the caller computes its limits, then resumes).
    """
    n_rows, n_tags = raw.shape
    for r in range(first, n_rows):
        t = ts_ns[r]
        for i in range(n_tags):
            y, f, s = _update_tag(
                i, raw[r, i], quality[r, i], t, P, S, I, ring, srt, win, wbuf, due
            )
            value[r, i] = y
            flags[r, i] = f
            score[r, i] = s
        if due[0] != 0:
            return r + 1
    return n_rows


def step(
    state: TagState,
    raw: np.ndarray,
    quality: np.ndarray,
    ts_ns: np.ndarray,
    value: np.ndarray,
    flags: np.ndarray,
    score: np.ndarray,
    lo: int = 0,
    hi: int | None = None,
    checked: bool = False,
) -> int:
    """Per-tag stage over tags lo:hi of full-length table arrays (written in place).

    Returns the number of tags whose alarm state changed in this frame.  `checked=True`:
    the caller has passed these arrays through `jit.check` before (`KernelRuntime`), so the
    per-frame check is skipped.
    """
    if hi is None:
        hi = state.size
    args = (
        state.P, state.S, state.I, state.ring, state.srt, state.win, state.wbuf, state.due,
        raw, quality, ts_ns, value, flags, score, int(lo), int(hi),
    )  # fmt: skip
    if not checked:
        jit.check("step_tags", args)
    changed = jit.live().step_tags(*args)
    if state.due[0]:
        calibrate(state)
    return int(changed)


MEANABS_EFFICIENCY = 1.0 / (math.pi - 2.0)  # 0.876: t degrees of freedom per mean-|r| sample
MIN_DF = 3.0


SIM_SAMPLES = 200_000  # model series for the score's tail clustering
_TAIL_RHO: dict[tuple[float, int, float], float] = {}


def score_tail_rho(rho: float, n_win: int, baseline_alpha: float) -> float:
    """Latent AR(1) correlation of the score's exceedances when the input is a Gaussian AR(1)
    with `rho`: a fixed-seed model series is scored by this stage itself (its baseline and
    running scale, weight `baseline_alpha`) and `stats.tail_autocorr` measures how the
    score's exceedances bunch within the window.  Cached per rho rounded to 0.01 (a warm-up
    does not know it better), window and weight."""
    key = (round(rho, 2), int(n_win), float(baseline_alpha))
    got = _TAIL_RHO.get(key)
    if got is None:
        burn = int(min(5.0 / baseline_alpha, 5000))
        n = SIM_SAMPLES + burn
        e = np.random.default_rng(0).standard_normal(n)
        x = np.empty((n, 1))
        x[0, 0] = e[0]
        c = math.sqrt(1.0 - key[0] ** 2)
        for t in range(1, n):
            x[t, 0] = key[0] * x[t - 1, 0] + c * e[t]
        p = TagParams(
            filter="none", hampel_window=0, stuck_samples=0, alarm_on=(),
            baseline_alpha=baseline_alpha, warmup_samples=30,
        )  # fmt: skip
        _, _, score = run(TagState.new(compile_params([p])), x)
        got = min(st.tail_autocorr(score[burn:, 0], key[1]), RHO_MAX)
        _TAIL_RHO[key] = got
    return got


def budget_limit(
    p_far: float,
    p_fapd: float,
    n_win: int,
    x: np.ndarray,
    baseline_alpha: float,
    period_s: float | None,
) -> tuple[float, int, dict[str, object]]:
    """(score limit, k, notes) of one tag's false-alarm budget from its warm-up inputs `x`.

    rho is the warm-up's lag-1 autocorrelation (rounded to 0.01: a warm-up does not know it
    better, and tags with the same rho and budget share one design, see `_design`).
    """
    x = np.asarray(x, dtype=np.float64)
    rho = round(min(max(st.lag1_autocorr(x), 0.0), RHO_MAX), 2)
    notes: dict[str, object] = {"rho": rho, "warmup_samples": int(x.size)}
    if p_far > 0.0:
        budget, onset = p_far, False
        notes["budget"] = f"{p_far:g} of samples"
    else:
        if period_s is None or not period_s > 0.0:
            raise ValueError(
                "false_alarms_per_day needs the sample period (timestamps that advance "
                "during the warm-up)"
            )
        budget = float(f"{min(0.25, p_fapd * period_s / 86400.0):.3g}")  # 3 digits: shared
        onset = True
        notes["budget"] = f"{p_fapd:g} onsets/day at {period_s:g} s = {budget:.3g} per sample"
    limit, k, level, rho_s, df = _design(budget, onset, int(n_win), rho, float(baseline_alpha))
    notes.update(
        rho_score=round(rho_s, 3), k_of_n=f"{k} of {n_win}", sample_level=round(level, 6),
        df=round(df, 1), score_limit=round(limit, 4),
    )  # fmt: skip
    return limit, k, notes


@functools.lru_cache(maxsize=1024)
def _design(
    budget: float, onset: bool, n_win: int, rho: float, baseline_alpha: float
) -> tuple[float, int, float, float, float]:
    """(limit, k, per-sample level, rho of the score's exceedances, df) for a budget.

    The score is |r| / s: r the residual from the slow baseline, s its running scale, an
    EWMA of |r| with weight a = baseline_alpha.  For a Gaussian residual that is a Student t
    whose degrees of freedom are those of the scale: (2 - a) / a samples in the EWMA, worth
    1 / (pi - 2) = 0.876 each for a mean-|r| estimate.  `stats.persistence` picks k of n and
    the per-sample level with the AR(1) window probabilities, for the latent correlation of
    the score's exceedances (`score_tail_rho`); the limit is that level's two-sided t
    quantile, sqrt(F(1 - level; 1, df)).  A few tenths of a second; cached.
    """
    # the score is two-sided (|r| over a running scale): its exceedances cluster less than
    # the residual itself.  The persistence uses the latent AR(1) that reproduces how the
    # score's exceedances bunch within the window for a Gaussian AR(1) input with the
    # warm-up's rho (rho is estimated well from a short warm-up, the clustering of a tail
    # would not be)
    rho_s = score_tail_rho(rho, n_win, baseline_alpha) if rho > 0.0 else 0.0
    k, level = st.persistence(budget, n_win, rho_s, onset)
    # with autocorrelated residuals the scale's error is larger but moves with the residual
    # (a wandering signal has a large recent |r| and a large scale together), which offsets
    # it: the independent-sample df fits both (tests/unit/test_kernel_tag_budget.py)
    a = baseline_alpha
    df = max(MEANABS_EFFICIENCY * (2.0 - a) / a, MIN_DF)
    limit = math.sqrt(st.f_ppf(1.0 - level, 1.0, df))
    return limit, k, level, rho_s, df


def calibrate(state: TagState) -> None:
    """Set the score limit and k of every budgeted tag whose warm-up has just completed.

    Called by `step`/`run` (plain Python, once per tag) when the jitted path reports a
    completed warm-up in `state.due`; the per-sample path itself never allocates.  A tag whose
    budget cannot be evaluated (per day without advancing timestamps) keeps no score alarm
    (the limit stays infinite) and says why in `state.info`.
    """
    P, I = state.P, state.I  # noqa: E741
    for i in np.flatnonzero(I[:, I_CALIB] == 1):
        nb = int(P[i, P_WARMUP])
        span_s = (I[i, I_LAST_TS] - I[i, I_T0]) * 1e-9
        period = span_s / (nb - 1) if nb > 1 else None
        try:
            limit, k, notes = budget_limit(
                P[i, P_FAR], P[i, P_FAPD], int(P[i, P_N]), state.wbuf[i, :nb],
                P[i, P_BASE_ALPHA], period,
            )  # fmt: skip
        except ValueError as exc:
            state.info[int(i)] = {"error": str(exc)}
        else:
            P[i, P_SLIM] = limit
            P[i, P_K] = k
            state.info[int(i)] = notes
        I[i, I_CALIB] = 2
    state.due[0] = 0


def run(
    state: TagState,
    raw: np.ndarray,
    quality: np.ndarray | None = None,
    ts_ns: np.ndarray | None = None,
    period_s: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay a (samples x tags) float64 array -> (value, flags, score) arrays of its shape.

    Without timestamps the rows are `period_s` apart (only the rate limit uses time).
    """
    raw = np.ascontiguousarray(raw, dtype=np.float64)
    n_rows, n_tags = raw.shape
    if n_tags != state.size:
        raise ValueError(f"raw has {n_tags} columns, the kernel state {state.size} tags")
    if quality is None:
        quality = np.zeros(raw.shape, dtype=np.uint8)
    if ts_ns is None:
        ts_ns = (np.arange(n_rows, dtype=np.int64) * round(period_s * 1e9)).astype(np.int64)
    value = np.empty_like(raw)
    flags = np.empty(raw.shape, dtype=np.uint16)
    score = np.empty_like(raw)
    quality = np.ascontiguousarray(quality, dtype=np.uint8)
    ts_ns = np.ascontiguousarray(ts_ns, dtype=np.int64)
    jit.check(
        "run_tags",
        (state.P, state.S, state.I, state.ring, state.srt, state.win, state.wbuf, state.due,
         raw, quality, ts_ns, value, flags, score, 0),
    )  # fmt: skip
    r = 0
    while r < n_rows:
        r = jit.live().run_tags(
            state.P, state.S, state.I, state.ring, state.srt, state.win, state.wbuf, state.due,
            raw, quality, ts_ns, value, flags, score, r,
        )  # fmt: skip
        if state.due[0]:
            calibrate(state)
    return value, flags, score
