"""Tuning rules from an identified model: SIMC (Skogestad 2003) PI/PID on the FOPDT or SOPDT."""

from __future__ import annotations

import math
from typing import Any

from agent.control.ident_model import (
    Fopdt,
    Sopdt,
)


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
