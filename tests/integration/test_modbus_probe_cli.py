"""`edgeloop probe` against the hw_sim PLC, run as the real command in a subprocess."""

from __future__ import annotations

import asyncio
import sys

from hw_sim import codec as sim_codec
from hw_sim import pointmap
from hw_sim.modbus_server import SimModbusServer
from hw_sim.runtime import SimPlant
from tests.fixtures.ports import free_port


async def probe(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "probe",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def _row(out: str, address: int) -> list[str]:
    """The float32 row of `address` (5 cells: address and the four orders)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("float32 @"))
    for line in lines[start + 2 :]:
        cells = line.split()
        if cells and cells[0] == str(address):
            return cells
    raise AssertionError(f"no float32 row for {address}")


async def test_probe_finds_the_swapped_floats() -> None:
    plant = SimPlant(seed=3)
    plant.write("heater_power", 50.0)
    for _ in range(100):  # heat for a while so the energy and current registers are not 0
        plant.step(1.0)
    server = SimModbusServer(plant, port=free_port())
    await server.start()
    try:
        by_name = {p.name: p for p in pointmap.modbus_points()}
        energy, current = by_name["energy_kwh"], by_name["element_current"]
        assert (energy.address, energy.byte_order, energy.word_order) == (12, "big", "little")
        assert (current.address, current.byte_order, current.word_order) == (16, "little", "little")
        values = plant.values()
        rc, out, err = await probe(
            "--port",
            str(server.port),
            "--table",
            "input",
            "--address",
            "12",
            "--count",
            "8",
            "--types",
            "float32",
        )
        assert rc == 0, err
        for point, column in ((energy, 2), (current, 4)):  # CDAB, DCBA
            words = sim_codec.encode(point, values[point.name])
            want = f"{sim_codec.decode(point, words):.7g}"
            assert float(want) != 0.0
            row = _row(out, point.address)
            assert row[column] == want, (point.name, row)
            assert want not in [c for i, c in enumerate(row) if i not in (0, column)]
            assert f"0x{words[0]:04X}" in out
        rc, out, _ = await probe(
            "--port", str(server.port), "--table", "discrete", "--address", "0", "--count", "3"
        )
        assert rc == 0 and "3 bits from address 0" in out
        # reading past the end of the table: the device's exception, exit 1
        rc, _, err = await probe("--port", str(server.port), "--address", "99", "--count", "5")
        assert rc == 1 and "ILLEGAL_DATA_ADDRESS" in err
    finally:
        await server.stop()
        plant.close()


async def test_probe_yaml_prints_the_tag_line_of_the_pick(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--yaml float32:CDAB` after reading the table: the tag line for that order, which
    `check` accepts and which decodes the value the simulator serves (issue 14)."""
    plant = SimPlant(seed=3)
    plant.write("heater_power", 50.0)
    for _ in range(100):
        plant.step(1.0)
    server = SimModbusServer(plant, port=free_port())
    await server.start()
    try:
        rc, out, err = await probe(
            "--port", str(server.port), "--table", "input", "--address", "12", "--count", "2",
            "--yaml", "float32:CDAB", "--name", "energy_kwh",
        )  # fmt: skip
        assert rc == 0, err
        want = "- {name: energy_kwh, table: input, address: 12, type: float32, word_order: little}"
        assert out.startswith(want), out
        energy = next(p for p in pointmap.modbus_points() if p.name == "energy_kwh")
        served = sim_codec.decode(energy, sim_codec.encode(energy, plant.values()["energy_kwh"]))
        assert float(out.split("# now ")[1]) == served
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "devices:\n  - name: plc\n    driver: modbus\n    host: 127.0.0.1\n"
            "    poll_groups:\n      - name: g\n        interval_ms: 1000\n        tags:\n"
            f"          {out.split('   #')[0]}\n"
        )
        chk = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", "check", str(cfg))
        assert await chk.wait() == 0
        rc, _, err = await probe(
            "--port", str(server.port), "--address", "0", "--yaml", "float32:XYZW"
        )
        assert rc == 2 and "one of ABCD" in err
        rc, out, _ = await probe(
            "--port", str(server.port), "--table", "coil", "--address", "0", "--count", "1",
            "--yaml", "bool",
        )  # fmt: skip
        assert rc == 0 and out.startswith("- {name: coil_0, table: coil, address: 0}")
    finally:
        await server.stop()
        plant.close()


async def test_probe_unreachable_device_fails_cleanly() -> None:
    rc, _out, err = await probe("--port", str(free_port()), "--address", "0", "--timeout", "0.5")
    assert rc == 1 and "cannot connect" in err and "Traceback" not in err


async def test_probe_over_rtu(pty_pair: tuple[str, str]) -> None:
    plc_end, agent_end = pty_pair
    plant = SimPlant(seed=5)
    server = SimModbusServer(plant, serial_port=plc_end, baudrate=38400)
    await server.start()
    try:
        rc, out, err = await probe(
            "--rtu",
            agent_end,
            "--baudrate",
            "38400",
            "--unit",
            "1",
            "--table",
            "holding",
            "--address",
            "0",
            "--count",
            "8",
            "--types",
            "float32",
        )
        assert rc == 0, err
        model = plant.texts()["device_model"]
        assert f"string, byte_order big:    {model!r}" in out
    finally:
        await server.stop()
        plant.close()
