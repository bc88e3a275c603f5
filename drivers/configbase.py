"""Base for every config model: frozen, unknown keys rejected, units in key names.

Each component defines the pydantic model of its own YAML section next to its code
(`agent/kernel/settings.py`, `agent/control/settings.py`, ...) and each driver the model of
its own devices (`drivers/modbus_config.py`, ...); `agent/config.py` assembles them into the
root model.  Every default lives in exactly one of these models.  It lives in the driver
layer, the lowest one, so drivers own their config without importing the agent.

Every number is finite: NaN and infinity are refused in every section (`allow_inf_nan=False`),
because they pass range checks (`nan > 0` is False, so `gt=0` alone does not catch NaN, and
`inf` passes every lower bound) and then break the component that uses them at run time.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

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


def tagged_union_for_editors(description: str) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` of a field holding a tagged union (or a list of them).

    pydantic writes the union as `oneOf` + OpenAPI's `discriminator`, which JSON Schema
    validators (yaml-language-server in VS Code, check-jsonschema) ignore: an entry with one
    wrong key then fails every branch, and the editor reports "matches none of oneOf" or
    the other branches' complaints.  With one `if tag == X then X's model` per branch only
    the chosen model applies, so the error lands on the key that is wrong.  Validation by
    pydantic is unchanged; this edits the generated schema only.  `description` is the
    tag key's hover text.
    """

    def edit(schema: dict[str, Any]) -> None:
        node = schema.get("items", schema)
        disc = node.pop("discriminator")
        tag_of = {ref: tag for tag, ref in disc["mapping"].items()}
        branches = node.pop("oneOf")
        name = disc["propertyName"]
        node["type"] = "object"
        node["required"] = [name]
        node["properties"] = {name: {"enum": sorted(disc["mapping"]), "description": description}}
        node["allOf"] = [
            {
                "if": {"properties": {name: {"const": tag_of[b["$ref"]]}}, "required": [name]},
                "then": b,
            }
            for b in branches
        ]

    return edit


# --- secrets and certificate files --------------------------------------------------------
#
# The components read their secrets (passwords, tokens) and certificate files when they start;
# the loader reads the same files the same way (each section module's `check_files` hook), so
# `edgeloop check` refuses what start-up would refuse.  Secret values and the paths of secret
# files never appear in a message (a secret pasted into `password_file` is still a secret);
# certificate paths do.

YamlPath = tuple[str | int, ...]
MAX_SECRET_BYTES = 64 * 1024
MAX_CERT_BYTES = 1024 * 1024


def render_path(path: YamlPath) -> str:
    """("publish", "mqtt", "tls", "ca_file") -> "publish.mqtt.tls.ca_file"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class SecretError(ValueError):
    """A configured secret or certificate file cannot be used.  `path` is the YAML path of
    the key at fault, `detail` says why without showing a secret."""

    def __init__(self, path: YamlPath, detail: str) -> None:
        self.path = tuple(path)
        self.detail = detail
        super().__init__(f"{render_path(self.path)}: {detail}")


def _unset_vars(raw: str) -> list[str]:
    return [v for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", raw) if v not in os.environ]


def _read_limited(file: Path, limit: int) -> bytes:
    with file.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
    return data


def read_secret_file(path: YamlPath, file: str | os.PathLike[str], *, expand: bool = False) -> str:
    """The text of a password or token file (`expand`: $VARS in the path, as systemd's
    $CREDENTIALS_DIRECTORY).  `SecretError` without the path or the content otherwise."""
    raw = str(file)
    target = Path(os.path.expandvars(raw) if expand else raw)
    try:
        data = _read_limited(target, MAX_SECRET_BYTES)
    except OSError as exc:
        unset = _unset_vars(raw) if expand else []
        why = f" (${unset[0]} is not set)" if unset else ""
        raise SecretError(path, f"cannot read the file: {exc.strerror}{why}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(path, "the file is not UTF-8 text") from None


def read_cert_file(path: YamlPath, file: str | os.PathLike[str]) -> bytes:
    """The bytes of a certificate or key file; `SecretError` naming the file otherwise."""
    try:
        return _read_limited(Path(file), MAX_CERT_BYTES)
    except OSError as exc:
        raise SecretError(path, f"cannot read {file}: {exc.strerror}") from None


def env_secret(path: YamlPath, name: str) -> str:
    """The value of environment variable `name`; `SecretError` when it is not set."""
    value = os.environ.get(name)
    if value is None:
        raise SecretError(path, f"environment variable {name} is not set")
    return value


def secret_from(
    where: YamlPath,
    key: str,
    *,
    env: str | None,
    file: str | os.PathLike[str] | None,
    expand: bool = False,
    nonempty: bool = False,
) -> str | None:
    """The secret configured as `<key>_env` (environment variable `env`) or `<key>_file`
    (file `file`) under YAML path `where`, or None when neither is set; `SecretError` at the
    key at fault when it cannot be read.  A password keeps its spaces (only a trailing
    newline dropped) and may be empty; a `nonempty` token is stripped and refused empty."""
    if env:
        at = (*where, f"{key}_env")
        if not nonempty:
            return env_secret(at, env)
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(at, f"environment variable {env} is unset or empty")
        return value
    if file:
        at = (*where, f"{key}_file")
        text = read_secret_file(at, file, expand=expand)
        if not nonempty:
            return text.rstrip("\r\n")
        if not text.strip():
            raise SecretError(at, "the file is empty")
        return text.strip()
    return None


def anchor_path(value: str | os.PathLike[str] | None, base: Path | None) -> str | None:
    """A relative file path in the config is relative to the config file's directory (as
    the control models are), so `check` from any directory and the service agree."""
    if value is None or base is None:
        return None if value is None else str(value)
    raw = str(value)
    if Path(os.path.expandvars(raw)).is_absolute():
        return raw
    return str(base / raw)
