"""`edgeloop probe` formatting: every type in every order, side by side."""

from __future__ import annotations

import pytest

from agent.cli import build_parser
from agent.commands.probe import format_bits, format_registers


def _row(report: str, header_start: str, address: int) -> list[str]:
    lines = report.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith(header_start))
    for line in lines[i + 2 :]:
        cells = line.split()
        if not cells:
            break
        if cells[0] == str(address):
            return cells
    raise AssertionError(f"no row {address} under {header_start}")


def test_float32_shows_in_the_column_of_its_order() -> None:
    # 123.456 stored word-swapped (CDAB) at address 100, followed by a register of noise
    report = format_registers(100, [0xE979, 0x42F6, 0x1234])
    cells = _row(report, "float32 @", 100)
    assert cells[0] == "100" and cells[2] == "123.456"  # ABCD, CDAB, BADC, DCBA -> CDAB
    assert cells[1] != "123.456" and "123.456" not in cells[3:]
    assert "0xE979" in report and "addr" in report


def test_sixteen_bit_table_and_strings() -> None:
    report = format_registers(0, [0x4142, 0xFFFE])
    assert _row(report, "addr", 0)[:5] == ["0", "0x4142", "16706", "16706", "AB"]
    assert _row(report, "addr", 1)[:4] == ["1", "0xFFFE", "65534", "-2"]
    assert "string, byte_order big:    'AB..'" in report
    assert "string, byte_order little: 'BA..'" in report


def test_64_bit_types_need_four_registers() -> None:
    report = format_registers(0, [0, 0, 0, 7], ("int64", "uint64"))
    assert _row(report, "int64 @", 0)[1] == "7"  # ABCD
    assert _row(report, "uint64 @", 0)[4] == str(0x0700 << 48)  # DCBA: 0x0700 is the top word
    assert "float32 @" not in report
    assert "int64 @" in format_registers(0, [1, 2, 3, 4], ("int64",))
    assert "int64 @" not in format_registers(0, [1, 2, 3], ("int64",))


def test_bits() -> None:
    assert format_bits(10, [1, 0]).splitlines()[-1].split() == ["11", "0"]


def test_probe_is_a_cli_command() -> None:
    args = build_parser().parse_args(
        [
            "probe",
            "--host",
            "h",
            "--port",
            "1502",
            "--table",
            "input",
            "--address",
            "4",
            "--count",
            "6",
        ]
    )
    assert (args.host, args.port, args.table, args.address, args.count, args.unit) == (
        "h",
        1502,
        "input",
        4,
        6,
        1,
    )


def test_unknown_type_is_refused_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["probe", "--address", "0", "--types", "float33"])
    assert args._run(args) == 2
    assert "float33" in capsys.readouterr().err
