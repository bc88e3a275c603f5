"""Base for every config model: frozen, unknown keys rejected, units in key names.

Each component defines the pydantic model of its own YAML section next to its code
(`agent/kernel/settings.py`, `agent/control/settings.py`, ...); `agent/config.py` assembles
them into the root model.  Every default lives in exactly one of these models.

Every number is finite: NaN and infinity are refused in every section (`allow_inf_nan=False`),
because they pass range checks (`nan > 0` is False, so `gt=0` alone does not catch NaN, and
`inf` passes every lower bound) and then break the component that uses them at run time.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Names of environment variables that hold secrets (`password_env`, `bearer_token_env`).  A
# value that is not a name is most likely the secret itself, pasted into the wrong field: the
# loader refuses it with a message that never shows the value.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME_HINT = "is not a valid environment variable name (value not shown)"
EnvName = Annotated[
    str,
    Field(
        pattern=ENV_NAME_PATTERN,
        description="Name of an environment variable (letters, digits, _; not a digit first).",
    ),
]


class StrictModel(BaseModel):
    """Frozen and strict about unknown keys, so a typo in YAML is an error, not a default;
    NaN and infinity are refused in every float field."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )
