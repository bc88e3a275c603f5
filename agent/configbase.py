"""Base for every config model: frozen, unknown keys rejected, units in key names.

Each component defines the pydantic model of its own YAML section next to its code
(`agent/kernel/settings.py`, `agent/control/settings.py`, ...); `agent/config.py` assembles
them into the root model.  Every default lives in exactly one of these models.

Every number is finite: NaN and infinity are refused in every section (`allow_inf_nan=False`),
because they pass range checks (`nan > 0` is False, so `gt=0` alone does not catch NaN, and
`inf` passes every lower bound) and then break the component that uses them at run time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen and strict about unknown keys, so a typo in YAML is an error, not a default;
    NaN and infinity are refused in every float field."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )
