"""Base for every config model: frozen, unknown keys rejected, units in key names.

Each component defines the pydantic model of its own YAML section next to its code
(`agent/kernel/settings.py`, `agent/control/settings.py`, ...); `agent/config.py` assembles
them into the root model.  Every default lives in exactly one of these models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen and strict about unknown keys, so a typo in YAML is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
