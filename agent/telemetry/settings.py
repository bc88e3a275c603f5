"""YAML section model for this component (placeholder; the component's owner fills it in)."""

from __future__ import annotations

from agent.configbase import StrictModel


class HttpConfig(StrictModel):
    """Settings of this component; every default lives here."""
