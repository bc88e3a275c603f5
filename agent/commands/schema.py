"""`edgeloop schema`: the JSON Schema of the YAML file, for editors and CI.

The schema is generated from the same pydantic models the loader validates with, and is
committed as `config/edgeloop.schema.json` (`make schema`); a test keeps the two in step.
`--markdown` prints the field reference that `docs/configuration.md` embeds (also kept in
step by a test), so the docs cannot drift from the code either.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

HELP = "print the JSON Schema of the config file (--markdown: the field reference)"

SCHEMA_ID = "https://edgeloop.invalid/edgeloop.schema.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown", action="store_true", help="print the field reference as Markdown"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the whole file."""
    from agent.config import Config

    schema = Config.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edgeloop configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def render_json() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, __import__("types").UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp)


def _default(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        return "(section defaults)"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return "-"
    if isinstance(info.default, bool):
        return "true" if info.default else "false"
    return f"`{info.default}`"


def _range(info: Any) -> str:
    b: dict[str, Any] = {}
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt"):
            v = getattr(m, k, None)
            if v is not None:
                b[k] = v
    if "ge" in b and "le" in b:
        return f" Range {b['ge']}..{b['le']}."
    parts = [
        f"{'>=' if k == 'ge' else '>' if k == 'gt' else '<=' if k == 'le' else '<'} {v}"
        for k, v in b.items()
    ]
    return f" Range {', '.join(parts)}." if parts else ""


def markdown_reference() -> str:
    """Field tables of the root model and of each driver's device, poll group and tag."""
    from agent.config import Config
    from drivers.registry import specs

    models: list[tuple[str, Any]] = [("Top level", Config)]
    for spec in specs().values():  # every registered driver's models, in registry order
        device, group, tag = spec.models()
        models += [
            (f"{spec.label} device (`driver: {spec.name}`)", device),
            (f"{spec.label} poll group", group),
            (f"{spec.label} tag", tag),
        ]
    out: list[str] = []
    for title, model in models:
        out.append(f"### {title}\n")
        doc = (model.__doc__ or "").strip().splitlines()[0]
        out.append(f"{doc}\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, info in model.model_fields.items():
            tp = _type_name(info.annotation)
            if name in ("kernel", "control", "store", "publish", "http"):
                tp = "mapping"
            desc = (info.description or "").replace("|", "\\|") + _range(info)
            out.append(f"| `{name}` | {tp} | {_default(info)} | {desc.strip()} |")
        out.append("")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    print(markdown_reference() if args.markdown else render_json(), end="")
    return 0
