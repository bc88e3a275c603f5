"""The models identification produces (agent/control/ident.py) and their JSON card:
`Fopdt`, `Sopdt`, `LinearModel` (ARX with per-input dead time, in deviation variables;
simulate, state space, card, a perturbed copy), `Predictor` (the run-time model check) and
`IdentResult`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from agent.control.ident_sim import (
    canonical_ss,
    lsim,
    schur_stable,
    shift_delay,
    state_from_past,
)

CARD_FORMAT = "edgeloop.linear_model"


CARD_VERSION = 1


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
        return cast(np.ndarray, self.b.sum(axis=1) / den)

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
        return schur_stable(self.a)

    # -- simulation
    def _shifted(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([shift_delay(X[:, i], self.nk[i] - 1) for i in range(self.n_inputs)])

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
        A, B, c = canonical_ss(self.a, self.b.T)
        n = A.shape[0]
        y_ss = float(self.input_gains() @ Xd[0])
        yp = np.full(n, y_ss if y_init is None else y_init - self.y0)
        x0 = state_from_past(self.a, self.b.T, yp, np.tile(V[0], (n, 1)))
        with np.errstate(all="ignore"):
            y = lsim(A, B, c, x0, V)
        return y + self.y0

    def to_state_space(self) -> StateSpace:
        """Observable canonical form with the dead time as delay states (n = max lag)."""
        bt = self._bt_full()
        A, B, c = canonical_ss(self.a, bt)
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
        return state_from_past(self.a, bt, yp, X - self._x0())

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
        card: dict[str, Any] = json_safe(
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
        return card

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
