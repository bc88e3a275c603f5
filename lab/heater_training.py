"""Training pipeline of the heater policy (`edgeloop train`): numpy only, no TensorFlow.

1. Data: closed-loop episodes on the simulated heater across the envelope (flows 5-15 L/min,
   inlet 14-26 degC, setpoints 35-75 degC, random disturbance schedules, sensor noise,
   plant parameters +/-15 %), driven by the MPC expert with exploration noise on the applied
   power; each period records the policy's features (built by the same `FeatureState` code
   the runtime uses) and the expert's action as the label.
2. DAgger (`agent.control.mlp.dagger`): rounds with the current student in the loop (the
   expert still labels every state), so the network also learns to recover from the states
   its own errors lead to.
3. A small numpy MLP (`agent.control.mlp`) imitates the expert; it is written as TFLite
   float32 directly (`agent.control.tflite_writer`), so this runs on the gateway itself.
4. Closed-loop validation on the evaluation scenarios (`lab.heater_eval`) against the
   PID and the expert; the model is accepted only if it meets the targets.
Everything is seeded: the same seed gives the same data and, on the same machine, the same
weights and the same `.tflite` bytes.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from agent.control.mlp import Actor, DaggerResult, TrainConfig, dagger, episode_seed
from agent.control.policy import (
    CARD_FORMAT,
    Feature,
    FeatureState,
    Policy,
    feature_rows,
    raw_features,
)
from agent.control.safety import Envelope
from hw_sim.plant.heater import HeaterParams, HeaterPlant
from lab.heater_eval import (
    MAX_RATE_PER_S,
    PERIOD_S,
    ExpertController,
    LoopController,
    evaluate,
)
from lab.heater_expert import MpcExpert

SIGNALS = ["pv", "flow", "inlet_temp"]
ERR_LAGS = (0, 1, 2, 3, 4, 6, 8, 12, 16)
# disturbance history: how long ago flow / inlet temperature moved (the expert's estimator
# carries that in its state; the pipe delay and the tank lag make it matter for ~8 s)
DIST_LAGS = (0, 2, 4, 8, 12, 16)
# applied power over 15 s: the dead time (up to 6 s) plus the element and tank lags
U_LAGS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 24, 30)


def _lagged(name: str, signal: str, k: int) -> Feature:
    return Feature(name if k == 0 else f"{name}_l{k}", "signal", signal, k)


FEATURES = (
    [Feature("sp", "setpoint", None, 0)]
    + [Feature(f"err_l{k}", "error", None, k) for k in ERR_LAGS]
    + [Feature("pv", "signal", "pv", 0)]
    + [_lagged("flow", "flow", k) for k in DIST_LAGS]
    + [_lagged("inlet_temp", "inlet_temp", k) for k in DIST_LAGS]
    + [Feature(f"u_l{k}", "output", None, k) for k in U_LAGS]
    + [Feature("err_int", "error_integral", None, 0)]
)
INTEGRAL = {"tau_s": 30.0, "clip": 2.0}  # leaky integral of the error clipped to +/-2 K
MAX_LAG = max(f.lag for f in FEATURES)
OUT_SCALE = 100.0
HIDDEN = 64  # units per hidden layer
TARGETS = {"iae_vs_pid": 0.7, "iae_vs_expert": 1.15}


def _episode(
    rng: random.Random, seed: int, student: Any | None, explore: bool
) -> tuple[list[np.ndarray], list[float]]:
    """One closed-loop episode; returns (feature rows, expert labels)."""
    p = HeaterParams(noise_std_c=rng.uniform(0.03, 0.2)).scaled(
        volume=rng.uniform(0.85, 1.15),
        power=rng.uniform(0.85, 1.15),
        pipe=rng.uniform(0.85, 1.15),
        loss=rng.uniform(0.8, 1.2),
        element_tau=rng.uniform(0.85, 1.15),
    )
    random_dist = rng.random() < 0.5
    plant = HeaterPlant(p, seed=seed, disturbances=random_dist)
    flow, inlet = rng.uniform(5, 15), rng.uniform(14, 26)
    plant.set_disturbance(inlet_flow_lpm=flow, inlet_temp_c=inlet, ramp=False)
    if random_dist:  # unpin: the schedule moves them from here
        plant._flow.pinned = plant._inlet.pinned = False
    sp = rng.uniform(35, 75)
    plant.settle(0.0, temp_c=min(sp, p.steady_temp_c(95, flow, inlet)))
    plant.step(PERIOD_S)
    expert = MpcExpert(HeaterParams(), PERIOD_S, max_rate_per_s=MAX_RATE_PER_S)
    env = Envelope(0.0, 100.0, MAX_RATE_PER_S * PERIOD_S)
    fs = FeatureState(len(SIGNALS), MAX_LAG, (PERIOD_S, INTEGRAL["tau_s"], INTEGRAL["clip"]))
    rows, lags = feature_rows(SIGNALS, FEATURES)
    u = plant.power_pct
    noise, noise_std = 0.0, rng.uniform(2.0, 8.0) if explore else 0.0
    next_sp = rng.uniform(20, 100)
    next_dist = rng.uniform(30, 100)
    xs: list[np.ndarray] = []
    ys: list[float] = []
    for k in range(round(300 / PERIOD_S)):
        t = k * PERIOD_S
        if t >= next_sp:
            sp = rng.uniform(35, 75)
            next_sp = t + rng.uniform(30, 110)
        if not random_dist and t >= next_dist:
            plant.set_disturbance(
                inlet_flow_lpm=rng.uniform(5, 15), inlet_temp_c=rng.uniform(14, 26)
            )
            next_dist = t + rng.uniform(30, 100)
        o = plant.outputs()
        y, f, tin = o["tank_temp"], o["inlet_flow"], o["inlet_temp"]
        fs.push_inputs(sp, y, [y, f, tin])
        if not fs.primed:
            fs.push_output(u)
        x = raw_features(fs, rows, lags)
        label = env.apply(expert.step(sp, y, f, tin, u), u)[0]
        xs.append(x)
        ys.append(label)
        act = student(x) if student is not None else label
        if noise_std:
            noise = 0.9 * noise + rng.gauss(0.0, noise_std * math.sqrt(1 - 0.81))
        u = env.apply(act + noise, u)[0]
        fs.push_output(u)
        plant.power_pct = u
        plant.step(PERIOD_S)
    return xs, ys


def rollout(ep_seed: int, actor: Actor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One heater episode for `agent.control.mlp.dagger`: everything drawn from `ep_seed`;
    exploration noise on the applied power in about half of the episodes."""
    rng = random.Random(ep_seed)
    explore = rng.random() < 0.5
    xs, ys = _episode(rng, ep_seed, actor, explore)
    return np.asarray(xs, np.float32), np.asarray(ys, np.float32)


def generate(
    seed: int, episodes: int, student: Actor | None = None, round_: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `episodes` rollouts of one DAgger round (round 0: the expert acts)."""
    parts = [rollout(episode_seed(seed, round_, i), student) for i in range(episodes)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _card(mean: np.ndarray, std: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CARD_FORMAT,
        "name": "heater_policy",
        "description": "Imitation of an MPC expert for the stirred-tank heater "
        "(hw_sim.plant.heater): heater power (%) from setpoint, tank temperature, inlet flow "
        "and inlet temperature, with the recent error and applied-power history.",
        "period_ms": round(PERIOD_S * 1000),
        "signals": SIGNALS,
        "features": [asdict(f) for f in FEATURES],
        "error_integral": INTEGRAL,
        "input": {
            "name": "features",
            "shape": [1, len(FEATURES)],
            "dtype": "float32",
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
        },
        "output": {
            "name": "power",
            "shape": [1, 1],
            "dtype": "float32",
            "unit": "%",
            "scale": OUT_SCALE,
            "offset": 0.0,
            "min": 0.0,
            "max": 100.0,
        },
        **meta,
    }


def train(
    seed: int,
    out_dir: Path,
    episodes: int = 160,
    dagger_episodes: int = 60,
    epochs: int = 60,
    dagger_rounds: int = 2,
    hidden: int = HIDDEN,
    accept: bool = True,
    log: Any = print,
    validation_scenarios: list[Any] | None = None,
    patience: int = 15,
) -> dict[str, Any]:
    """Run the pipeline; writes heater_policy.tflite + .json to `out_dir`; returns the card."""
    t0 = time.monotonic()
    res: DaggerResult = dagger(
        rollout,
        episodes=episodes,
        dagger_episodes=dagger_episodes,
        rounds=dagger_rounds,
        seed=seed,
        hidden=(hidden, hidden),
        activation="tanh",
        out_scale=OUT_SCALE,
        config=TrainConfig(epochs=epochs, patience=patience, seed=seed),
        log=log,
    )
    mean, std = res.student.mean, res.student.std
    rmse = res.rmse
    blob = res.model.to_tflite(input_name="features", output_name="power")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "heater_policy.candidate.tflite"  # renamed only once accepted
    path.write_bytes(blob)
    meta: dict[str, Any] = {
        "training": {
            "seed": seed,
            "episodes": episodes,
            "dagger_episodes": dagger_episodes,
            "dagger_rounds": dagger_rounds,
            "samples": len(res.y),
            "held_out_samples": int(res.val_mask.sum()),
            "epochs": epochs,
            "epochs_run": [f.epochs for f in res.fits],
            "best_epoch": [f.best_epoch for f in res.fits],
            "network": f"MLP {hidden}-{hidden} tanh, float32",
            "trainer": "numpy MLP, Adam, cosine decay, early stopping on held-out episodes "
            "(agent/control/mlp.py); TFLite written by agent/control/tflite_writer.py",
            "expert": "constrained MPC (lab/heater_expert.py), horizon 20 s, re-linearised "
            "per period, delay-aware estimator",
            "envelope": {
                "flow_lpm": [5, 15],
                "inlet_c": [14, 26],
                "setpoint_c": [35, 75],
                "params": "+/-15 % (loss +/-20 %)",
            },
            "imitation_rmse_pct": round(rmse, 3),
            "held_out_rmse_pct": round(res.val_rmse, 3) if math.isfinite(res.val_rmse) else None,
            "numpy": np.__version__,
            "rollout_seconds": round(res.rollout_seconds, 1),
            "fit_seconds": round(res.fit_seconds, 1),
            "seconds": round(time.monotonic() - t0, 1),
        },
    }
    path.with_suffix(".json").write_text(json.dumps(_card(mean, std, meta), indent=1) + "\n")
    log(
        f"imitation RMSE {rmse:.2f} % (held-out episodes {res.val_rmse:.2f} %); "
        "closed-loop validation ..."
    )
    policy = Policy(path, signals=SIGNALS, period_ms=round(PERIOD_S * 1000))
    res_eval = evaluate(
        [LoopController(policy), LoopController(None), ExpertController()], validation_scenarios
    )
    tfl, pid, exp = res_eval["tflite"], res_eval["pid"], res_eval["expert"]
    validation = {
        "scenarios": sorted(tfl["iae_by_scenario"]),  # type: ignore[arg-type]
        "results": res_eval,
        "iae_vs_pid": round(tfl["iae"] / pid["iae"], 3),
        "iae_vs_expert": round(tfl["iae"] / exp["iae"], 3),
        "targets": TARGETS,
    }
    ok = (
        validation["iae_vs_pid"] <= TARGETS["iae_vs_pid"]
        and validation["iae_vs_expert"] <= TARGETS["iae_vs_expert"]
        and tfl["violations"] == 0
    )
    validation["accepted"] = ok
    meta["validation"] = validation
    card = _card(mean, std, meta)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    log(
        f"TFLite IAE {tfl['iae']} = {validation['iae_vs_pid']}x PID, "
        f"{validation['iae_vs_expert']}x expert; violations {tfl['violations']}; "
        f"{'ACCEPTED' if ok else 'REJECTED'}"
    )
    if accept and not ok:
        raise RuntimeError(f"closed-loop validation failed: candidate left in {path}")
    final = out_dir / "heater_policy.tflite"
    path.replace(final)
    path.with_suffix(".json").replace(final.with_suffix(".json"))
    return card
