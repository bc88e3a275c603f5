"""Run the plant and its simulated PLCs until SIGTERM / Ctrl-C (`python -m hw_sim`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from hw_sim.modbus_server import Misbehaviour, SimModbusServer
from hw_sim.runtime import SimPlant

log = logging.getLogger("hw_sim")


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Start plant, Modbus TCP (+ RTU) and OPC UA; wait for `stop` or a signal; shut down."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    plant = SimPlant(
        seed=args.seed,
        speed=args.speed,
        scenario=args.scenario,
        faults_log=args.faults_log,
        loops=args.loops,
        loop_seed=args.loop_seed,
        loop_disturbances=not args.no_loop_disturbances,
    )
    mis = Misbehaviour()
    servers: list[SimModbusServer] = [
        SimModbusServer(plant, host=args.host, port=args.modbus_port, misbehaviour=mis)
    ]
    if args.rtu_port:
        servers.append(SimModbusServer(plant, serial_port=args.rtu_port, misbehaviour=mis))
    opcua: Any = None
    runner = asyncio.create_task(plant.run(), name="hw_sim plant")
    try:
        for s in servers:
            await s.start()
            print(f"hw_sim: {s.where}", flush=True)
        if not args.no_opcua:
            try:
                from hw_sim.opcua_server import start_opcua_server
            except ImportError as exc:
                print(f"hw_sim: OPC UA server not available ({exc}); skipped", flush=True)
            else:
                opcua = await _start_opcua(start_opcua_server, plant, args)
        for name, loop in plant.loops.items():
            print(
                f"hw_sim: loop {name} unit {loop.spec.unit_id} seed {loop.seed} "
                f"({loop.spec.title})",
                flush=True,
            )
        scen = plant.scenario.name if args.scenario else "none"
        print(
            f"hw_sim: running seed={plant.seed} speed={plant.speed:g} scenario={scen}"
            + (f" faults-log={args.faults_log}" if args.faults_log else ""),
            flush=True,
        )
        await stop.wait()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if opcua is not None:
            with contextlib.suppress(Exception):
                await opcua.stop()
        for s in servers:
            await s.stop()
        plant.close()
        print("hw_sim: stopped", flush=True)
    return 0


async def _start_opcua(start: Any, plant: SimPlant, args: argparse.Namespace) -> Any:
    """Start the OPC UA server with the CLI's certificates and users; print how to connect."""
    certs_dir = getattr(args, "opcua_certs", None)
    users = dict(getattr(args, "opcua_user", None) or [])
    opcua = await start(
        plant, host=args.host, port=args.opcua_port, certs_dir=certs_dir, users=users or None
    )
    print(f"hw_sim: opc ua {opcua.endpoint}", flush=True)
    if opcua.certs is not None:
        from hw_sim.opcua_server import SECURE_POLICIES

        names = ", ".join(dict.fromkeys(p.name.rsplit("_", 1)[0] for p in SECURE_POLICIES))
        print(f"hw_sim: opc ua security None + {names} (Sign, SignAndEncrypt)", flush=True)
        srv, cli = opcua.certs.server, opcua.certs.client
        print(f"hw_sim: opc ua server certificate {srv.cert} (SHA-256 {srv.sha256})", flush=True)
        print(
            f"hw_sim: opc ua client certificate {cli.cert} key {cli.key} (URI {cli.uri})",
            flush=True,
        )
    else:
        print(
            "hw_sim: opc ua security None only (--opcua-certs DIR adds the secure policies)",
            flush=True,
        )
    if users:
        print(f"hw_sim: opc ua users {', '.join(sorted(users))} (and anonymous)", flush=True)
    return opcua


def serve_forever(args: argparse.Namespace) -> int:
    """Blocking entry point for the CLI; exit status 0 on a clean signal shutdown."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(args))
    except OSError as exc:  # port in use, serial device missing
        print(f"hw_sim: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad scenario file
        print(f"hw_sim: {exc}", file=sys.stderr)
        return 2
