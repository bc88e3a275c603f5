"""How the loader speaks: `Issue`/`ConfigError`, YAML line numbers by path, and pydantic's
errors turned into one-line messages a user acts on.

Messages that depend on the drivers (the list of driver names, "is an OPC UA key; Modbus
tags are addressed by table and address", "subscribe is OPC UA only") are built from
`drivers.registry`, so a new driver gets them without an edit here.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml

from agent.configyaml import MERGE_TAG
from drivers.config_common import NAME_HINT, Path_, num
from drivers.configbase import ENV_NAME_HINT
from drivers.registry import DriverSpec, specs

__all__ = ["ConfigError", "Issue", "Positions", "friendly", "parse_path", "render"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: file, 1-based line, YAML path and a message for humans."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """The config has problems; `issues` lists all of them, `str()` is one line per issue."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def render(path: Sequence[str | int]) -> str:
    s = ""
    for p in path:
        if isinstance(p, int):
            s += f"[{p}]"
        else:
            s += f".{p}" if s else str(p)
    return s


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> Path_:
    out: list[str | int] = []
    for name, idx in _PATH_TOKEN.findall(text):
        out.append(int(idx) if idx else name)
    return tuple(out)


# --- YAML with positions -----------------------------------------------------------------


def line_at(lines: Mapping[Path_, int], path: Sequence[str | int]) -> int:
    """The line of `path`, else of its nearest ancestor that has one (a key pydantic
    reports as missing has no line of its own: its parent's is the place to look)."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get((), 1)


class Positions:
    """Line numbers of every YAML node by path, and the keys of every mapping (to clean
    pydantic locs).  Walks the composed tree before construction; merge keys (`<<: *a`)
    count as the keys they bring in, with the lines of the anchor, and a key given beside
    a merge key overrides the merged one (not a duplicate)."""

    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}
        # the keys of every path whose (last) node is a mapping; the nodes themselves are not
        # kept, so the composed tree (two marks per node) is freed before validation
        self.keys: dict[Path_, set[str]] = {}
        self.duplicates: list[tuple[Path_, str]] = []

    def walk(self, node: yaml.Node, path: Path_ = ()) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            self.keys[path] = seen
            self._pairs(node, path, seen, explicit=True)
            return
        self.keys.pop(path, None)  # a duplicate key's later value decides, as before
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i))

    def _pairs(self, node: yaml.MappingNode, path: Path_, seen: set[str], explicit: bool) -> None:
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = (*path, key)
            if key in seen:
                if not explicit:
                    continue  # merged: the key given beside the merge key wins
                self.duplicates.append((child, f"duplicate key {key!r}"))  # at the second
            seen.add(key)
            self.lines[child] = key_node.start_mark.line + 1
            self.walk(value_node, child)
        for merged in merges:
            parts = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
            for part in parts:
                if isinstance(part, yaml.MappingNode):  # anything else: the constructor says
                    self._pairs(part, path, seen, explicit=False)

    def line(self, path: Path_) -> int:
        return line_at(self.lines, path)

    def clean(self, loc: Sequence[str | int], missing: bool = False) -> Path_:
        """Drop pydantic's union-member/tag entries that are not keys of the YAML.

        Only the last entry of a `missing` error may name a key that is not in the file.
        """
        out: list[str | int] = []
        for i, part in enumerate(loc):
            here = tuple(out)
            last = i == len(loc) - 1
            if isinstance(part, str):
                keys = self.keys.get(here)
                if keys is not None:  # a mapping
                    if part not in keys and not (last and missing):
                        continue
                elif here in self.lines:  # below a scalar or list: a union member name
                    continue
            out.append(part)
        return tuple(out)


# --- pydantic errors -> friendly messages ------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _resolve(model: Any, loc: Sequence[str | int]) -> tuple[Any, Any]:
    """(FieldInfo of the last field, type) a pydantic loc points at; (None, None) if unknown."""
    tp: Any = model
    info = None
    for part in loc:
        tp = _unwrap(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
            tagged = [
                m
                for m in members
                if isinstance(part, str)
                and "driver" in getattr(m, "model_fields", {})
                and part in typing.get_args(m.model_fields["driver"].annotation)
            ]
            if tagged:
                tp, info = tagged[0], None
                continue
            if len(members) != 1:
                return None, None
            tp = members[0]
        if typing.get_origin(tp) is list and isinstance(part, int):
            tp, info = typing.get_args(tp)[0], None
            continue
        fields = getattr(tp, "model_fields", None)
        if isinstance(part, str) and fields and part in fields:
            info = fields[part]
            tp = info.annotation
            continue
        return None, None
    return info, _unwrap(tp)


def _field_at(model: Any, loc: Sequence[str | int]) -> Any:
    return _resolve(model, loc)[0]


def _bounds(info: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if info is None:
        return out
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt"):
            v = getattr(m, k, None)
            if v is not None:
                out[k] = v
    return out


def _literal_values(info: Any) -> list[str]:
    if info is None:
        return []
    tp = _unwrap(info.annotation)
    members = [tp] if typing.get_origin(tp) is Literal else typing.get_args(tp)
    vals: list[str] = []
    for a in members:
        a = _unwrap(a)
        if typing.get_origin(a) is Literal:
            vals += [str(v) for v in typing.get_args(a)]
    return vals


_SECRET_KEYS = {"password", "passwd", "secret", "token", "api_key", "private_key_password"}

_SIMPLE = {
    "missing": "required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "none_required": "must be empty",
}


def _drivers() -> str:
    return " | ".join(specs())


def _other_driver_hint(key: str, model: Any) -> str | None:
    """The hint when `key`, unknown to `model` (some driver's device, group or tag model),
    is a key of another driver's model at the same level: the user mixed drivers up."""
    for mine in specs().values():
        level = next((i for i, m in enumerate(mine.models()) if m is model), None)
        if level is None:
            continue
        for other in specs().values():
            if other is mine or key not in other.models()[level].model_fields:
                continue
            if level == 0:
                return f"is {other.a_label} key, not one of {mine.a_label} device"
            if level == 1:
                return f"is {other.a_label} poll group key; not one of {mine.a_label} group"
            return (
                f"is {other.a_label} key; {mine.label} tags are addressed by {model.ADDRESSED_BY}"
            )
    return None


def _spec_at(raw_loc: Sequence[str | int]) -> DriverSpec | None:
    """The driver of the device a pydantic loc points into (`devices, 0, <driver>, ...`)."""
    if len(raw_loc) > 2 and raw_loc[0] == "devices" and isinstance(raw_loc[2], str):
        return specs().get(raw_loc[2])
    return None


def _subscribe_hint(raw_loc: Sequence[str | int]) -> str:
    able = [
        s.label
        for s in specs().values()
        if "subscribe" in _literal_values(s.models()[1].model_fields["mode"])
    ]
    mine = _spec_at(raw_loc)
    polled = f"{mine.label} groups are polled" if mine else "this group is polled"
    return f"subscribe is {' / '.join(able) or 'not'} only; {polled}"


def friendly(err: Mapping[str, Any], loc: Path_, model: type) -> list[tuple[Path_, str]]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    raw_loc = err["loc"]
    if kind == "edgeloop_checks":
        return [((*loc, *rel), msg) for rel, msg in ctx["problems"]]
    if kind == "string_type" and isinstance(err.get("input"), bool):
        return [(loc, "must be a string (YAML reads yes/no/on/off as true/false: quote it)")]
    if kind == "union_tag_not_found":
        return [((*loc, "driver"), f"required ({_drivers()})")]
    if kind in _SIMPLE:
        return [(loc, _SIMPLE[kind])]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        if key in _SECRET_KEYS:
            return [
                (
                    loc,
                    "secrets do not belong in YAML: use password_env: VAR_NAME or "
                    "password_file: /path",
                )
            ]
        _, tp = _resolve(model, raw_loc[:-1])
        other = _other_driver_hint(key, tp)
        if other is not None:
            return [(loc, other)]
        candidates = list(getattr(tp, "model_fields", {}))
        hint = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
        return [(loc, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))]
    if kind == "union_tag_invalid":
        got = ctx.get("tag", err.get("input"))
        return [((*loc, "driver"), f"must be one of {_drivers()} (got {got!r})")]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        b = _bounds(_field_at(model, raw_loc))
        lo = b.get("ge", b.get("gt"))
        hi = b.get("le", b.get("lt"))
        if "ge" in b and "le" in b:
            return [(loc, f"must be {num(lo)}..{num(hi)}")]  # type: ignore[arg-type]
        if kind == "greater_than":
            return [(loc, f"must be > {num(ctx['gt'])}")]
        if kind == "greater_than_equal":
            return [(loc, f"must be >= {num(ctx['ge'])}")]
        if kind == "less_than":
            return [(loc, f"must be < {num(ctx['lt'])}")]
        return [(loc, f"must be <= {num(ctx['le'])}")]
    if kind == "literal_error":
        vals = _literal_values(_field_at(model, raw_loc))
        if vals == ["poll"] and err.get("input") == "subscribe":
            return [(loc, _subscribe_hint(raw_loc))]
        if vals:
            return [(loc, f"must be one of {' | '.join(vals)} (got {err.get('input')!r})")]
        return [(loc, f"must be {ctx.get('expected')}")]
    if kind == "string_pattern_mismatch":
        key = next((p for p in reversed(loc) if isinstance(p, str)), "")
        _, owner = _resolve(model, raw_loc[:-1])
        wording: str | None = getattr(owner, "PATTERN_HINTS", {}).get(key)
        if wording:  # a driver's own wording for its patterns (NodeIds, endpoints)
            return [(loc, wording)]
        if key.endswith("_env"):  # most likely the secret itself: never echo it
            return [(loc, ENV_NAME_HINT)]
        return [(loc, NAME_HINT)]
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return [(loc, "must not be empty")]
        return [(loc, f"needs at least {ctx.get('min_length')} items")]
    if kind == "string_too_short":
        return [(loc, "must not be empty")]
    if kind == "value_error":
        return [(loc, str(ctx.get("error", err["msg"])))]
    return [(loc, err["msg"][0].lower() + err["msg"][1:])]
