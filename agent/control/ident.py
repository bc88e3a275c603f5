"""System identification from the plant's own data (pure: arrays in, models out, no I/O).

What it gives (issue 12, piece 2):
- `fit_fopdt` / `fit_sopdt`: gain, time constant(s) and dead time by output-error least
  squares - the model is *simulated* from the inputs (exact zero-order-hold discretisation,
  fractional dead time), the dead time and time constants found by a grid search whose
  inner problem (gains, offset, initial transient) is linear, then refined by a compass
  search. Measured disturbances are extra channels with their own gain, lag and dead time.
- `identify`: candidates on the first part of the data - ARX by least squares over orders
  na, nb in 1..3 and dead times around the FOPDT's, each also refined by one instrumental-
  variable step (consistent when the noise is not ARX-white, which on a plant it never is),
  plus the FOPDT and SOPDT fits (dynamics searched on the data as recorded and high-passed)
  written as ARX - all judged by *simulation*: each model runs free over the whole record
  from the inputs alone, and its NRMSE fit % (100 = perfect) is taken on the held-out tail;
  the simplest within 0.5 % of the best wins. Below `min_fit_pct` the model is refused
  (`ok=False`, `why` says why): never used silently. Residual whiteness (Ljung-Box) and
  local gains over the operating range go into the card.
- `LinearModel`: ARX with per-input dead time, in deviation variables around the operating
  point; simulate, state space (dead time as delay states in A), JSON card, a perturbed copy
  for mismatch tests; `Predictor`: the run-time model check (free-run with a slow bias).
- `simc_pid`: SIMC (Skogestad 2003) on the FOPDT or SOPDT; `excitation`: is the data
  informative at all, and if not, why.

Why plain numpy and not a library (PyPI metadata checked for this choice):
- python-control 0.10.2 requires scipy and matplotlib; it converts and analyses systems
  but does not fit ARX/output-error models with dead-time selection to data.
- harold 1.0.3 requires scipy, matplotlib and tabulate<0.9 (last release 2022); it is a
  representation/design toolbox, no estimation from data.
- sysidentpy 0.9.0 requires numpy<=2.3.5 (this project runs numpy 2.4), scipy and
  matplotlib; its focus is NARMAX structure selection, and its dead-time handling is by lag
  search like the one here.
All three pull scipy (tens of MB on an aarch64 box, not otherwise needed by the agent) for
what is here a few least-squares solves, FFT correlations and a blocked linear simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CARD_FORMAT = "edgeloop.linear_model"
CARD_VERSION = 1
MIN_SAMPLES = 50  # fewer samples than this cannot say anything about dynamics
MAX_MISSING = 0.2  # share of missing/bad samples beyond which the data is refused
_BLOCK = 64  # block length of the vectorised simulation
_FRACS = np.array([0.0, 0.25, 0.5, 0.75])  # fractional dead-time grid (refined later)

# --- public model types ------------------------------------------------------------------


@dataclass(frozen=True)
class Fopdt:
    """K e^(-theta s) / (tau s + 1): y/u gain, time constant, dead time (seconds)."""

    K: float
    tau_s: float
    theta_s: float


@dataclass(frozen=True)
class Sopdt:
    """K e^(-theta s) / ((tau1 s + 1)(tau2 s + 1)), tau1 >= tau2."""

    K: float
    tau1_s: float
    tau2_s: float
    theta_s: float


@dataclass(frozen=True, eq=False)
class StateSpace:
    """x+ = A x + B du + Bd dd ; dy = C x, at dt_s, deviations around (u0, d0, y0).

    The dead time is inside A (delay states), so B acts on the input of this period.
    The state is not measured: `LinearModel.state_from_history` rebuilds it exactly from
    the last n outputs and inputs (an ARX model's state is a function of its past)."""

    A: np.ndarray
    B: np.ndarray
    Bd: np.ndarray
    C: np.ndarray
    dt_s: float
    u0: float
    d0: np.ndarray
    y0: float


@dataclass(frozen=True, eq=False)
class LinearModel:
    """ARX with per-input dead time, the identified plant, in deviation variables:

        dy[k] = -sum_i a[i-1] dy[k-i] + sum_inputs sum_j b[inp, j] dx_inp[k - nk[inp] - j]

    with dy = y - y0 and inputs x = (u, d_1, ..., d_m) around (u0, d0). nk >= 1: y[k] is
    measured before u[k] is written, as the control loop does. `local_gains` are
    (u operating point, gain) pairs where the data showed the gain varies; `info` carries
    the identification's quality and provenance (JSON-safe) into the card.
    """

    dt_s: float
    na: int
    nb: int
    nk: tuple[int, ...]
    a: np.ndarray
    b: np.ndarray
    u0: float
    d0: np.ndarray
    y0: float
    d_names: tuple[str, ...] = ()
    local_gains: tuple[tuple[float, float], ...] = ()
    kind: str = "arx"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.a, dtype=float).reshape(-1)
        b = np.atleast_2d(np.asarray(self.b, dtype=float))
        d0 = np.asarray(self.d0, dtype=float).reshape(-1)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "d0", d0)
        object.__setattr__(self, "nk", tuple(int(k) for k in self.nk))
        if not self.d_names:
            object.__setattr__(self, "d_names", tuple(f"d{i + 1}" for i in range(len(d0))))
        m = 1 + len(d0)
        if a.shape != (self.na,) or b.shape != (m, self.nb) or len(self.nk) != m:
            raise ValueError(
                f"inconsistent ARX shapes: na={self.na} a{a.shape}, nb={self.nb} b{b.shape}, "
                f"nk={self.nk}, {m} inputs"
            )
        if len(self.d_names) != len(d0):
            raise ValueError(f"{len(d0)} disturbances but names {self.d_names}")
        if min(self.nk) < 1 or self.dt_s <= 0:
            raise ValueError(f"nk must be >= 1 and dt_s > 0 (nk={self.nk}, dt_s={self.dt_s})")

    # -- structure
    @property
    def n_inputs(self) -> int:
        return 1 + len(self.d0)

    def _x0(self) -> np.ndarray:
        return np.concatenate(([self.u0], self.d0))

    def input_gains(self) -> np.ndarray:
        """Steady-state dy/dx for every input (u first)."""
        den = 1.0 + float(self.a.sum())
        if abs(den) < 1e-12:
            return np.full(self.n_inputs, math.inf)
        return self.b.sum(axis=1) / den

    def gain(self) -> float:
        """Steady-state dy/du."""
        return float(self.input_gains()[0])

    def gain_at(self, u: float) -> float:
        """The local gain at output level `u` (interpolated), or `gain()` without local gains."""
        if not self.local_gains:
            return self.gain()
        ops = np.array([p[0] for p in self.local_gains])
        gs = np.array([p[1] for p in self.local_gains])
        return float(np.interp(u, ops, gs))

    def at_operating_point(self, u: float) -> LinearModel:
        """This model with the u-channel scaled to the local gain at `u` (gain scheduling)."""
        g = self.gain()
        if not self.local_gains or g == 0.0:
            return self
        b = self.b.copy()
        b[0] *= self.gain_at(u) / g
        return replace(self, b=b, local_gains=())

    def settling_time_s(self) -> float:
        """Rough 98 % settling time of the u-channel: dead time + 4 dominant time constants."""
        r = np.abs(np.roots(np.concatenate(([1.0], self.a)))) if self.na else np.zeros(1)
        rmax = float(r.max()) if r.size else 0.0
        tau = math.inf if rmax >= 1.0 else (-self.dt_s / math.log(rmax) if rmax > 0 else 0.0)
        return (self.nk[0] - 1 + self.nb) * self.dt_s + 4.0 * tau

    def is_stable(self) -> bool:
        return _stable(self.a)

    # -- simulation
    def _shifted(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([_delay(X[:, i], self.nk[i] - 1) for i in range(self.n_inputs)])

    def _inputs(self, u: np.ndarray, d: np.ndarray | None) -> np.ndarray:
        u = np.asarray(u, dtype=float).reshape(-1)
        n = len(u)
        if len(self.d0) == 0:
            D = np.zeros((n, 0))
        elif d is None:
            D = np.tile(self.d0, (n, 1))
        else:
            D = np.asarray(d, dtype=float).reshape(n, -1)
            if D.shape[1] != len(self.d0):
                raise ValueError(f"d has {D.shape[1]} columns, the model {len(self.d0)}")
        return np.column_stack([u, D])

    def simulate(
        self, u: np.ndarray, d: np.ndarray | None, y_init: float | None = None
    ) -> np.ndarray:
        """Free-run output (absolute units) for inputs u (N,), d (N, m) or None (held at d0).

        Before the first sample the inputs are held at their first values; the output starts
        at the matching steady state, or at `y_init` (then it relaxes from there).
        """
        X = self._inputs(u, d)
        if len(X) == 0:
            return np.zeros(0)
        Xd = X - self._x0()
        V = self._shifted(Xd)
        A, B, c = _canon(self.a, self.b.T)
        n = A.shape[0]
        y_ss = float(self.input_gains() @ Xd[0])
        yp = np.full(n, y_ss if y_init is None else y_init - self.y0)
        x0 = _state_from_past(self.a, self.b.T, yp, np.tile(V[0], (n, 1)))
        with np.errstate(all="ignore"):
            y = _lsim(A, B, c, x0, V)
        return y + self.y0

    def to_state_space(self) -> StateSpace:
        """Observable canonical form with the dead time as delay states (n = max lag)."""
        bt = self._bt_full()
        A, B, c = _canon(self.a, bt)
        return StateSpace(
            A=A,
            B=B[:, :1].copy(),
            Bd=B[:, 1:].copy(),
            C=c.reshape(1, -1),
            dt_s=self.dt_s,
            u0=self.u0,
            d0=self.d0.copy(),
            y0=self.y0,
        )

    def _bt_full(self) -> np.ndarray:
        """Coefficients by lag (rows: lag 1..L) and input (columns), dead time included."""
        lmax = max(k + self.nb - 1 for k in self.nk)
        bt = np.zeros((lmax, self.n_inputs))
        for i, k in enumerate(self.nk):
            bt[k - 1 : k - 1 + self.nb, i] = self.b[i]
        return bt

    def state_from_history(
        self, y_past: np.ndarray, u_past: np.ndarray, d_past: np.ndarray | None = None
    ) -> np.ndarray:
        """The `to_state_space()` state now from the last n samples (most recent last) of
        the output and inputs in absolute units; n = the state dimension."""
        bt = self._bt_full()
        n = max(self.na, bt.shape[0], 1)
        yp = np.asarray(y_past, dtype=float)[-n:] - self.y0
        X = self._inputs(
            np.asarray(u_past, dtype=float)[-n:],
            None
            if d_past is None
            else np.asarray(d_past, dtype=float).reshape(len(np.asarray(u_past)), -1)[-n:],
        )
        if len(yp) < n or len(X) < n:
            raise ValueError(f"need the last {n} samples of y, u (and d)")
        return _state_from_past(self.a, bt, yp, X - self._x0())

    # -- variants
    def perturbed(self, gain_factor: float, extra_delay_steps: int) -> LinearModel:
        """The u-channel's gain times `gain_factor`, its dead time plus `extra_delay_steps`
        periods (may be negative down to nk = 1): a plant that differs from the model."""
        nk0 = self.nk[0] + int(extra_delay_steps)
        if nk0 < 1:
            raise ValueError(
                f"dead time would go below one period (nk {self.nk[0]} {extra_delay_steps:+d})"
            )
        b = self.b.copy()
        b[0] *= gain_factor
        info = dict(self.info)
        info["perturbed"] = {
            "gain_factor": gain_factor,
            "extra_delay_steps": int(extra_delay_steps),
        }
        lg = tuple((op, g * gain_factor) for op, g in self.local_gains)
        return replace(self, b=b, nk=(nk0, *self.nk[1:]), local_gains=lg, info=info)

    # -- card
    def to_card(self) -> dict[str, Any]:
        """JSON-safe description (NaN/inf become null); `from_card` restores the model."""
        return json_safe(
            {
                "format": CARD_FORMAT,
                "version": CARD_VERSION,
                "kind": self.kind,
                "dt_s": self.dt_s,
                "na": self.na,
                "nb": self.nb,
                "nk": list(self.nk),
                "a": self.a.tolist(),
                "b": self.b.tolist(),
                "u0": self.u0,
                "d0": self.d0.tolist(),
                "y0": self.y0,
                "disturbances": list(self.d_names),
                "gain": self.gain(),
                "disturbance_gains": dict(
                    zip(self.d_names, self.input_gains()[1:].tolist(), strict=True)
                ),
                "settling_time_s": self.settling_time_s(),
                "local_gains": [{"u": op, "gain": g} for op, g in self.local_gains],
                "info": self.info,
            }
        )

    @classmethod
    def from_card(cls, d: dict[str, Any]) -> LinearModel:
        if d.get("format") != CARD_FORMAT:
            raise ValueError(f"not a linear model card (format {d.get('format')!r})")
        if int(d.get("version", 0)) > CARD_VERSION:
            raise ValueError(f"model card version {d.get('version')} is newer than {CARD_VERSION}")
        return cls(
            dt_s=float(d["dt_s"]),
            na=int(d["na"]),
            nb=int(d["nb"]),
            nk=tuple(int(k) for k in d["nk"]),
            a=np.asarray(d["a"], dtype=float),
            b=np.asarray(d["b"], dtype=float),
            u0=float(d["u0"]),
            d0=np.asarray(d["d0"], dtype=float),
            y0=float(d["y0"]),
            d_names=tuple(d.get("disturbances") or ()),
            local_gains=tuple(
                (float(p["u"]), float(p["gain"])) for p in d.get("local_gains") or ()
            ),
            kind=str(d.get("kind", "arx")),
            info=dict(d.get("info") or {}),
        )


class Predictor:
    """Run-time model check: the model run free from the applied inputs, plus a bias that
    follows the measurement slowly (time constant `bias_tau_s`, default 3 settling times).

    Free-run, not one-step-ahead: a one-step ARX predictor leans on the last measurement
    and follows almost any plant; a free-run prediction drifts from a plant whose gain or
    dead time differ, which is what the mismatch check has to see. The bias absorbs slow
    unmeasured disturbances and the operating-point offset. `error` is the last
    (measured - predicted), `rms` its exponentially weighted RMS over `window_s`.
    """

    def __init__(
        self, model: LinearModel, *, bias_tau_s: float | None = None, window_s: float | None = None
    ) -> None:
        self.model = model
        ss = model.to_state_space()
        self._A, self._B, self._Bd, self._c = ss.A, ss.B[:, 0], ss.Bd, ss.C[0]
        settle = model.settling_time_s()
        if not math.isfinite(settle) or settle <= 0:
            settle = 100.0 * model.dt_s
        self.bias_tau_s = float(bias_tau_s if bias_tau_s is not None else 3.0 * settle)
        self.window_s = float(window_s if window_s is not None else settle)
        self._ab = 1.0 - math.exp(-model.dt_s / max(self.bias_tau_s, 1e-9))
        self._aw = 1.0 - math.exp(-model.dt_s / max(self.window_s, 1e-9))
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._u = self.model.u0
        self._d = self.model.d0.copy()
        self.bias = 0.0
        self.error = math.nan
        self.rms = math.nan
        self.steps = 0

    def step(self, u: float, d: Sequence[float] | np.ndarray, y_meas: float) -> float:
        """Predicted y for this period (made before looking at `y_meas`); then learn from
        `y_meas` and advance with the output `u` written this period and disturbances `d`."""
        m = self.model
        if math.isfinite(u):
            self._u = float(u)
        dv = np.asarray(d, dtype=float).reshape(-1)[: len(m.d0)]
        if dv.size == len(m.d0):
            ok = np.isfinite(dv)
            self._d[ok] = dv[ok]
        du = self._u - m.u0
        dd = self._d - m.d0
        if self._x is None:
            if not math.isfinite(y_meas):
                return math.nan
            # at rest with the first output (a loop starts from the PLC's present output,
            # which the plant has been holding); any offset goes into the bias
            n = len(self._c)
            rhs = self._B * du + self._Bd @ dd
            self._x = np.linalg.lstsq(np.eye(n) - self._A, rhs, rcond=None)[0]
            self.bias = y_meas - (m.y0 + float(self._c @ self._x))
        y_model = m.y0 + float(self._c @ self._x)
        pred = y_model + self.bias
        if math.isfinite(y_meas):
            self.error = y_meas - pred
            e2 = self.error * self.error
            self.rms = math.sqrt(
                e2 if math.isnan(self.rms) else (self.rms**2 + self._aw * (e2 - self.rms**2))
            )
            self.bias += self._ab * (y_meas - y_model - self.bias)
        self._x = self._A @ self._x + self._B * du + self._Bd @ dd
        self.steps += 1
        return pred


@dataclass
class IdentResult:
    """What `identify` found. `ok=False`: the model must not be used; `why` says why."""

    fopdt: Fopdt
    sopdt: Sopdt | None
    model: LinearModel
    fit_pct: float
    whiteness_p: float
    local_gains: list[tuple[float, float]]
    ok: bool
    why: str
    excitation: str = ""
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> list[str]:
        """Human-readable lines (CLI, commission report)."""
        f = self.fopdt
        m = self.model
        out = [f"FOPDT: K {f.K:.4g}, tau {f.tau_s:.4g} s, dead time {f.theta_s:.4g} s"]
        if self.sopdt is not None:
            s = self.sopdt
            out.append(
                f"SOPDT: K {s.K:.4g}, tau1 {s.tau1_s:.4g} s, tau2 {s.tau2_s:.4g} s, "
                f"dead time {s.theta_s:.4g} s"
            )
        for name, p in (m.info.get("disturbance_fopdt") or {}).items():
            out.append(
                f"  disturbance {name}: K {p['K']:.4g}, tau {p['tau_s']:.4g} s, "
                f"dead time {p['theta_s']:.4g} s"
            )
        if m.kind != "none":
            ops = "".join(f", {n} {v:.4g}" for n, v in zip(m.d_names, m.d0, strict=True))
            out.append(
                f"model: {m.kind} na={m.na} nb={m.nb} nk={list(m.nk)} at {m.dt_s:g} s, gain "
                f"{m.gain():.4g}; operating point u {m.u0:.4g}, y {m.y0:.4g}{ops}"
            )
            out.append(
                f"fit on held-out data {self.fit_pct:.1f} %, residual whiteness p "
                f"{self.whiteness_p:.3g}"
            )
        if self.local_gains:
            out.append(
                "local gains: " + ", ".join(f"u {op:.4g}: {g:.4g}" for op, g in self.local_gains)
            )
        out.append(("accepted: " if self.ok else "REFUSED: ") + self.why)
        return out


# --- excitation ------------------------------------------------------------------------------


def excitation(
    u: np.ndarray,
    y: np.ndarray,
    d: np.ndarray | None,
    dt_s: float,
    *,
    d_names: Sequence[str] | None = None,
) -> tuple[bool, str]:
    """Is there enough in the data to identify anything? (ok, reason) - the reason says what
    is missing when not: too few samples, too many missing, a flat output, a pv that shows
    only noise, or a disturbance that moved with the output (effects not separable)."""
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    n = len(u)
    D = _as_2d(d, n)
    names = _names(d_names, D.shape[1])
    if len(y) != n:
        return False, f"u has {n} samples, y {len(y)}"
    dur = n * dt_s
    if n < MIN_SAMPLES:
        return False, f"only {n} samples ({dur:.0f} s): at least {MIN_SAMPLES} are needed"
    good = np.isfinite(u) & np.isfinite(y) & np.all(np.isfinite(D), axis=1)
    miss = 1.0 - float(good.mean())
    if miss > MAX_MISSING:
        return False, (
            f"{100 * miss:.0f} % of the samples are missing or bad (at most "
            f"{100 * MAX_MISSING:.0f} %): choose a window where the pv, the output and the "
            "disturbances were all recorded"
        )
    uf, yf = u[good], y[good]
    lo, hi = np.percentile(uf, [2, 98])
    span = float(hi - lo)
    med = float(np.median(uf))
    if span <= 1e-9 * max(1.0, abs(med)):
        return False, (
            f"the output did not move: it stayed at {med:.6g} for the {dur:.0f} s of data, so "
            "the data says nothing about how the pv responds to it; run a plant test "
            "(`edgeloop commission`) or choose a window where the output moved"
        )
    moves = int(np.count_nonzero(np.abs(np.diff(uf)) > 0.05 * span))
    noise = _noise_std(yf)
    ystd = float(np.std(yf))
    if ystd < 2.0 * noise or ystd == 0.0:
        return False, (
            f"the pv shows no response above its noise (std {ystd:.3g}, noise {noise:.3g}) "
            f"although the output moved over {span:.3g}: the moves were too small or too short "
            "for this pv, or the pv does not depend on this output"
        )
    notes = []
    for j, name in enumerate(names):
        dj = D[good, j]
        if np.ptp(dj) <= 1e-9 * max(1.0, abs(float(np.median(dj)))):
            notes.append(f"disturbance {name} did not move (its effect cannot be identified)")
            continue
        r = _corr(uf, dj)
        if abs(r) > 0.98:
            return False, (
                f"the output and disturbance {name} moved together (correlation {r:.3f}): their "
                "effects on the pv cannot be told apart; data with independent moves is needed"
            )
    text = (
        f"output moved {moves} times over {span:.3g} ({lo:.4g} .. {hi:.4g}); pv std {ystd:.3g}, "
        f"noise {noise:.3g}; {n} samples ({dur:.0f} s)"
    )
    if miss > 0:
        text += f"; {100 * miss:.1f} % missing samples interpolated"
    return True, "; ".join([text, *notes])


# --- FOPDT / SOPDT -----------------------------------------------------------------------------


def fit_fopdt(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    *,
    d: np.ndarray | None = None,
    dt_s: float | None = None,
) -> Fopdt:
    """FOPDT from step(s) or any informative data (output-error fit, dead time by grid
    search + least squares, then refined); measured disturbances `d` as extra channels."""
    dt = _dt(t_s, dt_s)
    uu, yy, D = _prepare(t_s, u, y, d, dt)
    chans, _c = _fit_oe(yy - yy.mean(), _devs(uu, D), dt, 1)
    return chans[0].fopdt()


def fit_sopdt(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    *,
    d: np.ndarray | None = None,
    dt_s: float | None = None,
) -> Sopdt:
    """SOPDT by the same output-error search as `fit_fopdt`, over two time constants."""
    dt = _dt(t_s, dt_s)
    uu, yy, D = _prepare(t_s, u, y, d, dt)
    chans, _c = _fit_oe(yy - yy.mean(), _devs(uu, D), dt, 2)
    return chans[0].sopdt()


def simc_pid(m: Fopdt | Sopdt, tau_c_s: float | None = None) -> dict[str, Any]:
    """SIMC tuning (Skogestad 2003) in the ISA/ideal form of `agent.control.pid`.

    FOPDT -> PI: Kc = tau / (|K| (tau_c + theta)), Ti = min(tau, 4 (tau_c + theta)), Td = 0.
    SOPDT -> PID in series form with Td = tau2, converted to the ideal form:
    kp = Kc (1 + Td/Ti), ti = Ti + Td, td = Ti Td / (Ti + Td); `series` keeps the rule's own
    numbers. tau_c defaults to theta ("tight but robust"); with no dead time, tau / 10.
    A negative gain gives `direct_acting: True` with a positive kp.
    """
    tau1 = m.tau_s if isinstance(m, Fopdt) else m.tau1_s
    tau2 = m.tau2_s if isinstance(m, Sopdt) else 0.0
    theta = max(m.theta_s, 0.0)
    if not (math.isfinite(m.K) and m.K != 0 and math.isfinite(tau1) and tau1 > 0):
        raise ValueError(f"SIMC needs a finite non-zero gain and a positive time constant: {m}")
    tc = tau_c_s if tau_c_s is not None else (theta if theta > 0 else 0.1 * tau1)
    if tc + theta <= 0:
        raise ValueError("tau_c + theta must be positive")
    kc = tau1 / (abs(m.K) * (tc + theta))
    ti = min(tau1, 4.0 * (tc + theta))
    td = tau2
    kp, ti_i, td_i = kc, ti, 0.0
    if td > 0:
        kp, ti_i, td_i = kc * (1.0 + td / ti), ti + td, ti * td / (ti + td)
    return {
        "kp": kp,
        "ti_s": ti_i,
        "td_s": td_i,
        "direct_acting": bool(m.K < 0),
        "tau_c_s": tc,
        "series": {"kc": kc, "ti_s": ti, "td_s": td},
    }


# --- identification ------------------------------------------------------------------------------


def identify(
    t_s: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    d: np.ndarray | None,
    dt_s: float,
    *,
    holdout: float = 0.3,
    min_fit_pct: float = 60.0,
    d_names: Sequence[str] | None = None,
) -> IdentResult:
    """Identify the plant from recorded (t, u, y, d): the samples are put on a uniform grid
    of `dt_s` (output held, measurements interpolated, short gaps filled), models are fitted
    on the first `1 - holdout` of the data and judged on the rest (see the module doc)."""
    if not 0.05 <= holdout <= 0.8:
        raise ValueError(f"holdout must be within 0.05 .. 0.8, got {holdout}")
    t_s = np.asarray(t_s, dtype=float).reshape(-1)
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    D0 = _as_2d(d, len(u))
    names = _names(d_names, D0.shape[1])
    uu, yy, D = _prepare(t_s, u, y, D0, dt_s)
    ok, exc = excitation(uu, yy, D, dt_s, d_names=names)
    if not ok:
        return _refused(dt_s, uu, yy, D, names, f"data not informative: {exc}", exc)
    uu, yy = _fill(uu), _fill(yy)
    D = np.column_stack([_fill(c) for c in D.T]) if D.shape[1] else D
    n = len(uu)
    s_val = round(n * (1.0 - holdout))
    val_u = uu[s_val:]
    if n - s_val < 20 or np.ptp(val_u) <= 1e-9 * max(1.0, abs(float(np.median(uu)))):
        return _refused(
            dt_s,
            uu,
            yy,
            D,
            names,
            f"the held-out part (last {100 * holdout:.0f} %) has no output moves, so no model "
            "can be checked on it: choose a window where the output moves throughout",
            exc,
        )
    X = np.column_stack([uu, D])
    xbar = X[:s_val].mean(axis=0)
    ybar = float(yy[:s_val].mean())
    Xd, yd = X - xbar, yy - ybar
    active = [bool(np.ptp(X[:s_val, i]) > 1e-9 * max(1.0, abs(xbar[i]))) for i in range(X.shape[1])]
    est = slice(0, s_val)

    def scored(model: LinearModel, label: str, npar: int) -> dict[str, Any]:
        with np.errstate(all="ignore"):
            ysim = model.simulate(X[:, 0], X[:, 1:])[s_val:]
        fit = _fit_pct(yy[s_val:], ysim)
        return {"model": model, "label": label, "fit": fit, "npar": npar}

    cands: list[dict[str, Any]] = []
    # output-error FOPDT / SOPDT (also the source of the reported K, tau, theta), their lags
    # and dead times searched on the data as recorded and on high-passed data
    Xm = _mask(Xd[est], active)
    hp = max(20, s_val // 8)
    best_oe: dict[int, tuple[list[_Chan], dict[str, Any]]] = {}
    for order, kind in ((1, "fopdt"), (2, "sopdt")):
        for w in (None, hp):
            ch, c0 = _fit_oe(yd[est], Xm, dt_s, order, w)
            if order == 2:
                so = ch[0].sopdt()
                if not (so.tau2_s >= 0.5 * dt_s and so.tau2_s >= 0.05 * so.tau1_s):
                    continue  # no second lag: the FOPDT says it all
            label = f"{kind} (output error{', high-passed' if w else ''})"
            mo = _oe_to_model(ch, c0 + ybar, xbar, dt_s, names, kind)
            cand = scored(mo, label, (order + 2) * sum(active) + 1)
            cands.append(cand)
            if order not in best_oe or cand["fit"] > best_oe[order][1]["fit"]:
                best_oe[order] = (ch, cand)
    f1 = best_oe[1][0]
    fo = f1[0].fopdt()
    # a SOPDT is reported where its second lag shows on the held-out data
    sopdt = None
    if 2 in best_oe and best_oe[2][1]["fit"] > best_oe[1][1]["fit"] + 0.2:
        sopdt = best_oe[2][0][0].sopdt()
    # ARX (least squares, then one instrumental-variable step) around the found dead times
    nk_d = [max(1, math.floor(ch.theta / dt_s) + 1) for ch in f1]
    nk_u = sorted({max(1, nk_d[0] + o) for o in (-1, 0, 1)})
    for na in (1, 2, 3):
        for nb in (1, 2, 3):
            for k0 in nk_u:
                nk = (k0, *nk_d[1:])
                m = _arx_ls(yd[est], Xd[est], na, nb, nk, active, ybar, xbar, dt_s, names)
                if m is None:
                    continue
                npar = na + nb * sum(active) + 1
                cands.append(scored(m, f"arx na={na} nb={nb} nk={list(nk)}", npar))
                with np.errstate(all="ignore"):
                    xs = m.simulate(X[est, 0], X[est, 1:]) - ybar
                miv = _arx_iv(yd[est], Xd[est], xs, na, nb, nk, active, ybar, xbar, dt_s, names)
                if miv is not None:
                    cands.append(scored(miv, f"arx-iv na={na} nb={nb} nk={list(nk)}", npar))
    cands = [c for c in cands if math.isfinite(c["fit"])]
    if not cands:
        return _refused(dt_s, uu, yy, D, names, "no stable model could be fitted", exc)
    best_fit = max(c["fit"] for c in cands)
    best = min(
        (c for c in cands if c["fit"] >= best_fit - 0.5), key=lambda c: (c["npar"], -c["fit"])
    )
    model: LinearModel = best["model"]
    fit = float(best["fit"])
    # whiteness of the residuals that model structure calls its innovations
    if model.kind == "arx":
        e = _one_step_residuals(model, yy, X, s_val)
    else:
        e = yy[s_val:] - model.simulate(X[:, 0], X[:, 1:])[s_val:]
    wp = _ljung_box_p(e, min(20, max(1, len(e) // 5)))
    ok = fit >= min_fit_pct
    lg, lg_detail, lg_note = _local_gains(model, yy, X)
    summary_c = sorted(cands, key=lambda c: -c["fit"])
    info = {
        "fit_pct": fit,
        "whiteness_p": wp,
        "min_fit_pct": min_fit_pct,
        "holdout": holdout,
        "samples": n,
        "estimation_samples": s_val,
        "selected": best["label"],
        "fopdt": {"K": fo.K, "tau_s": fo.tau_s, "theta_s": fo.theta_s},
        "sopdt": None
        if sopdt is None
        else {
            "K": sopdt.K,
            "tau1_s": sopdt.tau1_s,
            "tau2_s": sopdt.tau2_s,
            "theta_s": sopdt.theta_s,
        },
        "candidates": [{"model": c["label"], "fit_pct": c["fit"]} for c in summary_c[:8]],
        "disturbance_fopdt": {
            names[i - 1]: {"K": ch.K, "tau_s": ch.taus[0], "theta_s": ch.theta}
            for i, ch in enumerate(f1)
            if i > 0 and ch.active
        },
        "excitation": exc,
        "local_gains": lg_detail,
    }
    model = replace(model, local_gains=tuple(lg), info=info)
    sel = f"{best['label']}, {n} samples, last {100 * holdout:.0f} % held out"
    if ok:
        why = f"fit {fit:.1f} % on held-out data >= {min_fit_pct:g} % ({sel})"
        if wp < 0.01:
            why += (
                f"; residuals not white (p {wp:.2g}): unmeasured disturbances or unmodelled "
                "dynamics remain, the fit is what counts"
            )
        if lg_note:
            why += f"; {lg_note}"
    else:
        why = (
            f"model refused: fit {fit:.1f} % on the held-out data is below {min_fit_pct:g} % "
            f"({sel}); the pv is not explained well enough by the output and the measured "
            "disturbances (noise, unmeasured disturbances, nonlinearity or too little excitation)"
        )
        if lg:
            why += (
                f"; {lg_note}: one linear model does not cover this range, identify a narrower "
                "window around the operating point"
            )
    return IdentResult(
        fopdt=fo,
        sopdt=sopdt,
        model=model,
        fit_pct=fit,
        whiteness_p=wp,
        local_gains=lg,
        ok=ok,
        why=why,
        excitation=exc,
        candidates=[{"model": c["label"], "fit_pct": c["fit"]} for c in summary_c],
    )


# --- internals: data preparation -------------------------------------------------------------


def _as_2d(d: np.ndarray | None, n: int) -> np.ndarray:
    if d is None:
        return np.zeros((n, 0))
    D = np.asarray(d, dtype=float)
    if D.size == 0:
        return np.zeros((n, 0))
    if D.ndim == 1:
        D = D.reshape(-1, 1)
    if D.shape[0] != n:
        raise ValueError(f"d has {D.shape[0]} rows, u {n}")
    return D


def _names(d_names: Sequence[str] | None, m: int) -> tuple[str, ...]:
    if d_names is None:
        return tuple(f"d{i + 1}" for i in range(m))
    if len(d_names) != m:
        raise ValueError(f"{m} disturbance columns but {len(d_names)} names")
    return tuple(d_names)


def _dt(t_s: np.ndarray, dt_s: float | None) -> float:
    if dt_s is not None:
        return float(dt_s)
    t = np.asarray(t_s, dtype=float)
    return float(np.median(np.diff(t)))


def _prepare(
    t_s: np.ndarray, u: np.ndarray, y: np.ndarray, d: np.ndarray | None, dt: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On a uniform grid of dt: the output held (it is piecewise constant), measurements
    interpolated. Non-finite samples stay NaN here (excitation counts them)."""
    t = np.asarray(t_s, dtype=float).reshape(-1)
    u = np.asarray(u, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    D = _as_2d(d, len(u))
    if not (len(t) == len(u) == len(y)):
        raise ValueError(f"t_s, u, y differ in length: {len(t)}, {len(u)}, {len(y)}")
    if dt <= 0:
        raise ValueError(f"dt_s must be positive, got {dt}")
    if len(t) < 2:
        return u, y, D
    steps = np.diff(t)
    if np.any(steps <= 0):
        raise ValueError("t_s must be strictly increasing")
    if np.all(np.abs(steps - dt) <= 1e-3 * dt):
        return u, y, D
    grid = t[0] + dt * np.arange(math.floor((t[-1] - t[0]) / dt + 1e-9) + 1)
    idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
    ug = u[idx]

    def interp(v: np.ndarray) -> np.ndarray:
        ok = np.isfinite(v)
        if ok.sum() < 2:
            return np.full(len(grid), np.nan)
        out = np.interp(grid, t[ok], v[ok])
        # a grid point whose neighbours are both bad stays bad (so it is counted)
        near = idx
        out[~ok[near] & ~ok[np.clip(near + 1, 0, len(t) - 1)]] = np.nan
        return out

    Dg = np.column_stack([interp(c) for c in D.T]) if D.shape[1] else np.zeros((len(grid), 0))
    return ug, interp(y), Dg


def _fill(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    if ok.all() or not ok.any():
        return v
    k = np.arange(len(v))
    return np.interp(k, k[ok], v[ok])


def _devs(u: np.ndarray, D: np.ndarray) -> np.ndarray:
    X = np.column_stack([_fill(u), *[_fill(c) for c in D.T]])
    return X - X.mean(axis=0)


def _mask(X: np.ndarray, active: list[bool]) -> np.ndarray:
    out = X.copy()
    out[:, [not a for a in active]] = 0.0
    return out


def _ls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations on unit-norm columns: these problems are tall
    and thin (thousands of rows, < 15 columns), where LAPACK's SVD path costs 10-100x more
    on a loaded 2-core box; an ill-conditioned problem falls back to the SVD."""
    s = np.sqrt((A * A).sum(axis=0))
    s[s == 0.0] = 1.0
    As = A / s
    G = As.T @ As
    if np.linalg.cond(G) < 1e12:
        x = np.linalg.solve(G, As.T @ b)
    else:
        x = np.linalg.lstsq(As, b, rcond=None)[0]
    return x / s


def _noise_std(y: np.ndarray) -> float:
    """High-frequency noise of y: robust std of first differences / sqrt(2)."""
    dy = np.diff(y)
    if len(dy) == 0:
        return 0.0
    mad = float(np.median(np.abs(dy - np.median(dy))))
    return 1.4826 * mad / math.sqrt(2.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def json_safe(v: Any) -> Any:
    """Plain JSON types all the way down; NaN and infinities become None (strict JSON)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


# --- internals: linear simulation -----------------------------------------------------------


def _delay(x: np.ndarray, s: int) -> np.ndarray:
    """x delayed by s >= 0 samples, the first value held before the start."""
    if s <= 0:
        return x.copy()
    if s >= len(x):
        return np.full(len(x), x[0] if len(x) else 0.0)
    return np.concatenate((np.full(s, x[0]), x[:-s]))


def _stable(a: np.ndarray) -> bool:
    if len(a) == 0:
        return True
    r = np.roots(np.concatenate(([1.0], a)))
    return bool(np.all(np.abs(r) < 1.0 - 1e-9))


def _canon(a: np.ndarray, bt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observable canonical form of y[k] = -sum a_i y[k-i] + sum_i bt[i-1] . v[k-i]."""
    bt = np.atleast_2d(bt)
    na, (nb, m) = len(a), bt.shape
    n = max(na, nb, 1)
    A = np.zeros((n, n))
    A[:na, 0] = -np.asarray(a)
    A[:-1, 1:] += np.eye(n - 1)
    B = np.zeros((n, m))
    B[:nb] = bt
    c = np.zeros(n)
    c[0] = 1.0
    return A, B, c


def _state_from_past(
    a: np.ndarray, bt: np.ndarray, y_past: np.ndarray, v_past: np.ndarray
) -> np.ndarray:
    """State of `_canon(a, bt)` from the last n outputs and inputs (most recent last):
    x_m = sum_{i=m..n} (-a_i y[k+m-1-i] + bt_i . v[k+m-1-i])."""
    bt = np.atleast_2d(bt)
    na, (nb, m) = len(a), bt.shape
    n = max(na, nb, 1)
    aa = np.zeros(n)
    aa[:na] = a
    bb = np.zeros((n, m))
    bb[:nb] = bt
    yp = np.asarray(y_past, dtype=float)
    vp = np.asarray(v_past, dtype=float).reshape(len(yp), m) if m else np.zeros((len(yp), 0))
    x = np.zeros(n)
    for mi in range(1, n + 1):
        idx = np.arange(mi, n + 1)  # i
        pos = mi - 1 - idx  # negative positions into the past
        x[mi - 1] = float(-(aa[idx - 1] * yp[pos]).sum() + (bb[idx - 1] * vp[pos]).sum())
    return x


def _lsim(A: np.ndarray, B: np.ndarray, c: np.ndarray, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """y[k] = c x[k], x[k+1] = A x[k] + B U[k], exactly, without a Python step per sample:
    the inputs' effect inside every block of _BLOCK samples is one matrix product for all
    blocks, and the states at the block starts come from a doubling scan (log2(blocks)
    products), so the cost is a few dozen numpy calls whatever the length."""
    U = np.asarray(U, dtype=float).reshape(len(U), -1)
    N, m = U.shape
    n = A.shape[0]
    if N == 0:
        return np.zeros(0)
    L = min(_BLOCK, N)
    P = np.empty((L + 1, n, n))  # A^0 .. A^L, by doubling
    P[0] = np.eye(n)
    P[1] = A
    s = 1
    while s < L:
        k = min(s, L - s)
        P[s + 1 : s + 1 + k] = P[1 : 1 + k] @ P[s]
        s += k
    obs = np.einsum("i,jik->jk", c, P[:L])  # (L, n): c A^j
    h = obs @ B  # (L, m): c A^j B
    jj, ii = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    lag = jj - 1 - ii
    T = np.where((lag >= 0)[:, :, None], h[np.clip(lag, 0, None)], 0.0).reshape(L, L * m)
    ctrl = (P[L - 1 :: -1] @ B).transpose(1, 0, 2).reshape(n, L * m)  # A^(L-1-i) B
    nblk = -(-N // L)
    Ub = np.zeros((nblk * L, m))
    Ub[:N] = U
    Ub = Ub.reshape(nblk, L * m)
    # G[b] = state at the start of block b = sum_j AL^(b-j) G0[j], G0 = [x0, F_0, F_1, ...]
    G = np.vstack([np.asarray(x0, dtype=float).reshape(1, n), Ub[:-1] @ ctrl.T])
    Mp = P[L]
    step = 1
    while step < nblk:
        G[step:] = G[step:] + G[:-step] @ Mp.T
        Mp = Mp @ Mp
        step *= 2
    return (G @ obs.T + Ub @ T.T).reshape(-1)[:N]


def _filt(num: np.ndarray, den: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y = num(q)/den(q) q^-1 x, starting in steady state at x[0]."""
    a = np.asarray(den[1:], dtype=float)
    bt = np.asarray(num, dtype=float).reshape(-1, 1)
    A, B, c = _canon(a, bt)
    n = A.shape[0]
    g = float(np.sum(num) / np.sum(den))
    x0 = _state_from_past(a, bt, np.full(n, g * x[0]), np.full((n, 1), x[0]))
    y = _lsim(A, B, c, x0, x.reshape(-1, 1))
    return y


def _one_step_residuals(model: LinearModel, y: np.ndarray, X: np.ndarray, start: int) -> np.ndarray:
    V = model._shifted(X - model._x0())
    yd = y - model.y0
    k = np.arange(max(start, model.na, model.nb), len(y))
    pred = np.zeros(len(k))
    for i in range(1, model.na + 1):
        pred -= model.a[i - 1] * yd[k - i]
    for j in range(1, model.nb + 1):
        pred += V[k - j] @ model.b[:, j - 1]
    return yd[k] - pred


def _fit_pct(y: np.ndarray, yhat: np.ndarray) -> float:
    """NRMSE fit: 100 (1 - |y - yhat| / |y - mean y|); -inf for a blown-up simulation."""
    if not np.all(np.isfinite(yhat)):
        return -math.inf
    den = float(np.linalg.norm(y - y.mean()))
    if den == 0.0:
        return -math.inf
    return 100.0 * (1.0 - float(np.linalg.norm(y - yhat)) / den)


def _ljung_box_p(e: np.ndarray, lags: int) -> float:
    """Ljung-Box portmanteau p-value (chi-square survival by Wilson-Hilferty: no scipy)."""
    e = np.asarray(e, dtype=float)
    e = e - e.mean()
    n = len(e)
    den = float(e @ e)
    if n < 10 or den == 0.0:
        return math.nan
    q = 0.0
    for k in range(1, lags + 1):
        r = float(e[k:] @ e[:-k]) / den
        q += r * r / (n - k)
    q *= n * (n + 2)
    v = 2.0 / (9.0 * lags)
    z = ((q / lags) ** (1.0 / 3.0) - (1.0 - v)) / math.sqrt(v)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# --- internals: output-error FOPDT/SOPDT -------------------------------------------------------


def _unit_dyn(taus: tuple[float, ...], dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit-gain ZOH discretisation (num, den) of 1/(tau s + 1) or 1/((t1 s+1)(t2 s+1))."""
    if len(taus) == 1:
        a = math.exp(-dt / taus[0])
        return np.array([1.0 - a]), np.array([1.0, -a])
    t1, t2 = max(taus), min(taus)
    if t1 - t2 < 1e-3 * t1:
        t2 = t1 * (1.0 - 1e-3)
    p1, p2 = math.exp(-dt / t1), math.exp(-dt / t2)

    def s(t: float) -> float:  # unit step response
        return 1.0 - (t1 * math.exp(-t / t1) - t2 * math.exp(-t / t2)) / (t1 - t2)

    b1 = s(dt)
    b2 = s(2 * dt) - (p1 + p2) * b1 - b1
    return np.array([b1, b2]), np.array([1.0, -(p1 + p2), p1 * p2])


def _frac_weights(
    taus: tuple[float, ...], dt: float, frac: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the integer-delayed responses for a fractional dead time: exact for a
    first-order lag under ZOH, linear interpolation for the (smoother) second order."""
    frac = np.asarray(frac, dtype=float)
    if len(taus) == 1:
        a = math.exp(-dt / taus[0])
        exact = 1e-300 < a < 1.0 - 1e-15
        w1 = (1.0 - a ** (1.0 - frac)) / (1.0 - a) if exact else 1.0 - frac
        return w1, 1.0 - w1
    return 1.0 - frac, frac


@dataclass
class _Chan:
    """One input channel of an output-error fit."""

    taus: tuple[float, ...] = ()
    theta: float = 0.0
    K: float = 0.0
    active: bool = False
    g: np.ndarray | None = None  # unit-gain response on the fit data

    def fopdt(self) -> Fopdt:
        if not self.active:
            return Fopdt(0.0, math.nan, math.nan)
        return Fopdt(float(self.K), float(self.taus[0]), float(self.theta))

    def sopdt(self) -> Sopdt:
        if not self.active:
            return Sopdt(0.0, math.nan, math.nan, math.nan)
        t = self.taus if len(self.taus) == 2 else (self.taus[0], 0.0)
        return Sopdt(float(self.K), float(max(t)), float(min(t)), float(self.theta))


def _response(x: np.ndarray, taus: tuple[float, ...], theta: float, dt: float) -> np.ndarray:
    """Unit-gain response of x through the lag(s) and the (fractional) dead time."""
    num, den = _unit_dyn(taus, dt)
    f = _filt(num, den, x)
    s = math.floor(theta / dt + 1e-9)
    frac = theta / dt - s
    w1, w2 = _frac_weights(taus, dt, np.array([frac]))
    return float(w1[0]) * _delay(f, s) + float(w2[0]) * _delay(f, s + 1)


def _transient(taus: tuple[float, ...], dt: float, n: int) -> np.ndarray:
    """Columns a^k for the poles: the decay of a start away from steady state."""
    k = np.arange(n)
    return np.column_stack([np.exp(k * (-dt / t)) for t in taus])


def _lagged_dots(fp: np.ndarray, V: np.ndarray, nshift: int) -> np.ndarray:
    """sum_k fp[o + k] V[k, :] for o = 0 .. nshift-1 (FFT correlation, all lags at once)."""
    N = V.shape[0]
    size = 1 << math.ceil(math.log2(len(fp) + N))
    F = np.fft.rfft(fp, size)
    G = np.fft.rfft(V, size, axis=0)
    corr = np.fft.irfft(F[:, None] * np.conj(G), size, axis=0)
    return corr[:nshift]


def _grid_channel(
    y: np.ndarray, x: np.ndarray, Z: np.ndarray, dt: float, order: int, own_transient: bool
) -> tuple[tuple[float, ...], float, float]:
    """Coarse search of (taus, dead time) for one channel: for every candidate lag the best
    dead time over all shifts and fractions comes from correlations in closed form."""
    N = len(y)
    M = max(1, min(N // 3, 2000))
    T = N * dt
    grid: list[tuple[float, ...]]
    if order == 1:
        grid = [(t,) for t in np.geomspace(dt / 4, T / 2, 28)]
    else:
        grid = [
            (t, t * r) for t in np.geomspace(dt / 2, T / 2, 16) for r in (0.08, 0.2, 0.4, 0.7, 1.0)
        ]
    best = (math.inf, grid[0], 0.0)
    idx = np.arange(M + 1)
    for taus in grid:
        num, den = _unit_dyn(taus, dt)
        f = _filt(num, den, x)
        Zc = np.column_stack([Z, _transient(taus, dt, N)]) if own_transient else Z
        fp = np.concatenate((np.full(M + 1, f[0]), f))
        dots = _lagged_dots(fp, np.column_stack([y, Zc]), M + 2)[::-1]  # row s: shift s
        gy, gZ = dots[:, 0], dots[:, 1:]
        c2 = np.concatenate(([0.0], np.cumsum(fp * fp)))
        o = M + 1 - np.arange(M + 2)  # window start of shift s
        gg = c2[o + N] - c2[o]
        pr = np.concatenate(([0.0], fp[1:] * fp[:-1]))
        c1 = np.concatenate(([0.0], np.cumsum(pr)))
        # sum_k fp[o+k] fp[o+k-1] for shift s (pairs s, s+1): o = M+1-s >= 1
        gg1 = c1[o[:-1] + N] - c1[o[:-1]]
        ZZ = Zc.T @ Zc
        ZZi = np.linalg.pinv(ZZ)
        Zy = Zc.T @ y
        yPy = float(y @ y - Zy @ ZZi @ Zy)
        w1, w2 = _frac_weights(taus, dt, _FRACS)  # (F,)
        W1, W2 = w1[None, :], w2[None, :]
        gy_s = W1 * gy[idx, None] + W2 * gy[idx + 1, None]  # (M+1, F)
        q = W1[..., None] * gZ[idx, None, :] + W2[..., None] * gZ[idx + 1, None, :]  # (M+1,F,p)
        gg_s = W1**2 * gg[idx, None] + 2 * W1 * W2 * gg1[idx, None] + W2**2 * gg[idx + 1, None]
        proj = np.einsum("sfp,pq->sfq", q, ZZi)
        gPy = gy_s - proj @ Zy
        gPg = gg_s - np.einsum("sfq,sfq->sf", proj, q)
        with np.errstate(all="ignore"):
            sse = np.where(gPg > 1e-12 * max(gg.max(), 1e-300), yPy - gPy**2 / gPg, np.inf)
        k = int(np.argmin(sse))
        s, fi = divmod(k, len(_FRACS))
        if sse.flat[k] < best[0]:
            best = (float(sse.flat[k]), taus, (s + _FRACS[fi]) * dt)
    return best[1], best[2], best[0]


def _channel_sse(
    y: np.ndarray,
    x: np.ndarray,
    Z: np.ndarray,
    dt: float,
    taus: tuple[float, ...],
    theta: float,
    own_transient: bool,
) -> tuple[float, float, np.ndarray]:
    g = _response(x, taus, theta, dt)
    cols = [Z, g[:, None]]
    if own_transient:
        cols.append(_transient(taus, dt, len(y)))
    R = np.column_stack(cols)
    coef = _ls(R, y)
    r = y - R @ coef
    return float(r @ r), float(coef[Z.shape[1]]), g


def _compass(
    f: Callable[[np.ndarray], float],
    p0: np.ndarray,
    step: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tol: np.ndarray,
    max_eval: int = 120,
) -> np.ndarray:
    """Derivative-free local refinement: try +-step per coordinate, halve when stuck."""
    p = p0.astype(float).copy()
    best = f(p)
    st = step.astype(float).copy()
    evals = 1
    while np.any(st > tol) and evals < max_eval:
        moved = False
        for i in range(len(p)):
            if st[i] <= tol[i]:
                continue
            for sgn in (1.0, -1.0):
                q = p.copy()
                q[i] = min(max(p[i] + sgn * st[i], lo[i]), hi[i])
                if q[i] == p[i]:
                    continue
                v = f(q)
                evals += 1
                if v < best:
                    best, p, moved = v, q, True
                    break
        if not moved:
            st /= 2.0
    return p


def _fit_channel(
    y: np.ndarray, x: np.ndarray, Z: np.ndarray, dt: float, order: int, own_transient: bool
) -> _Chan:
    taus, theta, _ = _grid_channel(y, x, Z, dt, order, own_transient)
    N = len(y)
    T = N * dt
    theta_max = max(1, min(N // 3, 2000)) * dt
    # order 2 is searched as (log(tau1 + tau2), log(tau2 / tau1)): along the ridge where
    # the lags trade against each other the sum stays put, so coordinate steps can follow it
    if order == 1:
        p0 = np.array([math.log(taus[0]), theta])
        lo = np.array([math.log(dt / 20), 0.0])
        hi = np.array([math.log(10 * T), theta_max])
        step = np.array([0.15, 0.5 * dt])
        tol = np.array([0.008, 0.02 * dt])
    else:
        t1, t2 = max(taus), min(taus)
        p0 = np.array([math.log(t1 + t2), math.log(t2 / t1), theta])
        lo = np.array([math.log(dt / 10), math.log(0.01), 0.0])
        hi = np.array([math.log(20 * T), 0.0, theta_max])
        step = np.array([0.15, 0.4, 0.5 * dt])
        tol = np.array([0.008, 0.02, 0.02 * dt])

    def lags(p: np.ndarray) -> tuple[float, ...]:
        if order == 1:
            return (float(math.exp(p[0])),)
        total, ratio = math.exp(p[0]), math.exp(p[1])
        return (total / (1.0 + ratio), total * ratio / (1.0 + ratio))

    def cost(p: np.ndarray) -> float:
        return _channel_sse(y, x, Z, dt, lags(p), float(p[-1]), own_transient)[0]

    p = _compass(cost, p0, step, lo, hi, tol)
    taus, theta = lags(p), float(p[-1])
    _, K, g = _channel_sse(y, x, Z, dt, taus, theta, own_transient)
    return _Chan(taus=taus, theta=theta, K=K, active=True, g=g)


def _highpass(x: np.ndarray, w: int) -> np.ndarray:
    """x minus its causal moving average over w samples (first value held before the start):
    a linear filter, so applied to input and output alike it keeps a linear plant's gain,
    lags and dead time, while the slow level changes of a wide operating range (where a
    nonlinear gain shows as curvature) stop dominating the fit."""
    c = np.cumsum(np.concatenate((np.full(w, x[0]), x)))
    return x - (c[w:] - c[:-w]) / w


def _fit_oe(
    y: np.ndarray, X: np.ndarray, dt: float, order: int, hp_window: int | None = None
) -> tuple[list[_Chan], float]:
    """Output-error fit of every moving input channel (u first), coordinate-wise: u with the
    disturbances as plain regressors, then each disturbance with the others fixed, twice.
    With `hp_window` the lags and dead times are searched on high-passed data (`_highpass`),
    the gains always on the data as given. Returns the channels and the constant (y at the
    inputs' mean)."""
    N, m = X.shape
    chans = [_Chan() for _ in range(m)]
    moving = [bool(np.ptp(X[:, i]) > 0) for i in range(m)]
    ones = np.ones((N, 1))
    if hp_window:
        ys = _highpass(y, hp_window)
        Xs = np.column_stack([_highpass(X[:, i], hp_window) for i in range(m)])
    else:
        ys, Xs = y, X

    def fixed(i: int) -> np.ndarray:
        cols = [ones]
        for j in range(m):
            if j == i or not moving[j]:
                continue
            g = chans[j].g
            cols.append((g if g is not None else _delay(Xs[:, j], 1)).reshape(-1, 1))
        if i != 0 and chans[0].active:
            cols.append(_transient(chans[0].taus, dt, N))
        return np.column_stack(cols)

    order_of_fits = [0] + [j for j in range(1, m) if moving[j]]
    rounds = 2 if len(order_of_fits) > 1 else 1
    if not moving[0]:
        return chans, 0.0
    for _ in range(rounds):
        for i in order_of_fits:
            chans[i] = _fit_channel(ys, Xs[:, i], fixed(i), dt, order, own_transient=(i == 0))
    if hp_window:
        for i, c in enumerate(chans):
            if c.active:
                c.g = _response(X[:, i], c.taus, c.theta, dt)
    # joint gains and constant with every channel's response fixed
    cols = [ones] + [c.g.reshape(-1, 1) for c in chans if c.active and c.g is not None]
    cols.append(_transient(chans[0].taus, dt, N))
    R = np.column_stack(cols)
    coef = _ls(R, y)
    k = 1
    for c in chans:
        if c.active:
            c.K = float(coef[k])
            k += 1
    return chans, float(coef[0])


def _oe_to_model(
    chans: list[_Chan], y0: float, xbar: np.ndarray, dt: float, names: tuple[str, ...], kind: str
) -> LinearModel:
    """Write the channels as one ARX model with a common denominator."""
    m = len(chans)
    dens, nums, nks = [], [], []
    for c in chans:
        if not c.active or c.K == 0.0:
            dens.append(np.array([1.0]))
            nums.append(np.zeros(1))
            nks.append(1)
            continue
        num, den = _unit_dyn(c.taus, dt)
        s = math.floor(c.theta / dt + 1e-9)
        w1, w2 = _frac_weights(c.taus, dt, np.array([c.theta / dt - s]))
        nums.append(c.K * np.convolve(num, [float(w1[0]), float(w2[0])]))
        dens.append(den)
        nks.append(s + 1)
    A = np.array([1.0])
    for den in dens:
        A = np.convolve(A, den)
    bs = []
    for i in range(m):
        b = nums[i]
        for j in range(m):
            if j != i:
                b = np.convolve(b, dens[j])
        bs.append(b)
    nb = max(len(b) for b in bs)
    B = np.zeros((m, nb))
    for i, b in enumerate(bs):
        B[i, : len(b)] = b
    na = len(A) - 1
    return LinearModel(
        dt_s=dt,
        na=na,
        nb=nb,
        nk=tuple(nks),
        a=A[1:],
        b=B,
        u0=float(xbar[0]),
        d0=np.asarray(xbar[1:], dtype=float),
        y0=y0,
        d_names=names,
        kind=kind,
    )


# --- internals: ARX -----------------------------------------------------------------------------


def _arx_rows(
    yd: np.ndarray,
    Xd: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ylag: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Regressor matrix [-y lags, input lags of the active inputs, 1] and the targets."""
    N = len(yd)
    k0 = max(na, max(k + nb - 1 for k in nk))
    k = np.arange(k0, N)
    src = yd if ylag is None else ylag
    cols = [-src[k - i] for i in range(1, na + 1)]
    for inp, on in enumerate(active):
        if on:
            cols += [Xd[k - nk[inp] - j, inp] for j in range(nb)]
    cols.append(np.ones(len(k)))
    return np.column_stack(cols), yd[k]


def _arx_model(
    theta: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
    kind: str,
) -> LinearModel | None:
    a = theta[:na]
    if not _stable(a):
        return None
    B = np.zeros((len(active), nb))
    p = na
    for inp, on in enumerate(active):
        if on:
            B[inp] = theta[p : p + nb]
            p += nb
    c = float(theta[p])
    den = 1.0 + float(a.sum())
    return LinearModel(
        dt_s=dt,
        na=na,
        nb=nb,
        nk=nk,
        a=a,
        b=B,
        u0=float(xbar[0]),
        d0=np.asarray(xbar[1:], dtype=float),
        y0=ybar + c / den,
        d_names=names,
        kind=kind,
    )


def _arx_ls(
    yd: np.ndarray,
    Xd: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
) -> LinearModel | None:
    Phi, Y = _arx_rows(yd, Xd, na, nb, nk, active)
    if len(Y) <= Phi.shape[1] + 5:
        return None
    theta = _ls(Phi, Y)
    return _arx_model(theta, na, nb, nk, active, ybar, xbar, dt, names, "arx")


def _arx_iv(
    yd: np.ndarray,
    Xd: np.ndarray,
    xs: np.ndarray,
    na: int,
    nb: int,
    nk: tuple[int, ...],
    active: list[bool],
    ybar: float,
    xbar: np.ndarray,
    dt: float,
    names: tuple[str, ...],
) -> LinearModel | None:
    """One instrumental-variable step: the LS model's simulated (noise-free) output lags
    as instruments for the measured ones, so coloured noise no longer biases the fit."""
    if not np.all(np.isfinite(xs)):
        return None
    Phi, Y = _arx_rows(yd, Xd, na, nb, nk, active)
    Zi, _ = _arx_rows(yd, Xd, na, nb, nk, active, ylag=xs)
    try:
        theta = np.linalg.solve(Zi.T @ Phi, Zi.T @ Y)
    except np.linalg.LinAlgError:
        return None
    return _arx_model(theta, na, nb, nk, active, ybar, xbar, dt, names, "arx-iv")


# --- internals: local gains, refusal --------------------------------------------------------


def _local_gains(
    model: LinearModel, y: np.ndarray, X: np.ndarray
) -> tuple[list[tuple[float, float]], list[dict[str, float]], str]:
    """Gain of the u-channel per operating range: the model's dynamics held, the data cut
    into windows of ~2 settling times (each with its own offset, which absorbs slow
    unmeasured drift), windows grouped by their mean output (u) level into up to 4 bins,
    one gain per bin. Empty when the data covers a single operating point."""
    K = model.gain()
    n = len(y)
    settle = model.settling_time_s()
    if K == 0.0 or not math.isfinite(settle):
        return [], [], ""
    w = max(30, int(2.0 * settle / model.dt_s))
    nchunks = n // w
    if nchunks < 4:
        return [], [], ""
    Xu = X.copy()
    Xu[:, 1:] = model.d0
    g = (model.simulate(Xu[:, 0], Xu[:, 1:]) - model.y0) / K
    Xd = X.copy()
    Xd[:, 0] = model.u0
    r = y - model.simulate(Xd[:, 0], Xd[:, 1:])
    cut = nchunks * w
    G = g[:cut].reshape(nchunks, w)
    Rr = r[:cut].reshape(nchunks, w)
    Uc = X[:cut, 0].reshape(nchunks, w)
    Yc = y[:cut].reshape(nchunks, w)
    G = G - G.mean(axis=1, keepdims=True)
    Rr = Rr - Rr.mean(axis=1, keepdims=True)
    ops = Uc.mean(axis=1)
    spread = Uc.std(axis=1)
    inside = float(np.median(spread))
    if np.ptp(ops) <= 2.0 * inside:
        return [], [], "one operating point in the data (no local gains)"
    # a window that holds a move between operating points, or the tail of one, shows the
    # secant gain between them, not a local one: leave it out
    jump = np.abs(np.diff(ops, prepend=ops[0])) > 2.0 * max(inside, 1e-12)
    keep = (spread <= 2.0 * inside) & ~jump
    if keep.sum() < 4:
        return [], [], "the operating point never held still long enough for local gains"
    G, Rr, Uc, Yc, ops = G[keep], Rr[keep], Uc[keep], Yc[keep], ops[keep]
    nchunks = len(ops)
    nbins = min(4, nchunks // 2)
    edges = np.quantile(ops, np.linspace(0, 1, nbins + 1))
    which = np.clip(np.searchsorted(edges, ops, side="right") - 1, 0, nbins - 1)
    pairs: list[tuple[float, float]] = []
    detail: list[dict[str, float]] = []
    for bi in range(nbins):
        sel = which == bi
        gg = float((G[sel] ** 2).sum())
        if not sel.any() or gg <= 0:
            continue
        kb = float((G[sel] * Rr[sel]).sum()) / gg
        res = Rr[sel] - kb * G[sel]
        dof = max(1, res.size - int(sel.sum()) - 1)
        se = math.sqrt(float((res**2).sum()) / dof / gg)
        if not math.isfinite(kb) or se > 0.3 * abs(kb):
            continue
        op = float(ops[sel].mean())
        pairs.append((op, kb))
        detail.append(
            {
                "u": op,
                "y": float(Yc[sel].mean()),
                "gain": kb,
                "se": se,
                "samples": int(sel.sum()) * w,
            }
        )
    if len(pairs) < 2:
        return [], detail, "too little excitation per operating range for local gains"
    order = np.argsort([p[0] for p in pairs])
    pairs = [pairs[i] for i in order]
    detail = [detail[i] for i in order]
    gs = np.array([p[1] for p in pairs])
    ses = np.array([d["se"] for d in detail])
    lo, hi = int(np.argmin(np.abs(gs))), int(np.argmax(np.abs(gs)))
    varies = abs(gs[hi]) > 1.2 * abs(gs[lo]) and abs(gs[hi] - gs[lo]) > 3 * math.hypot(
        ses[hi], ses[lo]
    )
    if not varies:
        return (
            [],
            detail,
            f"gain about constant over u {pairs[0][0]:.4g} .. {pairs[-1][0]:.4g}",
        )
    return (
        pairs,
        detail,
        (
            f"gain varies {gs.min():.3g} .. {gs.max():.3g} over u {pairs[0][0]:.4g} .. "
            f"{pairs[-1][0]:.4g} (local gains in the card)"
        ),
    )


def _refused(
    dt: float,
    u: np.ndarray,
    y: np.ndarray,
    D: np.ndarray,
    names: tuple[str, ...],
    why: str,
    exc: str,
) -> IdentResult:
    """A result that says no: zero model at the data's mean, NaN parameters, ok=False."""
    with np.errstate(all="ignore"):
        u0 = float(np.nanmean(u)) if np.isfinite(u).any() else 0.0
        y0 = float(np.nanmean(y)) if np.isfinite(y).any() else 0.0
        d0 = np.nanmean(D, axis=0) if D.size else np.zeros(D.shape[1])
    m = D.shape[1]
    model = LinearModel(
        dt_s=dt,
        na=1,
        nb=1,
        nk=(1,) * (1 + m),
        a=np.zeros(1),
        b=np.zeros((1 + m, 1)),
        u0=u0,
        d0=np.nan_to_num(np.asarray(d0, dtype=float)),
        y0=y0,
        d_names=names,
        kind="none",
        info={"refused": why},
    )
    return IdentResult(
        fopdt=Fopdt(math.nan, math.nan, math.nan),
        sopdt=None,
        model=model,
        fit_pct=math.nan,
        whiteness_p=math.nan,
        local_gains=[],
        ok=False,
        why=why,
        excitation=exc,
    )
