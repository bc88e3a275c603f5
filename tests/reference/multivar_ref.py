"""Plain-Python reference of the group scorer (T2/SPE, lags, EWMA, hysteresis or k of n,
adaptation)."""

from __future__ import annotations

import math

from agent.kernel.multivar import GroupModel


def score_reference(model: GroupModel, rows) -> list[tuple[float, int]]:
    """Score rows (sequence of k-vectors, group column order) -> (smoothed score, alarm) each.

    Works on Python copies of the fitted arrays; the jitted scorer may adapt its own.
    """
    mean = [float(v) for v in model.mean]
    sd = [float(v) for v in model.sd]
    load = [[float(v) for v in row] for row in model.load]
    lam = [float(v) for v in model.lam]
    t2_lim, spe_lim = float(model.lims[0]), float(model.lims[1])
    alpha, on_n, off_n, adapt, mode, k_of, lags = (float(v) for v in model.params)
    nlag = int(lags)
    k, a = len(mean), len(lam)
    kl = k * (nlag + 1)
    # lag history, most recent first: the standardised rows the fit left behind
    past = [[float(v) for v in model.hist[(int(model.ist[6]) - i) % nlag]] for i in range(nlag)]
    window = [0] * int(model.win.shape[0])  # exceedances, oldest first
    score, nscored, on_run, off_run, alarm = 0.0, 0, 0, 0, 0
    out: list[tuple[float, int]] = []
    for row in rows:
        x = [float(v) for v in row]
        if not all(math.isfinite(v) for v in x):
            out.append((score if nscored else math.nan, alarm))
            continue
        z_now = [(x[j] - mean[j]) / sd[j] if sd[j] > 0.0 else 0.0 for j in range(k)]
        z = z_now + [v for prev in past for v in prev]
        t = []
        t2 = 0.0
        for c in range(a):
            s = 0.0
            for j in range(kl):
                s += load[j][c] * z[j]
            t.append(s)
            t2 += s * s / lam[c]
        spe = 0.0
        for j in range(kl):
            s = z[j]
            for c in range(a):
                s -= load[j][c] * t[c]
            spe += s * s
        raw = max(t2 / t2_lim, spe / spe_lim)
        score = raw if nscored == 0 else score + alpha * (raw - score)
        nscored += 1
        if mode == 0.0:
            if score > 1.0:
                on_run, off_run = on_run + 1, 0
                if not alarm and on_run >= on_n:
                    alarm = 1
            else:
                on_run, off_run = 0, off_run + 1
                if alarm and off_run >= off_n:
                    alarm = 0
        else:
            window = [*window[1:], 1 if raw > 1.0 else 0]
            alarm = 1 if sum(window) >= k_of else 0  # episodes only shape the events
        if adapt > 0.0 and not alarm and raw <= 1.0:
            for j in range(k):
                if sd[j] > 0.0:
                    d = x[j] - mean[j]
                    mean[j] += adapt * d
                    sd[j] = math.sqrt(sd[j] * sd[j] + adapt * (d * d - sd[j] * sd[j]))
        if nlag:
            past = [z_now, *past[:-1]]
        out.append((score, alarm))
    return out
