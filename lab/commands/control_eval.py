"""`edgeloop control-eval`: the shipped policy vs the PID vs the MPC expert in simulated time."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "control-eval"
HELP = "compare the TFLite policy, the fallback PID and the MPC expert on the simulated heater"

COLUMNS = (
    ("iae", "IAE K*s", "{:.0f}"),
    ("overshoot", "overshoot K", "{:.2f}"),
    ("settling_s", "settling s", "{:.1f}"),
    ("travel", "travel %", "{:.0f}"),
    ("violations", "violations", "{:d}"),
    ("step_us_p99", "step us p99", "{:.1f}"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="heater_policy.tflite", help="model name or path")
    p.add_argument("--scenarios", action="store_true", help="also print IAE per scenario")


def table(res: dict[str, dict], per_scenario: bool = False) -> str:
    """The results as a Markdown table (also what bench/README.md records)."""
    head = "| controller | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in res.items():
        cells = [fmt.format(r[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t, p, e = res.get("tflite"), res.get("pid"), res.get("expert")
    if t and p and e:
        lines.append("")
        lines.append(
            f"TFLite IAE = {t['iae'] / p['iae']:.2f}x PID (commissioning target <= 0.8), "
            f"{t['iae'] / e['iae']:.2f}x the expert on the true equations; compute per step "
            f"{e['step_us_mean'] / t['step_us_mean']:.0f}x less than the expert (mean), "
            f"{e['step_us_p99'] / t['step_us_p99']:.0f}x (p99)"
        )
    if per_scenario:
        names = list(next(iter(res.values()))["iae_by_scenario"])
        lines += ["", "| scenario | " + " | ".join(res) + " |", "|" + "---|" * (len(res) + 1)]
        for sc in names:
            cells = [f"{res[c]['iae_by_scenario'][sc]:.0f}" for c in res]
            lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from agent.control.policy import ModelError, Policy, resolve_model_path
    from lab.heater_eval import PERIOD_S, ROLES, ExpertController, LoopController, evaluate

    try:
        policy = Policy(
            resolve_model_path(args.model),
            signals=list(ROLES),
            period_ms=round(PERIOD_S * 1000),
        )
    except ModelError as e:
        print(f"edgeloop control-eval: {e}", file=sys.stderr)
        return 1
    res = evaluate([LoopController(policy), LoopController(None), ExpertController()])
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(table(res, args.scenarios))
    return 0
