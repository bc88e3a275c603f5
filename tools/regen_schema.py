"""Regenerate config/edgeloop.schema.json and the reference in docs/configuration.md.

Run after changing any config model (`make schema`); tests fail while either is stale.
"""

from __future__ import annotations

from pathlib import Path

from agent.commands.schema import markdown_reference, render_json

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN GENERATED REFERENCE (edgeloop schema --markdown) -->"
END = "<!-- END GENERATED REFERENCE -->"


def main() -> None:
    schema_path = ROOT / "config" / "edgeloop.schema.json"
    schema_path.write_text(render_json())
    doc_path = ROOT / "docs" / "configuration.md"
    doc = doc_path.read_text()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc_path.write_text(f"{head}{BEGIN}\n{markdown_reference().strip()}\n{END}{tail}")


if __name__ == "__main__":
    main()
