"""`edgeloop import tags.csv`: a PLC tag export (CSV) to tag lines for a Modbus poll group.

Columns (header names matched case-insensitively; only `name` and `address` are required):
name, address, type, unit, scale, offset, min, max, writable, description, table.

Addresses, as PLC tools export them:
- Modicon references, 5 or 6 digits, 1-based: 0xxxx coils, 1xxxx discrete inputs, 3xxxx
  input registers, 4xxxx holding registers (`40001` is holding register 0 on the wire,
  `400001` too); `40001.3` is bit 3 of that register;
- IEC/Schneider: `%MW100` holding 100, `%MD100`/`%MF100` the 32-bit value at holding 100
  (%MD n shares %MW n and n+1), `%IW5` input 5, `%M3` coil 3, `%I3` discrete 3;
- table prefixes, 0-based: `HR0`, `IR0`, `CO0`/`C0`, `DI0` (also `HR:0`, `HR 0`);
- a plain number with a `table` column: 0-based as it is.
PLC type names map to edgeloop's: INT int16, UINT/WORD uint16, DINT int32, UDINT/DWORD
uint32, REAL/FLOAT float32, LREAL/DOUBLE float64, BOOL bool. Every row says in a comment
what it was converted from, so the user can check the convention against the PLC manual.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

NAME = "import"
HELP = "convert a PLC tag export (CSV: name, address like 40001/%MW100/HR0, type, ...) to YAML"

_TYPES = {
    "int": "int16", "int16": "int16", "sint": "int16",
    "uint": "uint16", "uint16": "uint16", "word": "uint16",
    "dint": "int32", "int32": "int32", "udint": "uint32", "uint32": "uint32", "dword": "uint32",
    "lint": "int64", "int64": "int64", "ulint": "uint64", "uint64": "uint64", "lword": "uint64",
    "real": "float32", "float": "float32", "float32": "float32",
    "lreal": "float64", "double": "float64", "float64": "float64",
    "bool": "bool", "boolean": "bool", "bit": "bit", "string": "string",
}  # fmt: skip
_TABLES = {"holding", "input", "coil", "discrete"}
_PREFIX = {"hr": "holding", "ir": "input", "co": "coil", "c": "coil", "di": "discrete"}
_MODICON = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}
_IEC = {
    "mw": ("holding", None), "md": ("holding", "int32"), "mf": ("holding", "float32"),
    "iw": ("input", None), "m": ("coil", "bool"), "i": ("discrete", "bool"),
}  # fmt: skip
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


class RowError(ValueError):
    """A row that cannot be converted; the message names what is wrong."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", type=Path, help="tag export, comma/semicolon/tab separated, header row")
    p.add_argument("--json", action="store_true", help="print a JSON list of tag objects")
    p.add_argument("--indent", type=int, default=10, help="spaces before each YAML line (10)")


def parse_address(
    text: str, table: str | None = None
) -> tuple[str, int, int | None, str, str | None]:
    """(table, 0-based address, bit or None, how it was read, the type the address form
    implies or None: %MD int32, %MF float32, %M/%I bool) of one exported address."""
    a = text.strip().strip('"').strip()
    if not a:
        raise RowError("empty address")
    bit = None
    if m := re.fullmatch(r"(.+)\.(\d{1,2})", a):
        a, bit = m.group(1), int(m.group(2))
        if bit > 15:
            raise RowError(f"bit {bit} in {text!r}: a register has bits 0..15")
    if m := re.fullmatch(r"%(MW|MD|MF|IW|M|I)(\d+)", a, re.IGNORECASE):
        tab, implied = _IEC[m.group(1).lower()]
        how = f"%{m.group(1).upper()}{m.group(2)} (IEC, 0-based)"
        return tab, int(m.group(2)), bit, how, implied
    if m := re.fullmatch(r"(HR|IR|CO|C|DI)[\s:]?(\d+)", a, re.IGNORECASE):
        tab = _PREFIX[m.group(1).lower()]
        return tab, int(m.group(2)), bit, f"{m.group(1).upper()}{m.group(2)} (0-based)", None
    if not a.isdigit():
        raise RowError(f"address {text!r}: not Modicon (40001), IEC (%MW100) or HR0-style")
    n = int(a)
    if table:
        return table, n, bit, f"{n} ({table}, 0-based)", None
    if len(a) in (5, 6) and int(a[0]) in _MODICON:
        tab = _MODICON[int(a[0])]
        reg = n - int(a[0]) * 10 ** (len(a) - 1) - 1
        if reg < 0:
            raise RowError(f"address {text!r}: Modicon references start at 1 (e.g. 40001)")
        return tab, reg, bit, f"{a} (Modicon {a[0]}{'x' * (len(a) - 1)}, 1-based)", None
    raise RowError(
        f"address {text!r}: a plain number needs a `table` column (holding/input/coil/"
        "discrete) or a Modicon reference (5-6 digits, e.g. 40001)"
    )


def _num(v: str, what: str) -> float | None:
    if not v.strip():
        return None
    v = v.strip()
    if v.count(",") == 1 and "." not in v:  # a decimal comma, as German exports write it
        v = v.replace(",", ".")
    try:
        return float(v)
    except ValueError:
        raise RowError(f"{what} {v!r} is not a number") from None


def convert_row(row: dict[str, str]) -> tuple[dict[str, Any], str]:
    """One CSV row -> (tag dict for the config, a comment saying what it came from)."""
    name = row.get("name", "").strip()
    if not name:
        raise RowError("empty name")
    if not _NAME_OK.match(name):  # PLC names with spaces, brackets, umlauts: made safe
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:64]
        if not _NAME_OK.match(name):
            name = f"_{name}"[:64]
    table = row.get("table", "").strip().lower() or None
    if table and table not in _TABLES:
        raise RowError(f"table {table!r}: holding, input, coil or discrete")
    tab, addr, bit, how, implied = parse_address(row.get("address", ""), table)
    if addr > 65535:
        raise RowError(f"address {row.get('address')!r} is register {addr}, beyond 65535")
    raw_type = row.get("type", "").strip().lower()
    typ = _TYPES.get(raw_type) if raw_type else implied
    if raw_type and typ is None:
        raise RowError(f"type {raw_type!r} unknown (INT, DINT, REAL, BOOL, WORD, ...)")
    tag: dict[str, Any] = {"name": name, "table": tab, "address": addr}
    if tab in ("coil", "discrete"):
        if typ not in (None, "bool"):
            raise RowError(f"{tab} {addr} holds one bit, not {raw_type}")
    elif bit is not None:
        tag.update(type="bit", bit=bit)
    else:
        tag["type"] = "uint16" if typ in (None, "bool") else typ
    for key in ("unit", "description"):
        if v := row.get(key, "").strip():
            tag[key] = v
    for key in ("scale", "offset", "min", "max"):
        if (v := _num(row.get(key, ""), key)) is not None and not (
            (key == "scale" and v == 1.0) or (key == "offset" and v == 0.0)
        ):
            tag[key] = v
    if row.get("writable", "").strip().lower() in ("1", "true", "yes", "y", "rw", "x"):
        tag["writable"] = True
    where = f"{tab} {addr}" + (f" bit {bit}" if bit is not None else "")
    return tag, f"{row.get('name', '').strip()}: {how} -> {where}"


def read_rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not reader.fieldnames or not {"name", "address"} <= {
        f.strip().lower() for f in reader.fieldnames
    }:
        raise RowError("the header row needs at least the columns name and address")
    return [{(k or "").strip().lower(): (v or "") for k, v in r.items()} for r in reader]


def _yaml_line(tag: dict[str, Any]) -> str:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        if isinstance(v, str):
            plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./\-]*", v)  # else quoted: % : # ...
            return v if plain else json.dumps(v)
        return str(v)

    return "- {" + ", ".join(f"{k}: {val(v)}" for k, v in tag.items()) + "}"


def run(args: argparse.Namespace) -> int:
    try:
        rows = read_rows(args.csv)
    except (OSError, UnicodeDecodeError, RowError) as e:
        print(f"edgeloop import: {args.csv}: {e}", file=sys.stderr)
        return 2
    tags, notes, bad = [], [], 0
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        try:
            tag, note = convert_row(row)
        except RowError as e:
            print(f"{args.csv}:{n}: {e}", file=sys.stderr)
            bad += 1
            continue
        tags.append(tag)
        notes.append(note)
    names = [t["name"] for t in tags]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        print(f"{args.csv}: name {dup!r} appears more than once", file=sys.stderr)
        bad += 1
    if args.json:
        print(json.dumps(tags, indent=1))
    else:
        pad = " " * args.indent
        print(f"{pad}# from {args.csv.name}: {len(tags)} tags; addresses are 0-based on the wire")
        for tag, note in zip(tags, notes, strict=True):
            print(f"{pad}# {note}")
            print(f"{pad}{_yaml_line(tag)}")
    if bad:
        print(f"edgeloop import: {bad} rows refused (above)", file=sys.stderr)
    return 1 if bad else 0
