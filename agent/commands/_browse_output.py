"""What `edgeloop browse` prints: config tag names, YAML tag lines, the table and JSON."""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import asdict
from typing import Any

from agent.commands._browse_walk import Found

_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def tag_name(browse_name: str) -> str:
    """A config tag name from a browse name: `Pump.MotorCurrent` -> `pump_motor_current`."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", browse_name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    if not s:
        s = "tag"
    if not (s[0].isalpha() or s[0] == "_"):
        s = "t_" + s
    return s[:64]


def assign_names(found: list[Found]) -> None:
    """Unique names: the browse name's, else prefixed by the parent's, else numbered."""
    base = [tag_name(f.browse_name) for f in found]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    used: set[str] = set()
    for f, b in zip(found, base, strict=True):
        name = b
        if counts[b] > 1:
            parts = f.path.split("/")
            if len(parts) >= 2:
                name = tag_name(f"{parts[-2]}_{f.browse_name}")
        n = 2
        cand = name
        while cand in used:
            cand = f"{name[:60]}_{n}"
            n += 1
        used.add(cand)
        f.name = cand


def _num(x: float) -> str:
    """A finite number as YAML reads it back as a number (YAML 1.1 needs `2.0e+20`, not `2e+20`)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    r = repr(float(x))
    mant, e, exp = r.partition("e")
    return f"{mant}.0e{exp}" if e and "." not in mant else r


def yaml_scalar(s: str) -> str:
    """`s` as a YAML flow scalar: plain when safe, else double-quoted (JSON is valid YAML)."""
    if _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s, ensure_ascii=False)


def tag_line(f: Found) -> str:
    """The flow-mapping tag line of one found variable (a YAML sequence item)."""
    parts = [
        f"name: {f.name}",
        f"node: {json.dumps(f.node, ensure_ascii=False)}",
        f"type: {f.type}",
    ]
    if f.unit:
        parts.append(f"unit: {yaml_scalar(f.unit)}")
    if f.min is not None and f.max is not None:
        parts += [f"min: {_num(f.min)}", f"max: {_num(f.max)}"]
    if f.writable:
        parts.append("writable: true")
    if f.description and f.description != f.browse_name:
        parts.append(f"description: {json.dumps(f.description, ensure_ascii=False)}")
    return "- {" + ", ".join(parts) + "}"


def format_yaml(tags: list[Found], endpoint: str, indent: int = 0) -> str:
    pad = " " * max(0, indent)
    lines = [
        f"# {len(tags)} tags from {endpoint} (edgeloop browse); paste under a poll group's tags:"
    ]
    lines += [tag_line(f) for f in tags]
    return "\n".join(pad + line for line in lines)


def format_table(tags: list[Found], skipped: list[Found]) -> str:
    rows = [
        (
            f.name,
            f.node,
            f.type or "",
            f.unit,
            f"{_num(f.min)}..{_num(f.max)}" if f.min is not None and f.max is not None else "",
            "rw" if f.writable else "r",
            _value_text(f.value),
        )
        for f in tags
    ]
    header = ("name", "node", "type", "unit", "range", "rw", "value")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for f in skipped:
        out.append(f"skipped {f.path} ({f.node}): {f.skip}")
    return "\n".join(out)


def _value_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def matches(f: Found, pattern: str | None) -> bool:
    if not pattern:
        return True
    pat = pattern.lower()
    return any(fnmatch.fnmatchcase(s.lower(), pat) for s in (f.path, f.browse_name, f.node))


def json_tag(f: Found) -> dict[str, Any]:
    d = asdict(f)
    d.pop("props")
    d.pop("skip")
    if not isinstance(d["value"], (bool, int, float, str, type(None))) or (
        isinstance(d["value"], float) and not math.isfinite(d["value"])
    ):
        d["value"] = None
    return d
