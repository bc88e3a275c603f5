"""`edgeloop train`: regenerate the heater policy from a seed (numpy; TensorFlow not needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.control.policy import MODELS_DIR

HELP = "train the heater policy by imitating the MPC expert (numpy MLP, TFLite written directly)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="seed of data, exploration and weights")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="output directory")
    p.add_argument("--episodes", type=int, default=160, help="expert episodes (300 s each)")
    p.add_argument("--dagger-episodes", type=int, default=60, help="student-in-the-loop round")
    p.add_argument("--dagger-rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60, help="most epochs per fit")
    p.add_argument(
        "--patience", type=int, default=15, help="stop a fit after N epochs without progress"
    )
    p.add_argument("--hidden", type=int, default=64, help="units per hidden layer (2 layers)")
    p.add_argument(
        "--no-accept",
        action="store_true",
        help="keep the model even if closed-loop validation misses the targets",
    )


def run(args: argparse.Namespace) -> int:
    from lab.heater_training import train

    try:
        card = train(
            args.seed,
            args.out,
            episodes=args.episodes,
            dagger_episodes=args.dagger_episodes,
            epochs=args.epochs,
            dagger_rounds=args.dagger_rounds,
            hidden=args.hidden,
            accept=not args.no_accept,
            patience=args.patience,
        )
    except RuntimeError as e:
        print(f"edgeloop train: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out / 'heater_policy.tflite'} (+ model card), "
        f"IAE {card['validation']['iae_vs_pid']}x PID"
    )
    return 0
