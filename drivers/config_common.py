"""What every driver's config models share: the tag, poll group and device bases.

A driver owns the models of its devices (`drivers/<driver>_config.py`), derived from these
bases; `drivers/registry.py` lists the drivers and `agent/config.py` builds the `devices:`
union from that list.  The bases carry what the rest of edgeloop reads from any device
(names, engineering bounds, poll intervals, backoff) and the hooks the compiler and loader
call instead of branching per driver: `DeviceBase.point` (one tag -> `Point`),
`GroupBase.options` (driver-specific group settings), `DeviceBase.file_problems` (files the
driver reads at connect, read now), `DeviceBase.FILE_KEYS` (paths relative to the config
file), `DeviceBase.check_together` (checks across the devices of one driver),
`DeviceBase.exclusive_links` (links one master holds alone: a reload hands them over
break-before-make), `DeviceBase.notes` (legal but likely mistaken values `check` points out)
and `DeviceBase.for_command` (a typed device for `scan`/`probe`).
Messages a driver words itself: `ADDRESSED_BY` on its tag ("tags are addressed by node")
and `PATTERN_HINTS` (key -> what a value must look like) on any of its models.

Problems found by a model validator are raised as one `problems(...)` error carrying
(relative path, message) pairs, so the loader reports each at its own file:line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, cast, get_args

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from drivers.base import Point
from drivers.configbase import StrictModel

Path_ = tuple[str | int, ...]
Problems = list[tuple[Path_, str]]

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
NAME_HINT = "must start with a letter or _ and hold only letters, digits, _ . - (max 64)"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Identifier; " + NAME_HINT)]

TagType = Literal[
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]


def problems(items: Iterable[tuple[Path_, str]]) -> PydanticCustomError:
    """One pydantic error carrying several (relative path, message) problems in its ctx."""
    return PydanticCustomError("edgeloop_checks", "{problems}", {"problems": tuple(items)})


def raise_if(found: Problems) -> None:
    """Raise the problems a model validator found, if any."""
    if found:
        raise problems(found)


def num(x: float) -> str:
    """A number as a user wrote it: 3 not 3.0."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bounds_refusal(value: float, lo: float | None, hi: float | None) -> str | None:
    """Why a write of `value` breaks a tag's engineering `min`/`max` (None or infinite: that
    side is open), or None when it keeps them.  The one check the acquirer, the write gate
    and a driver's write encoder each make, so all refuse the same values in the same words.
    """
    if lo is not None and value < lo:
        side = "below min"
    elif hi is not None and value > hi:
        side = "above max"
    else:
        return None
    return f"{value:g} is outside {_bound(lo)}..{_bound(hi)} ({side})"


def _bound(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:g}"


# --- tags --------------------------------------------------------------------------------


class TagBase(StrictModel):
    """Keys every tag has, whatever addresses it.  `ADDRESSED_BY` completes the hint given
    when a tag holds another driver's key ("OPC UA tags are addressed by node")."""

    ADDRESSED_BY: ClassVar[str] = ""

    name: Name
    unit: str = Field("", description="Engineering unit shown to users, e.g. degC, %, bar.")
    scale: float = Field(1.0, description="engineering = raw * scale + offset.")
    offset: float = Field(0.0, description="engineering = raw * scale + offset.")
    writable: bool = Field(
        False, description="Allow writes (control outputs, setpoints); off by default."
    )
    min: float | None = Field(
        None, description="Lowest valid engineering value; writes below it are refused."
    )
    max: float | None = Field(
        None, description="Highest valid engineering value; writes above it are refused."
    )
    max_rate_per_s: float | None = Field(
        None, gt=0, description="Largest change per second a controller may command."
    )
    description: str = Field(
        "", description="Free text for people (e.g. the PLC comment); no effect on reading."
    )

    @property
    def dtype(self) -> str:
        """The effective value type (`TagType`), as the tag table stores it."""
        return str(getattr(self, "type", None) or "float64")

    def _common_problems(self) -> Problems:
        out: Problems = []
        if self.min is not None and self.max is not None and self.min > self.max:
            out.append((("min",), f"must not exceed max ({num(self.min)} > {num(self.max)})"))
        if self.scale == 0 or not math.isfinite(self.scale):
            out.append((("scale",), "must be a finite number other than 0"))
        if not math.isfinite(self.offset):
            out.append((("offset",), "must be a finite number"))
        return out

    def engineering(self) -> dict[str, Any]:
        """The `Point` fields every driver fills the same way."""
        return {
            "name": self.name,
            "unit": self.unit,
            "scale": self.scale,
            "offset": self.offset,
            "writable": self.writable,
            "min": self.min,
            "max": self.max,
            "max_rate_per_s": self.max_rate_per_s,
        }


# --- poll groups -------------------------------------------------------------------------


class GroupBase(StrictModel):
    """Keys every poll group has.  A driver's group adds `mode` and `tags` (its tag model)."""

    if TYPE_CHECKING:
        mode: str
        tags: Sequence[TagBase]

    name: Name
    interval_ms: int = Field(
        ge=1, le=86_400_000, description="Poll period of the group in ms; all its tags share it."
    )
    stale_after_ms: int | None = Field(
        None, ge=1, description="Quality turns stale after this age; default 3 x interval_ms."
    )

    @property
    def stale_ms(self) -> int:
        return self.stale_after_ms or 3 * self.interval_ms

    def options(self) -> dict[str, Any]:
        """`GroupSpec.options`: the driver-specific settings its driver reads per group."""
        return {"stale_after_ms": self.stale_ms}


# --- devices -----------------------------------------------------------------------------


class DeviceBase(StrictModel):
    """Keys every device has.  A driver's device adds `driver: Literal["<name>"]`,
    `timeout_s` (the acquirer's guard around each driver call) and `poll_groups`."""

    if TYPE_CHECKING:
        driver: str
        timeout_s: float
        poll_groups: Sequence[GroupBase]

    # Relative paths in these keys are relative to the config file's directory.
    FILE_KEYS: ClassVar[tuple[str, ...]] = ()

    name: Name
    enabled: bool = Field(True, description="false keeps the device configured but idle.")
    backoff_initial_s: float = Field(
        0.5, gt=0, le=3600, description="First reconnect delay in s; doubles up to backoff_max_s."
    )
    backoff_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest reconnect delay in s (jitter added)."
    )

    @model_validator(mode="before")
    @classmethod
    def _timeout_from_fastest_group(cls, data: Any) -> Any:
        """An omitted `timeout_s` is the driver's default, or 80 % of the fastest polled group's
        interval where the default would not fit in it: the defaults never contradict each
        other, while a timeout the user set too long for a group is still refused."""
        field = cls.model_fields.get("timeout_s")
        if not isinstance(data, dict) or "timeout_s" in data or field is None:
            return data
        groups = data.get("poll_groups")
        intervals = [
            g.get("interval_ms")
            for g in (groups if isinstance(groups, list) else [])
            if isinstance(g, dict) and g.get("mode", "poll") == "poll"
        ]
        ms = [v for v in intervals if type(v) in (int, float) and v > 0]
        if not ms:
            return data
        default = float(field.default)
        if default * 1000 <= min(ms):
            return data
        return {**data, "timeout_s": round(0.8 * min(ms) / 1000, 3)}

    def _device_problems(self) -> Problems:
        out: Problems = []
        if self.backoff_initial_s > self.backoff_max_s:
            out.append(
                (
                    ("backoff_initial_s",),
                    f"must not exceed backoff_max_s ({num(self.backoff_initial_s)} > "
                    f"{num(self.backoff_max_s)})",
                )
            )
        seen: dict[str, int] = {}
        for i, g in enumerate(self.poll_groups):
            if g.name in seen:
                out.append(
                    (
                        ("poll_groups", i, "name"),
                        f"duplicate poll group name {g.name!r} (also poll_groups[{seen[g.name]}])",
                    )
                )
            else:
                seen[g.name] = i
            if g.mode == "poll" and self.timeout_s * 1000 > g.interval_ms:
                out.append(
                    (
                        ("poll_groups", i, "interval_ms"),
                        f"{g.interval_ms} ms is shorter than the device timeout_s "
                        f"({num(self.timeout_s)} s): lower timeout_s or raise interval_ms",
                    )
                )
        return out

    @classmethod
    def for_command(cls, **keys: Any) -> Self:
        """The device of a one-off command (`scan`, `probe`): no poll groups, the given keys
        (already checked by the command) and every other key its default, so the driver
        gets its own typed model from the command line as from YAML."""
        driver = get_args(cls.model_fields["driver"].annotation)[0]
        return cast(Self, cls.model_construct(driver=driver, poll_groups=[], **keys))

    def point(self, tag: Any, index: int) -> Point:
        """The `Point` of one of this device's tags at tag-table slot `index`."""
        raise NotImplementedError(f"{type(self).__name__}.point")

    def file_problems(self) -> Problems:
        """Files the driver reads when it connects (secrets, certificates, data), read now so
        `edgeloop check` refuses what start-up would; paths relative to the device."""
        return []

    def notes(self) -> Problems:
        """Values that are legal but most likely not what was meant (`edgeloop check` prints
        each as a note and still passes); paths relative to the device."""
        return []

    def exclusive_links(self) -> frozenset[str]:
        """Links this device holds alone while connected (a serial line: two masters on one
        RS-485 bus collide), so a reload stops the old device before the new one connects
        instead of running both for a moment.  Empty: the handover may overlap."""
        return frozenset()

    @classmethod
    def check_together(cls, devices: Sequence[tuple[int, DeviceBase]]) -> Problems:
        """Checks across this driver's enabled devices, `(index in devices:, device)`; paths
        are relative to the file's root (e.g. two devices on one serial line)."""
        return []
