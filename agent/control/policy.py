"""TFLite policy: input assembly and scaling from the model card, one interpreter, no per-step
allocation beyond the interpreter's own output copy.

A model `x.tflite` ships with its card `x.json` beside it.  The card says which signal roles
the model reads (`signals`), how to build the input vector from them (`features`: the
setpoint, the error, a signal, or the output applied earlier, each at a lag in control
periods), the normalisation (`input.mean`/`input.std`), the output scaling and range, the
control period the model was trained at, how it was trained and how it validated.  Anything
that does not match - shapes, dtypes, roles the loop does not provide, a different period -
is refused at start-up with a `ModelError` naming the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CARD_FORMAT = "edgeloop-policy/1"
SOURCES = ("setpoint", "error", "signal", "output", "error_integral")


class ModelError(Exception):
    """A model or its card cannot be used for this loop (raised at start-up), or invoke failed."""


def resolve_model_path(model: str, config_dir: str | Path | None = None) -> Path:
    """A path relative to the config file, an absolute path, or a shipped model name."""
    p = Path(model)
    candidates = [p] if p.is_absolute() else []
    if not p.is_absolute():
        if config_dir is not None:
            candidates.append(Path(config_dir) / p)
        else:
            candidates.append(p)  # relative to the working directory
        candidates.append(MODELS_DIR / p)
    for c in candidates:
        if c.is_file():
            if not c.with_suffix(".json").is_file():
                raise ModelError(f"model {c} has no model card {c.with_suffix('.json').name}")
            return c
    shipped = sorted(m.name for m in MODELS_DIR.glob("*.tflite"))
    raise ModelError(
        f"model {model!r} not found (looked in {[str(c) for c in candidates]}; "
        f"shipped models: {shipped})"
    )


def load_interpreter(path: Path) -> Any:
    """`ai_edge_litert` first, `tflite_runtime` when only that is installed; one thread."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on what is installed
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise ModelError("neither ai_edge_litert nor tflite_runtime is installed") from e
    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
    except (ValueError, RuntimeError, SystemError) as e:
        raise ModelError(f"cannot load {path}: {e}") from e
    return interp


@dataclass(frozen=True)
class Feature:
    name: str
    source: str  # setpoint | error | signal | output
    signal: str | None
    lag: int


def parse_card(card: dict[str, Any], where: str = "model card") -> tuple[list[str], list[Feature]]:
    """Validate the card's structure; return (signal roles, features)."""
    if card.get("format") != CARD_FORMAT:
        raise ModelError(f"{where}: format must be {CARD_FORMAT!r}, got {card.get('format')!r}")
    for key in ("signals", "features", "input", "output", "period_ms"):
        if key not in card:
            raise ModelError(f"{where}: missing {key!r}")
    signals = list(card["signals"])
    feats: list[Feature] = []
    for i, f in enumerate(card["features"]):
        src, lag = f.get("source"), int(f.get("lag", 0))
        if src not in SOURCES:
            raise ModelError(f"{where}: features[{i}].source {src!r} not one of {SOURCES}")
        if src == "signal" and f.get("signal") not in signals:
            raise ModelError(f"{where}: features[{i}] reads unknown signal {f.get('signal')!r}")
        if lag < 0 or (src == "output" and lag < 1):
            raise ModelError(f"{where}: features[{i}] lag {lag} invalid (output needs lag >= 1)")
        feats.append(Feature(str(f.get("name", f"f{i}")), src, f.get("signal"), lag))
    n = len(feats)
    inp = card["input"]
    for key in ("mean", "std"):
        if len(inp.get(key, [])) != n:
            raise ModelError(
                f"{where}: input.{key} has {len(inp.get(key, []))} values, features has {n}"
            )
    if any(not (s > 0 and math.isfinite(s)) for s in inp["std"]):
        raise ModelError(f"{where}: input.std must be positive and finite")
    out = card["output"]
    for key in ("scale", "offset", "min", "max"):
        if not isinstance(out.get(key), int | float):
            raise ModelError(f"{where}: output.{key} missing or not a number")
    return signals, feats


def feature_rows(signals: list[str], features: list[Feature]) -> tuple[np.ndarray, np.ndarray]:
    """Row in `FeatureState.buf` and lag of each feature (shared by training and runtime)."""
    row = {
        "setpoint": 0,
        "error": 1,
        "output": len(signals) + 2,
        "error_integral": len(signals) + 3,
    }
    rows = np.array(
        [
            row[f.source] if f.source != "signal" else 2 + signals.index(f.signal or "")
            for f in features
        ],
        np.int64,
    )
    return rows, np.array([f.lag for f in features], np.int64)


def raw_features(fs: FeatureState, rows: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Unnormalised feature vector for the current period (allocates; training only)."""
    return cast(np.ndarray, fs.flat[rows * fs.length + (fs.pos - lags) % fs.length].copy())


def integral_params(card: dict[str, Any], where: str) -> tuple[float, float, float] | None:
    """(period s, tau s, clip) of the card's error integral, None if the card has none."""
    uses = any(f.get("source") == "error_integral" for f in card["features"])
    spec = card.get("error_integral") or {}
    if not uses:
        return None
    try:
        tau, clip = float(spec["tau_s"]), float(spec["clip"])
    except (TypeError, KeyError, ValueError) as e:
        raise ModelError(f"{where}: error_integral needs tau_s and clip") from e
    dt = float(card["period_ms"]) / 1000.0
    if not (tau > dt and clip > 0):
        raise ModelError(f"{where}: error_integral.tau_s must exceed the period, clip be > 0")
    return dt, tau, clip


class FeatureState:
    """Ring buffer of the recent setpoint, error, signals, applied output and error integral.

    Row order: setpoint, error, each signal in card order, output, error integral (float32).
    `push_inputs` writes the current period's slot; `push_output` writes the output applied
    in that same period, so `lag` k always means "k periods before the current one".

    The error integral (when the card asks for it) is a leaky integral of the error clipped
    to +/-`clip`, with time constant `tau_s`: a long memory of small residual offsets that a
    short lag window cannot show, without winding up on large transients.
    """

    def __init__(
        self, n_signals: int, max_lag: int, integral: tuple[float, float, float] | None = None
    ) -> None:
        self.n_rows = n_signals + 4
        self.out_row = n_signals + 2
        self.int_row = n_signals + 3
        self.length = max_lag + 1
        self.buf = np.zeros((self.n_rows, self.length), np.float32)
        self.flat = self.buf.reshape(-1)
        self.pos = 0
        self.primed = False
        self.integral = 0.0
        if integral is not None:
            dt, tau, clip = integral
            self._i_dt, self._i_keep, self._i_clip = dt, 1.0 - dt / tau, clip
        else:
            self._i_dt, self._i_keep, self._i_clip = 0.0, 0.0, 0.0

    def push_inputs(self, sp: float, pv: float, signals: list[float]) -> None:
        """Record this period's setpoint, error (sp - pv) and signal values."""
        e = sp - pv
        c = self._i_clip
        self.integral = self.integral * self._i_keep + min(max(e, -c), c) * self._i_dt
        b = self.buf
        if self.primed:
            self.pos = (self.pos + 1) % self.length
            col = self.pos
            b[0, col] = sp
            b[1, col] = e
            for i, v in enumerate(signals):
                b[2 + i, col] = v
            b[self.int_row, col] = self.integral
        else:  # first sample: as if the plant had been sitting there
            b[0, :] = sp
            b[1, :] = e
            for i, v in enumerate(signals):
                b[2 + i, :] = v
            b[self.int_row, :] = self.integral

    def push_output(self, u: float) -> None:
        """Record the output applied this period (whichever controller was active)."""
        if not self.primed:
            self.buf[self.out_row, :] = u
            self.primed = True
        else:
            self.buf[self.out_row, self.pos] = u


class Policy:
    """One loaded model with its card, checked against the loop's signal roles and period."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        signals: list[str] | None = None,
        period_ms: int | None = None,
    ) -> None:
        self.path = Path(model_path)
        card_path = self.path.with_suffix(".json")
        try:
            self.card: dict[str, Any] = json.loads(card_path.read_text())
        except FileNotFoundError as e:
            raise ModelError(f"model card {card_path} not found") from e
        except json.JSONDecodeError as e:
            raise ModelError(f"model card {card_path} is not valid JSON: {e}") from e
        where = f"model card {card_path.name}"
        self.signals, self.features = parse_card(self.card, where)
        if signals is not None:
            missing = [s for s in self.signals if s not in signals]
            if missing:
                raise ModelError(
                    f"{where}: model reads signals {missing} the loop's `inputs` "
                    f"do not map (loop has {sorted(signals)})"
                )
        if period_ms is not None and int(self.card["period_ms"]) != int(period_ms):
            raise ModelError(
                f"{where}: model was trained at period_ms={self.card['period_ms']}, "
                f"loop runs at {period_ms}"
            )
        self.integral = integral_params(self.card, where)
        self.interp = load_interpreter(self.path)
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        n = len(self.features)
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(
                f"{self.path.name}: needs 1 input and 1 output tensor, "
                f"has {len(ins)} and {len(outs)}"
            )
        if list(ins[0]["shape"]) != [1, n] or ins[0]["dtype"] != np.float32:
            raise ModelError(
                f"{self.path.name}: input tensor is {list(ins[0]['shape'])} "
                f"{np.dtype(ins[0]['dtype']).name}, card says [1, {n}] float32"
            )
        if list(outs[0]["shape"]) != [1, 1] or outs[0]["dtype"] != np.float32:
            raise ModelError(
                f"{self.path.name}: output tensor is {list(outs[0]['shape'])} "
                f"{np.dtype(outs[0]['dtype']).name}, expected [1, 1] float32"
            )
        self._in_idx, self._out_idx = ins[0]["index"], outs[0]["index"]
        inp, out = self.card["input"], self.card["output"]
        self._mean = np.asarray(inp["mean"], np.float32)
        self._inv_std = (1.0 / np.asarray(inp["std"], np.float64)).astype(np.float32)
        self.out_scale, self.out_offset = float(out["scale"]), float(out["offset"])
        self.out_min, self.out_max = float(out["min"]), float(out["max"])
        self.max_lag = max([f.lag for f in self.features] + [1])
        self._rows, self._lags = feature_rows(self.signals, self.features)
        length = self.max_lag + 1
        # flat buffer index of every feature for each ring position, computed once
        pos = np.arange(length)[:, None]
        self._idx_table = self._rows[None, :] * length + (pos - self._lags[None, :]) % length
        self._x = np.zeros((1, n), np.float32)

    def new_state(self) -> FeatureState:
        return FeatureState(len(self.signals), self.max_lag, self.integral)

    def assemble(self, fs: FeatureState) -> np.ndarray:
        """Normalised input row for the current period (a view of a preallocated buffer)."""
        x = self._x[0]
        np.take(fs.flat, self._idx_table[fs.pos], out=x)
        x -= self._mean
        x *= self._inv_std
        return self._x

    def invoke(self, fs: FeatureState) -> float:
        """The model's output in engineering units (not clamped: the safety envelope does it)."""
        x = self.assemble(fs)
        try:
            self.interp.set_tensor(self._in_idx, x)
            self.interp.invoke()
            y = float(self.interp.get_tensor(self._out_idx)[0, 0])
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"invoke failed: {e}") from e
        return y * self.out_scale + self.out_offset
