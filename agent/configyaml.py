"""YAML for the config file, with limits: bounded size, nesting and alias expansion.

A config file is small, flat-ish and written by hand, so anything far outside that shape is
refused before it costs time, memory or the stack, always as one `YamlProblem` (line and
message) that the loader turns into a `file:line: message` issue:

- size: at most `MAX_CONFIG_BYTES` (1 MiB), checked before parsing;
- nesting: at most `MAX_DEPTH` levels, checked while composing, long before Python's stack
  would run out (PyYAML's composer and constructor recurse once per level);
- values: at most `MAX_NODES` nodes (scalars, lists, mappings) in all; 1 MiB of real
  config (8,800-10,600 six-field Modbus tags) is about 130,000, while 1 MiB of
  `[1,1,1,...]` would be 500,000 and cost seconds and hundreds of MB in the walks and
  the validation that follow;
- aliases: the nodes that aliases add (each use of `*a` counts the whole anchored subtree,
  aliases inside it included) may total at most `MAX_ALIAS_NODES`, so a "billion laughs"
  file is refused after a few lines instead of expanding to 9^9 strings in the walks that
  follow composition; an alias inside the node it refers to (a recursive structure) is
  refused too;
- characters YAML cannot hold (NUL, other control characters) and values Python cannot
  construct (a 5,000-digit integer, the 30th of February) are one line, not a traceback.

Merge keys (`<<: *template`) keep working: they are what aliases are for in a config.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import Resolver
from yaml.scanner import Scanner

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "YamlProblem",
    "describe_size",
    "load_yaml",
]

MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_NODES = 100_000
MAX_NODES = 250_000

MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlProblem(Exception):
    """The text is not YAML the loader accepts; `line` is 1-based, `message` for humans
    (it starts with `YAML:`, or `YAML syntax:` for what the scanner and parser find)."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"{line}: {message}")


def describe_size(n: int) -> str:
    """1048576 -> '1 MiB', 65536 -> '64 KiB', 1000 -> '1000 bytes'."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class _LimitedComposer(Composer):
    """PyYAML's composer, counting nesting depth and the nodes aliases add as it goes."""

    def __init__(self, max_depth: int, max_alias_nodes: int, max_nodes: int) -> None:
        super().__init__()
        self._max_depth = max_depth
        self._max_alias_nodes = max_alias_nodes
        self._max_nodes = max_nodes
        self._depth = 0
        self._alias_nodes = 0
        self._nodes = 0

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > self._max_nodes:
            raise YamlProblem(
                mark.line + 1,
                f"YAML: more than {self._max_nodes} values (keys, items, lists and mappings): "
                "far beyond any config, refused",
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                size = getattr(target, "_edgeloop_size", None)
                if size is None:  # the anchored node is still open: it contains this alias
                    raise YamlProblem(
                        event.start_mark.line + 1,
                        f"YAML: alias *{event.anchor} refers to a mapping or list that contains it "
                        "(a recursive structure)",
                    )
                self._alias_nodes += size
                if self._alias_nodes > self._max_alias_nodes:
                    raise YamlProblem(
                        event.start_mark.line + 1,
                        f"YAML: aliases expand to more than {self._max_alias_nodes} nodes "
                        f"(at *{event.anchor}): refused",
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= self._max_depth:
            mark = self.peek_event().start_mark
            raise YamlProblem(mark.line + 1, f"YAML: nested deeper than {self._max_depth} levels")
        self._count(1, self.peek_event().start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        # children are complete (their size is known) or aliases of complete nodes
        if isinstance(node, ScalarNode):
            size = 1
        elif isinstance(node, SequenceNode):
            size = 1 + sum(child._edgeloop_size for child in node.value)  # type: ignore[attr-defined]
        else:
            size = 1 + sum(
                k._edgeloop_size + v._edgeloop_size  # type: ignore[attr-defined]
                for k, v in node.value
            )
        node._edgeloop_size = size  # type: ignore[attr-defined]
        return node


_KINDS = {"int": "integer", "float": "number", "timestamp": "date", "binary": "binary value"}


class _FriendlyConstructor(SafeConstructor):
    """SafeConstructor whose value errors (int digit limit, bad dates) carry the line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            kind = _KINDS.get(str(node.tag).rsplit(":", 1)[-1], "value")
            hint = " (quote it if it is text)" if kind == "date" else ""
            reason = str(exc).split(";", 1)[0].strip() or type(exc).__name__
            reason = reason[:1].lower() + reason[1:]
            raise YamlProblem(
                node.start_mark.line + 1, f"YAML: cannot read this {kind}{hint}: {reason}"
            ) from None


class _Loader(Reader, Scanner, Parser, _LimitedComposer, _FriendlyConstructor, Resolver):
    def __init__(self, text: str, max_depth: int, max_alias_nodes: int, max_nodes: int) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _LimitedComposer.__init__(self, max_depth, max_alias_nodes, max_nodes)
        _FriendlyConstructor.__init__(self)
        Resolver.__init__(self)


def _reader_problem(text: str, exc: ReaderError) -> YamlProblem:
    pos = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    message = f"YAML: character #x{exc.character:04x} is not allowed (column {column})"
    return YamlProblem(line, message)


def load_yaml(
    text: str,
    walk: Any = None,
    *,
    max_depth: int = MAX_DEPTH,
    max_alias_nodes: int = MAX_ALIAS_NODES,
    max_nodes: int = MAX_NODES,
) -> tuple[Node | None, Any]:
    """(root node, Python data) of one YAML document; `YamlProblem` on anything refused.

    `walk(node)`, when given, sees the composed node tree before construction (PyYAML's
    constructor rewrites merge keys in place), e.g. to record line numbers.
    """
    try:
        loader = _Loader(text, max_depth, max_alias_nodes, max_nodes)  # checks every character
    except ReaderError as exc:
        raise _reader_problem(text, exc) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if walk is not None:
            walk(node)
        return node, loader.construct_document(node)
    except YamlProblem:
        raise
    except ReaderError as exc:
        raise _reader_problem(text, exc) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}, {problem}"
        kind = "YAML syntax" if not isinstance(exc, (ComposerError, ConstructorError)) else "YAML"
        raise YamlProblem(mark.line + 1 if mark else 1, f"{kind}: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"YAML: {exc}") from None
    except RecursionError:
        raise YamlProblem(1, "YAML: nested too deeply (merge keys or aliases)") from None
    finally:
        loader.dispose()
