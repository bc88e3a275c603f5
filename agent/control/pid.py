"""Fallback PID: ISA form, derivative on measurement (filtered), back-calculation anti-windup.

    u = Kp * (e + I + D),   e = sp - pv (reverse acting; negated for direct acting)
    I' = e / Ti + (u_applied - u_computed) / (Kp * Tt)      back-calculation
    D = -Td * d(pv)/dt through a first-order filter Tf = alpha * Td

Anti-windup uses the output *actually applied* last period (after the safety envelope's
clamp and rate limit), so the integral never runs away while the output is limited, and the
same term makes transfers bumpless: while another controller drives the plant, `track()`
sets the integral so the PID would have produced exactly the applied output.

Pure: `step` reads and updates a small `PidState` owned by the caller (no allocation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PidState:
    """Integral (output units), filtered derivative term, last pv, last unlimited output."""

    i_term: float = 0.0
    d_term: float = 0.0
    last_pv: float = math.nan
    last_u: float = math.nan


@dataclass(frozen=True)
class Pid:
    """Tuning and limits; `step` is the control law."""

    kp: float
    ti_s: float
    td_s: float = 0.0
    derivative_filter: float = 0.1
    tt_s: float | None = None
    out_min: float = 0.0
    out_max: float = 100.0
    direct_acting: bool = False

    def _e(self, sp: float, pv: float) -> float:
        return (pv - sp) if self.direct_acting else (sp - pv)

    def step(self, st: PidState, sp: float, pv: float, dt_s: float, u_applied: float) -> float:
        """Advance by `dt_s`; `u_applied` is what actually went out last period."""
        e = self._e(sp, pv)
        kp = self.kp
        # back-calculation: pull the integral toward what was really applied
        if math.isfinite(st.last_u) and math.isfinite(u_applied) and kp != 0.0:
            tt = self.tt_s if self.tt_s is not None else self.ti_s
            st.i_term += (u_applied - st.last_u) * min(dt_s / tt, 1.0)
        st.i_term += kp * e * dt_s / self.ti_s
        if self.td_s > 0.0 and math.isfinite(st.last_pv):
            tf = self.derivative_filter * self.td_s
            sign = 1.0 if self.direct_acting else -1.0
            raw = sign * kp * self.td_s * (pv - st.last_pv) / dt_s
            st.d_term += (raw - st.d_term) * (dt_s / (tf + dt_s))
        st.last_pv = pv
        u = kp * e + st.i_term + st.d_term
        # bound the stored integral too, so a long saturation cannot leave a huge debt
        span = self.out_max - self.out_min
        st.i_term = min(max(st.i_term, self.out_min - span), self.out_max + span)
        st.last_u = u  # unlimited: next period's back-calculation sees what got cut off
        return min(max(u, self.out_min), self.out_max)

    def track(self, st: PidState, u_applied: float, sp: float, pv: float) -> None:
        """Follow another controller: next `step` starts from `u_applied` (bumpless)."""
        if not math.isfinite(u_applied):
            return
        e = self._e(sp, pv) if math.isfinite(pv) and math.isfinite(sp) else 0.0
        st.d_term = 0.0
        st.i_term = u_applied - self.kp * e
        st.last_pv = pv if math.isfinite(pv) else st.last_pv
        st.last_u = u_applied
