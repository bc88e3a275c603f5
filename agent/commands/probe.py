"""`edgeloop probe`: read raw Modbus registers and show them decoded every way at once.

For commissioning a device whose manual is vague about types and byte/word order: the
user reads a block where a known value should be and picks the column that shows it.
One 16-bit table (hex, uint16, int16, ASCII, bits) and, for each wider type, one row per
start address with a column per order: ABCD (big/big), CDAB (word swap: word_order
little), BADC (byte swap: byte_order little), DCBA (both little).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

HELP = "read raw Modbus registers and print them as every type in every byte/word order"

WIDE_TYPES = ("float32", "int32", "uint32", "float64", "int64", "uint64")
_ORDERS = (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="device host (TCP)")
    parser.add_argument("--port", type=int, default=502, help="device port (TCP, 502)")
    parser.add_argument("--unit", type=int, default=1, help="unit id (1)")
    parser.add_argument(
        "--table",
        choices=("holding", "input", "coil", "discrete"),
        default="holding",
        help="Modbus table (holding: FC03, input: FC04, coil: FC01, discrete: FC02)",
    )
    parser.add_argument("--address", type=int, required=True, help="0-based protocol address")
    parser.add_argument("--count", type=int, default=8, help="registers (or bits) to read (8)")
    parser.add_argument("--rtu", metavar="DEVICE", help="serial port for Modbus RTU instead of TCP")
    parser.add_argument("--baudrate", type=int, default=19200, help="RTU speed (19200)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (N)")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits")
    parser.add_argument("--timeout", type=float, default=2.0, help="response timeout, s (2.0)")
    parser.add_argument(
        "--types",
        default=",".join(WIDE_TYPES),
        help=f"wide types to show, comma separated (default {','.join(WIDE_TYPES)})",
    )
    parser.add_argument(
        "--yaml",
        metavar="TYPE[:ORDER]",
        help="print the tag line for the pick instead of the table: a type (uint16, int16, "
        "float32, ..., string) and for wide types the order as ABCD, CDAB, BADC or DCBA "
        "(e.g. float32:CDAB)",
    )
    parser.add_argument("--name", help="tag name for --yaml (default <table>_<address>)")


def _fmt(v: float | int, dtype: str) -> str:
    if dtype == "float32":
        return f"{v:.7g}"
    if dtype == "float64":
        return f"{v:.15g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def format_registers(start: int, regs: list[int], types: tuple[str, ...] = WIDE_TYPES) -> str:
    """The probe report for raw register values read from `start` (pure, tested)."""
    from drivers.modbus_codec import ORDER_NAMES, WIDTH, decode_value

    lines: list[str] = [f"{len(regs)} registers from address {start}", ""]
    rows = []
    for i, r in enumerate(regs):
        hi, lo = r >> 8, r & 0xFF
        ascii_ = "".join(chr(c) if 32 <= c < 127 else "." for c in (hi, lo))
        i16 = r - 0x10000 if r & 0x8000 else r
        rows.append([str(start + i), f"0x{r:04X}", str(r), str(i16), ascii_, f"{r:016b}"])
    lines += _table(["addr", "hex", "uint16", "int16", "ascii", "bits 15..0"], rows)
    for dtype in types:
        if dtype not in WIDTH or WIDTH[dtype] < 2:
            raise ValueError(f"unknown wide type {dtype!r}; choose from {', '.join(WIDE_TYPES)}")
        w = WIDTH[dtype]
        if len(regs) < w:
            continue
        rows = []
        for i in range(len(regs) - w + 1):
            words = regs[i : i + w]
            rows.append(
                [str(start + i)]
                + [_fmt(decode_value(words, dtype, bo, wo), dtype) for bo, wo in _ORDERS]
            )
        header = [f"{dtype} @"] + [f"{ORDER_NAMES[o]} ({o[0][0]}/{o[1][0]})" for o in _ORDERS]
        lines += ["", *_table(header, rows)]
    text_be = "".join(chr(c) if 32 <= c < 127 else "." for r in regs for c in (r >> 8, r & 0xFF))
    text_le = "".join(chr(c) if 32 <= c < 127 else "." for r in regs for c in (r & 0xFF, r >> 8))
    lines += [
        "",
        f"string, byte_order big:    {text_be!r}",
        f"string, byte_order little: {text_le!r}",
    ]
    lines += [
        "",
        "orders: ABCD = byte_order big, word_order big; CDAB = big/little (word swap);",
        "        BADC = little/big (byte swap); DCBA = little/little.",
    ]
    return "\n".join(lines)


def format_bits(start: int, bits: list[int]) -> str:
    rows = [[str(start + i), str(b)] for i, b in enumerate(bits)]
    return "\n".join(
        [f"{len(bits)} bits from address {start}", "", *_table(["addr", "value"], rows)]
    )


async def _read(args: argparse.Namespace) -> list[int]:
    from drivers.modbus import create
    from drivers.modbus_config import ModbusDevice

    dev = ModbusDevice.for_command(
        name="probe",
        transport="rtu" if args.rtu else "tcp",
        host=args.host,
        port=args.port,
        serial_port=args.rtu,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
        unit_id=args.unit,
        timeout_s=args.timeout,
        retries=0,
    )
    drv = create(dev, [])
    try:
        return await drv.read_raw(args.table, args.address, args.count, args.unit)
    finally:
        await drv.close()


def run(args: argparse.Namespace) -> int:
    from drivers.base import DriverError

    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    bad = [t for t in types if t not in WIDE_TYPES]
    if bad:
        print(
            f"probe: unknown type(s) {', '.join(bad)}; choose from {', '.join(WIDE_TYPES)}",
            file=sys.stderr,
        )
        return 2
    if args.yaml:
        try:
            pick = parse_pick(args.yaml, args.table)
        except ValueError as exc:
            print(f"probe: --yaml {args.yaml}: {exc}", file=sys.stderr)
            return 2
    try:
        data = asyncio.run(_read(args))
    except DriverError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    if args.yaml:
        try:
            print(tag_line(args, pick, data))
        except ValueError as exc:
            print(f"probe: {exc}", file=sys.stderr)
            return 1
        return 0
    where = args.rtu or f"{args.host}:{args.port}"
    print(f"{where} unit {args.unit} {args.table}: ", end="")
    if args.table in ("coil", "discrete"):
        print(format_bits(args.address, data))
    else:
        print(format_registers(args.address, data, types))
    return 0


_ORDER_CODES = {"ABCD": ("big", "big"), "CDAB": ("big", "little"),
                "BADC": ("little", "big"), "DCBA": ("little", "little")}  # fmt: skip


def parse_pick(text: str, table: str) -> tuple[str, str, str]:
    """`float32:CDAB` -> (dtype, byte_order, word_order); checked against the table."""
    from drivers.modbus_codec import WIDTH

    dtype, _, order = text.partition(":")
    dtype = dtype.strip().lower()
    if table in ("coil", "discrete"):
        if dtype not in ("bool", ""):
            raise ValueError(f"a {table} holds one bit: use --yaml bool")
        return "bool", "big", "big"
    if dtype not in WIDTH and dtype != "string":
        raise ValueError(f"unknown type {dtype!r}; one of {', '.join(sorted(WIDTH))}, string")
    code = order.strip().upper() or "ABCD"
    if code not in _ORDER_CODES:
        raise ValueError(f"order {order!r}: one of {', '.join(_ORDER_CODES)}")
    if WIDTH.get(dtype, 1) < 2 and code not in ("ABCD", "BADC"):
        raise ValueError(f"{dtype} is one register: only ABCD or BADC (byte swap) apply")
    return (dtype, *_ORDER_CODES[code])


def tag_line(args: argparse.Namespace, pick: tuple[str, str, str], data: list[int]) -> str:
    """The tag line for a config, with the value it decodes to now as a comment."""
    from drivers.modbus_codec import WIDTH, decode_value

    dtype, bo, wo = pick
    name = args.name or f"{args.table}_{args.address}"
    fields = [f"name: {name}", f"table: {args.table}", f"address: {args.address}"]
    if args.table in ("coil", "discrete"):
        value = bool(data[0])
    else:
        width = args.count if dtype == "string" else WIDTH[dtype]
        if len(data) < width:
            raise ValueError(f"{dtype} needs {width} registers; read with --count {width}")
        value = decode_value(data[:width], dtype, bo, wo)
        fields.append(f"type: {dtype}")
        if dtype == "string":
            fields.append(f"length_registers: {width}")
        if bo != "big":
            fields.append(f"byte_order: {bo}")
        if wo != "big" and WIDTH.get(dtype, 1) > 1:
            fields.append(f"word_order: {wo}")
    return "- {" + ", ".join(fields) + "}" + f"   # now {value!r}"
