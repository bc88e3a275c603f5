"""Offline tooling around the simulated plant: the demo, the shipped heater policy's
simulator-backed evaluation and its default PID tuning, and the `sim`/`control-eval`
commands.

It may import `agent` and `hw_sim`; nothing under `agent/` or `drivers/` imports it (the
runtime on a gateway never needs the simulator). Its commands join the `edgeloop` CLI
through the `edgeloop.commands` entry-point group, the same seam a third-party package uses.
"""
