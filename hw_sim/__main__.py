"""`python -m hw_sim`: run the simulated plant and its PLCs (see hw_sim/cli.py)."""

from __future__ import annotations

import sys

from hw_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
