"""The one list of drivers: a driver is registered here (built in) or by an installed
package's entry point in group `edgeloop.drivers`, and nowhere else.

`agent/config.py` builds the `devices:` union, the "did you mean"/other-driver hints and so
the JSON Schema from `specs()`; `agent/tags.py` builds points through each device model's
`point` and the driver through `create`.  A driver's config module (light: pydantic only)
defines its `SPEC`; its I/O module (protocol libraries) is imported only when a device of
that driver is built.

A third-party package registers a driver with, in its pyproject.toml::

    [project.entry-points."edgeloop.drivers"]
    mydriver = "mypackage.mydriver_config:SPEC"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, get_args

from drivers.base import ConnectError, Driver, GroupSpec
from drivers.config_common import DeviceBase

# name -> "module:attribute" of its DriverSpec; the order is the order users read in hints.
BUILTIN: dict[str, str] = {
    "modbus": "drivers.modbus_config:SPEC",
    "opcua": "drivers.opcua_config:SPEC",
    "csv": "drivers.csv_config:SPEC",
}
ENTRY_POINT_GROUP = "edgeloop.drivers"


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """One driver as the config loader and the compiler see it.

    `device` is the device model (its `driver` key a `Literal[name]`; its groups and tags
    the driver's own models); `factory` is "module:function" of
    `create(device, groups) -> Driver`, imported on first use; `label` names the driver
    in messages ("OPC UA") and `article` goes before it ("an").
    """

    name: str
    device: type[DeviceBase]
    factory: str
    label: str
    article: str = "a"

    @property
    def a_label(self) -> str:
        return f"{self.article} {self.label}"

    def models(self) -> tuple[type[DeviceBase], type[Any], type[Any]]:
        """(device, poll group, tag) models, read from the device's annotations."""
        group = _item_type(self.device.model_fields["poll_groups"].annotation)
        tag = _item_type(group.model_fields["tags"].annotation)
        return self.device, group, tag

    def create(self, device: DeviceBase, groups: Sequence[GroupSpec]) -> Driver:
        module_name, _, attr = self.factory.partition(":")
        factory: Callable[[Any, Sequence[GroupSpec]], Driver] = getattr(
            importlib.import_module(module_name), attr
        )
        return factory(device, groups)


def _item_type(annotation: Any) -> Any:
    args = get_args(annotation)
    return args[0] if args else annotation


def _load(target: str) -> DriverSpec:
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{target} is not a drivers.registry.DriverSpec")
    literal = get_args(spec.device.model_fields["driver"].annotation)
    if literal != (spec.name,):
        raise TypeError(f"{target}: the device model's driver key must be Literal[{spec.name!r}]")
    return spec


@cache
def specs() -> dict[str, DriverSpec]:
    """Every driver by name: the built-in ones, then those installed packages register."""
    out = {name: _load(target) for name, target in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in out:
            out[ep.name] = _load(ep.value)
    return out


def spec_of(device: DeviceBase) -> DriverSpec:
    return specs()[device.driver]


def create_driver(device: DeviceBase, groups: Sequence[GroupSpec]) -> Driver:
    """Build (not connect) the driver of `device` for its `groups`."""
    spec = specs().get(getattr(device, "driver", ""))
    if spec is None:
        raise ConnectError(f"unknown driver {device.driver!r}", device=device.name)
    return spec.create(device, groups)
