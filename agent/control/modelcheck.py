"""The run-time model check of a loop in shadow or auto: is the plant still the one the
model was commissioned on."""

from __future__ import annotations

import math
from typing import Any


def st_mode_checks(mode: str) -> bool:
    """The model check runs where the model matters: shadow (before auto) and auto."""
    return mode in ("shadow", "auto")


class ModelCheck:
    """Run-time honesty: the identified plant model (in the card) predicts pv from the
    applied output and the measured disturbances (`ident.Predictor`, free-run with a slow
    bias); its error RMS over about a settling time, divided by what it was on the
    commissioning data, is `edgeloop_control_model_mismatch`. Above `threshold` for `hold_s`
    the loop falls back with reason `model_mismatch` and says to re-commission; it clears
    once the ratio is back under the threshold."""

    def __init__(self, predictor: Any, reference: float, threshold: float, hold_s: float):
        self.predictor, self.reference = predictor, reference
        self.threshold, self.hold_s = threshold, hold_s
        self.dt = float(predictor.model.dt_s)
        self.over_s = 0.0
        self.mismatched = False
        self.told = False

    @classmethod
    def from_card(cls, card: dict[str, Any], roles: list[str]) -> ModelCheck | None:
        check = card.get("model_check")
        pm = card.get("plant_model")
        if not check or not pm:
            return None  # a model without its plant model (e.g. the shipped heater's)
        from agent.control.ident import LinearModel, Predictor

        model = LinearModel.from_card(pm)
        if list(model.d_names) != list(roles[1 : 1 + len(model.d_names)]):
            return None
        return cls(
            Predictor(model),
            float(check["reference_rms"]),
            float(check.get("threshold", 3.0)),
            float(check.get("hold_s", 3.0 * model.settling_time_s())),
        )

    def update(self, u: float, d: list[float], y: float, pv_ok: bool) -> float:
        if not pv_ok or not math.isfinite(u):
            return math.nan
        self.predictor.step(u, d, y)
        rms = self.predictor.rms
        ratio = rms / self.reference if self.reference > 0 and math.isfinite(rms) else math.nan
        p = self.predictor  # after its first window: the bias has caught up with the start
        warm = p.steps * self.dt >= 2.0 * p.window_s
        if warm and math.isfinite(ratio) and ratio > self.threshold:
            self.over_s += self.dt
        else:
            self.over_s = 0.0
        was = self.mismatched
        self.mismatched = self.over_s >= self.hold_s
        if was and not self.mismatched:
            self.told = False
        return ratio
