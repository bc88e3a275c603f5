"""The root YAML model and its loader: one typed, frozen `Config`, or every problem at once.

`load_config(path)` parses the file with PyYAML keeping node positions, validates it with
pydantic, runs the cross-checks and either returns a `Config` or raises `ConfigError`, whose
`str()` is one line per problem in the form editors and humans read::

    plant.yaml:23: devices[0].poll_groups[1].tags[4].address: must be 0..65535

How problems are collected, so a user fixes a file in one round:
- field problems (types, ranges, unknown keys, missing keys) come from pydantic in one pass;
- checks that concern one tag or one device (type/table, bit, string length, min > max,
  overlapping registers, duplicate group names, timeout vs interval, security) run as model
  validators, so they are reported together with the field problems of *other* devices/tags;
- checks over the whole file (duplicate device and tag names, references from other
  sections to tags) need a structurally valid file and run after it validated.

Cross-check hook for the other sections
---------------------------------------
Each section module (`agent.kernel.settings`, `agent.control.settings`,
`agent.store.settings`, `agent.publish.settings`, `agent.telemetry.settings`) may define::

    def cross_check(cfg: Config, tag_index: dict[str, TagRef]) -> list[tuple[path, str]]

where `path` is a tuple of YAML keys and list indices (`("control", "loops", 0, "output")`)
or the same written as a string (`"control.loops[0].output"`) and the second item is the
message.  `TagRef` tells the name, device, group, driver type, unit, writable, min and max of
every configured tag.  The loader maps each path to its line and reports it like any other
problem.  Hooks are pure: no I/O, no exceptions for bad input (return the problem instead).

A section module may also define `check_files(cfg) -> list[(path, message)]`: the secrets
and certificate files its component reads at start, read now the same way (I/O), so `check`
refuses what start-up would.  Devices do the same through their driver's model
(`DeviceBase.file_problems`: OPC UA certificates and passwords, a CSV replay's file).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from agent.config_messages import (
    ConfigError,
    Issue,
    Positions,
    friendly,
    line_at,
    parse_path,
    render,
)
from agent.configyaml import MAX_CONFIG_BYTES, YamlProblem, describe_size, load_yaml
from agent.control.settings import ControlConfig
from agent.kernel.settings import KernelConfig
from agent.publish.settings import PublishConfig
from agent.store.settings import StoreConfig
from agent.telemetry.settings import HttpConfig
from drivers.config_common import DeviceBase, Name, Path_
from drivers.configbase import StrictModel, anchor_path, tagged_union_for_editors
from drivers.registry import specs

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_CONFIG_BYTES",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "Issue",
    "Source",
    "TagRef",
    "default_config_path",
    "load_config",
    "parse_config",
    "read_config_bytes",
    "tag_index",
]

# One entry of `devices:`: the device model of the driver its `driver:` key names, for every
# driver in `drivers.registry` (built in or installed).
if TYPE_CHECKING:
    DeviceConfig = DeviceBase
else:
    DeviceConfig = Annotated[
        Union[tuple(s.device for s in specs().values())],  # noqa: UP007
        Field(discriminator="driver"),
    ]


# --- the root ----------------------------------------------------------------------------


# --- the root ----------------------------------------------------------------------------


class LineMap(Mapping[Path_, int]):
    """The line of every YAML path, kept for the life of a Config as a tree of small dicts
    (a tag's keys share one): a flat dict with one tuple key per path held ~1.2 KB per tag,
    as much as the validated models themselves."""

    __slots__ = ("_len", "_root")

    def __init__(self, lines: Mapping[Path_, int]) -> None:
        # a node is [line or None, {part: node}]; a leaf is its line alone
        root: list[Any] = [None, {}]
        for path, line in lines.items():
            node = root
            for part in path:
                kids = node[1]
                child = kids.get(part)
                if not isinstance(child, list):
                    child = kids[part] = [child, {}]
                node = child
            node[0] = line
        self._root = self._pack(root)
        self._len = len(lines)

    @classmethod
    def _pack(cls, node: list[Any]) -> Any:
        line, kids = node
        if not kids:
            return line
        return (line, {k: cls._pack(v) for k, v in kids.items()})

    def _find(self, path: Path_) -> Any:
        node = self._root
        for part in path:
            if not isinstance(node, tuple):
                return None
            node = node[1].get(part)
        return node[0] if isinstance(node, tuple) else node

    def __getitem__(self, path: Path_) -> int:
        line = self._find(tuple(path))
        if line is None:
            raise KeyError(path)
        return int(line)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and self._find(path) is not None

    def __iter__(self) -> Iterator[Path_]:
        def walk(node: Any, path: Path_) -> Iterator[Path_]:
            line, kids = node if isinstance(node, tuple) else (node, {})
            if line is not None:
                yield path
            for k, v in kids.items():
                yield from walk(v, (*path, k))

        return walk(self._root, ())

    def __len__(self) -> int:
        return self._len


@dataclass(frozen=True, slots=True)
class Source:
    """Where a Config came from: the file name and the line of every YAML path."""

    file: str
    lines: Mapping[Path_, int]

    def line(self, path: Sequence[str | int]) -> int:
        return line_at(self.lines, path)


class Config(StrictModel):
    """The whole edgeloop YAML file."""

    _source: Source | None = PrivateAttr(None)

    template: bool = Field(
        False,
        description="true only in the template install.sh puts in /etc: `check` (and so the "
        "service) refuses the file until it has been edited and this line deleted.",
    )
    site: Name = Field("edgeloop", description="Site name; prefixes MQTT topics and exports.")
    devices: list[DeviceConfig] = Field(
        min_length=1,
        description="PLCs and servers to read, one entry per connection.",
        json_schema_extra=tagged_union_for_editors("Protocol of the device."),
    )
    kernel: KernelConfig = Field(
        default_factory=KernelConfig, description="Signal cleaning and anomaly kernel."
    )
    control: ControlConfig = Field(
        default_factory=ControlConfig, description="Closed-loop control loops."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Local SQLite history.")
    # An omitted `publish:` section means no northbound (not a broker on localhost and a
    # growing outbox); writing the section, even `publish: {}`, turns it on.
    publish: PublishConfig = Field(
        default_factory=lambda: PublishConfig(enabled=False),
        description="MQTT northbound with durable outbox; off when the section is omitted.",
    )
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="HTTP /metrics, /healthz, /readyz."
    )

    @field_validator("template")
    @classmethod
    def _not_the_template(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "this is the unedited template: point a device at your PLC, enable it, "
                "then delete this line (edgeloop browse / scan find tags)"
            )
        return v

    @property
    def source(self) -> Source | None:
        """File and line numbers, so later stages (compile) can report file:line too."""
        return self._source

    @property
    def config_dir(self) -> Path | None:
        """Directory of the YAML file: relative paths in it (models, certificates) start here."""
        if self._source is None or self._source.file.startswith("<"):
            return None
        return Path(self._source.file).resolve().parent


SECTION_MODULES = {
    "kernel": "agent.kernel.settings",
    "control": "agent.control.settings",
    "store": "agent.store.settings",
    "publish": "agent.publish.settings",
    "http": "agent.telemetry.settings",
}


@dataclass(frozen=True, slots=True)
class TagRef:
    """What other sections may check about a tag they reference."""

    name: str
    device: str
    group: str
    driver: str
    type: str
    unit: str
    writable: bool
    min: float | None
    max: float | None
    path: Path_


def tag_index(cfg: Config) -> dict[str, TagRef]:
    """Every tag by name (first occurrence wins; duplicates are reported separately)."""
    out: dict[str, TagRef] = {}
    for di, d in enumerate(cfg.devices):
        for gi, g in enumerate(d.poll_groups):
            for ti, t in enumerate(g.tags):
                if t.name in out:
                    continue
                out[t.name] = TagRef(
                    name=t.name,
                    device=d.name,
                    group=g.name,
                    driver=d.driver,
                    type=t.dtype,
                    unit=t.unit,
                    writable=t.writable,
                    min=t.min,
                    max=t.max,
                    path=("devices", di, "poll_groups", gi, "tags", ti),
                )
    return out


def _anchored(cfg: Config) -> Config:
    """`cfg` with the relative paths of secret and certificate files made relative to the
    config file's directory, so `check` (from any directory) and the service (in its state
    directory) read the same files."""
    base = cfg.config_dir
    if base is None:
        return cfg

    def files(model: Any, keys: Sequence[str]) -> Any:
        update = {k: anchor_path(getattr(model, k), base) for k in keys}
        update = {k: v for k, v in update.items() if v != getattr(model, k)}
        return model.model_copy(update=update) if update else model

    devices = [files(d, d.FILE_KEYS) for d in cfg.devices]
    mqtt = files(cfg.publish.mqtt, ("password_file",))
    if mqtt.tls is not None:
        mqtt = mqtt.model_copy(
            update={"tls": files(mqtt.tls, ("ca_file", "cert_file", "key_file"))}
        )
    http = cfg.http
    if http.bearer_token_file is not None:
        anchored = anchor_path(http.bearer_token_file, base)
        if anchored != str(http.bearer_token_file):
            http = http.model_copy(update={"bearer_token_file": Path(str(anchored))})
    out = cfg.model_copy(
        update={
            "devices": devices,
            "publish": cfg.publish.model_copy(update={"mqtt": mqtt}),
            "http": http,
        }
    )
    out._source = cfg._source
    return out


def _file_checks(cfg: Config) -> list[tuple[Path_, str]]:
    """Secrets and certificate files the components read at start, read now (I/O, unlike the
    cross-checks): each enabled device's, and each section module's `check_files`."""
    out: list[tuple[Path_, str]] = []
    for di, d in enumerate(cfg.devices):
        if d.enabled:
            out += [(("devices", di, *path), msg) for path, msg in d.file_problems()]
    for section, module_name in SECTION_MODULES.items():
        hook = getattr(importlib.import_module(module_name), "check_files", None)
        if hook is None:
            continue
        for path, message in hook(cfg) or ():
            p = parse_path(path) if isinstance(path, str) else tuple(path)
            if not p or p[0] != section:
                p = (section, *p)
            out.append((p, message))
    return out


def _global_checks(cfg: Config) -> list[tuple[Path_, str]]:
    out: list[tuple[Path_, str]] = []
    devs: dict[str, int] = {}
    for di, d in enumerate(cfg.devices):
        if d.name in devs:
            out.append(
                (
                    ("devices", di, "name"),
                    f"duplicate device name {d.name!r} (also devices[{devs[d.name]}])",
                )
            )
        else:
            devs[d.name] = di
    for spec in specs().values():  # checks across one driver's devices (a shared serial line)
        mine = [(di, d) for di, d in enumerate(cfg.devices) if d.driver == spec.name and d.enabled]
        if mine:
            out += spec.device.check_together(mine)
    index = tag_index(cfg)
    for di, d in enumerate(cfg.devices):
        for gi, g in enumerate(d.poll_groups):
            for ti, t in enumerate(g.tags):
                first = index[t.name]
                here: Path_ = ("devices", di, "poll_groups", gi, "tags", ti)
                if first.path != here:
                    out.append(
                        (
                            (*here, "name"),
                            f"duplicate tag name {t.name!r} (also {render(first.path)})",
                        )
                    )
    for section, module_name in SECTION_MODULES.items():
        hook = getattr(importlib.import_module(module_name), "cross_check", None)
        if hook is None:
            continue
        for path, message in hook(cfg, index) or ():
            p = parse_path(path) if isinstance(path, str) else tuple(path)
            if not p or p[0] != section:
                p = (section, *p)
            out.append((p, message))
    return out


# --- errors ------------------------------------------------------------------------------


# --- loading -----------------------------------------------------------------------------


# --- loading -----------------------------------------------------------------------------


def parse_config(
    text: str | bytes,
    filename: str = "<config>",
    *,
    max_bytes: int = MAX_CONFIG_BYTES,
    check_files: bool = True,
) -> Config:
    """Validate YAML text (or the bytes of a file); raises `ConfigError` with every problem
    found.  Text beyond `max_bytes`, alias bombs, deep nesting and the like are refused
    before they cost time or memory (`agent.configyaml`).

    `check_files` (default) also reads the secrets and certificate files the components
    read at start (environment variables set, files readable and parseable), so `check`
    refuses what start-up would; relative paths of those files are relative to the config
    file.  Turn it off only to validate a file for another machine (the examples).
    """

    def refuse(line: int, message: str) -> ConfigError:
        return ConfigError([Issue(filename, line, "", message)])

    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise refuse(1, _too_big(size, max_bytes))
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise refuse(1, f"not UTF-8 text ({e.reason})") from None
    with _gc_paused():
        return _parse(text, filename, check_files)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file is loaded: it makes ~10 objects per value
    and frees none of them early, so a full collection there only walks a growing heap
    (12,000 tags: 7 collections, 1.1 s of 5.4 s).  Restored as it was, even on errors."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _parse(text: str, filename: str, check_files: bool) -> Config:
    pos = Positions()
    try:
        node, data = load_yaml(text, pos.walk)
    except YamlProblem as e:
        raise ConfigError([Issue(filename, e.line, "", e.message)]) from None
    if node is None:
        raise ConfigError([Issue(filename, 1, "", "empty file: expected a mapping with devices")])
    del node  # the composed tree (two marks per node) goes before the models are built
    if not isinstance(data, dict):
        raise ConfigError(
            [Issue(filename, 1, "", "top level must be a mapping (site, devices, ...)")]
        )
    problems: list[tuple[Path_, str]] = list(pos.duplicates)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = pos.clean(err["loc"], missing=err["type"] != "edgeloop_checks")
            problems += friendly(err, loc, Config)
    if cfg is not None:
        # cross-checks resolve paths from config_dir
        cfg._source = Source(filename, LineMap(pos.lines))
        problems += _global_checks(cfg)
        cfg = _anchored(cfg)
        if check_files:
            problems += _file_checks(cfg)
    if problems:
        issues: list[Issue] = []
        seen: set[tuple[int, str, str]] = set()
        for path, message in problems:
            issue = Issue(filename, pos.line(path), render(path), message)
            key = (issue.line, issue.path, issue.message)
            if key not in seen:
                seen.add(key)
                issues.append(issue)
        issues.sort(key=lambda i: i.line)
        raise ConfigError(issues)
    assert cfg is not None
    return cfg


DEFAULT_CONFIG = "config/edgeloop.yaml"


def default_config_path() -> Path:
    """`config/edgeloop.yaml` of the working directory, else the one beside the package."""
    here = Path(DEFAULT_CONFIG)
    if here.exists():
        return here
    shipped = Path(__file__).resolve().parents[1] / DEFAULT_CONFIG
    return shipped if shipped.exists() else here


def _too_big(size: int, limit: int) -> str:
    return f"file is {size} bytes, larger than the {describe_size(limit)} limit of a config file"


def read_config_bytes(path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a config file, read only up to the size limit; `ConfigError` otherwise."""
    name = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError([Issue(name, 1, "", message)])

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise refuse(_too_big(size, max_bytes))
            data = fh.read(max_bytes + 1)  # files that do not know their size (/proc, pipes)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except IsADirectoryError:
        raise refuse("is a directory, not a YAML file") from None
    except OSError as e:
        raise refuse(f"cannot read: {e.strerror}") from None
    if len(data) > max_bytes:
        raise refuse(f"file is larger than the {describe_size(max_bytes)} limit of a config file")
    return data


def load_config(
    path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES, check_files: bool = True
) -> Config:
    """Read and validate a YAML file; raises `ConfigError` (file:line form) on any problem.
    See `parse_config` for `check_files`."""
    data = read_config_bytes(path, max_bytes=max_bytes)
    return parse_config(data, str(path), max_bytes=max_bytes, check_files=check_files)
