"""`edgeloop browse opc.tcp://HOST:PORT[/path]`: walk an OPC UA address space, print tag lines.

Connects with the OPC UA driver's own code (`drivers.opcua.OpcUaDriver.connect`: the same
security policy/mode, pinned or trusted server certificate, client certificate and login as
a configured device), then browses breadth-first from `--root` (default the Objects folder)
along hierarchical references, at most `--depth` levels deep and at most `--max-nodes` nodes
in all.  Every readable scalar variable of a type edgeloop stores becomes a tag line:

    - {name: pump_flow, node: "ns=2;s=Pump.Flow", type: float64, unit: m3/h, min: 0, max: 80}

`type` comes from the DataType attribute (subtypes resolved to their built-in base type),
`unit` from the EngineeringUnits property (its DisplayName), `min`/`max` from the EURange
property, `writable: true` when AccessLevel and UserAccessLevel both grant CurrentWrite.
Properties themselves (HasProperty children) are not tags.  The Server object (i=2253, the
server's own diagnostics) is skipped unless it is the root.  Requests: one Browse per level
chunk, one Read per chunk of attributes (the server's MaxNodesPerRead), all read-only.

Output: a table (default), `--yaml` (tag lines to paste under a poll group's `tags:`) or
`--json`.  Exit status: 0 tags found, 1 none found, 2 bad arguments, 3 connect failed.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from drivers.opcua_config import OpcUaDevice

HELP = "browse an OPC UA server and print ready-to-paste tag lines (node, type, unit, range)"

EX_CONNECT = 3
DEFAULT_DEPTH = 6
DEFAULT_MAX_NODES = 5000
_BROWSE_CHUNK = 100  # nodes per Browse request
_SERVER_OBJECT = "i=2253"
_ACCESS_READ = 0x01  # AccessLevelType bit 0 CurrentRead (Part 3 8.57)
_ACCESS_WRITE = 0x02  # bit 1 CurrentWrite
# Built-in VariantType name -> edgeloop tag type (SByte/Byte widen: stored as float64 anyway).
TYPE_OF_VARIANT = {
    "Boolean": "bool",
    "SByte": "int16",
    "Byte": "uint16",
    "Int16": "int16",
    "UInt16": "uint16",
    "Int32": "int32",
    "UInt32": "uint32",
    "Int64": "int64",
    "UInt64": "uint64",
    "Float": "float32",
    "Double": "float64",
    "String": "string",
    "LocalizedText": "string",
}
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="server endpoint, opc.tcp://HOST:PORT[/path]")
    p.add_argument("--root", default="i=85", help="NodeId to start from (i=85, Objects)")
    p.add_argument(
        "--depth", type=int, default=DEFAULT_DEPTH, help=f"levels below the root ({DEFAULT_DEPTH})"
    )
    p.add_argument(
        "--max-nodes",
        type=int,
        default=DEFAULT_MAX_NODES,
        help=f"stop after visiting this many nodes ({DEFAULT_MAX_NODES})",
    )
    p.add_argument(
        "--match",
        metavar="PATTERN",
        help="only variables whose browse path, browse name or node id matches this "
        "shell pattern (case-insensitive), e.g. '*Temp*' or 'PumpSkid/Setpoints/*'",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--yaml", action="store_true", help="print tag lines to paste under a poll group's tags:"
    )
    out.add_argument("--json", action="store_true", help="print a JSON document")
    p.add_argument("--indent", type=int, default=0, help="indent the --yaml lines by N spaces")
    sec = p.add_argument_group("security and login (as the device keys of the config)")
    sec.add_argument(
        "--security-policy",
        default="None",
        choices=("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"),
        help="security_policy (None)",
    )
    sec.add_argument(
        "--security-mode",
        choices=("None", "Sign", "SignAndEncrypt"),
        help="security_mode (SignAndEncrypt when a policy is given, else None)",
    )
    sec.add_argument("--cert", help="client_certificate (DER/PEM)")
    sec.add_argument("--key", help="client_private_key (PEM)")
    sec.add_argument("--server-cert", help="server_certificate: pin exactly this certificate")
    sec.add_argument("--trust-dir", help="trust_dir: directory of trusted server certificates")
    sec.add_argument("--user", help="username")
    pw = sec.add_mutually_exclusive_group()
    pw.add_argument(
        "--password-env", metavar="VAR", help="password_env: variable with the password"
    )
    pw.add_argument("--password-file", metavar="PATH", help="password_file: file with the password")
    sec.add_argument(
        "--allow-plaintext-password",
        action="store_true",
        help="allow a password with security None (it crosses the network in clear text)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout, s (5)")
    p.add_argument("-v", "--verbose", action="store_true", help="show asyncua's log messages")


@dataclass
class Found:
    """One variable found: where it is and what the tag line says about it."""

    path: str
    node: str
    browse_name: str
    name: str = ""
    type: str | None = None  # edgeloop tag type; None: not usable as a tag
    data_type: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    description: str = ""
    value: Any = None
    skip: str = ""  # why it is not a tag
    props: dict[str, str] = field(default_factory=dict, repr=False)  # EU/EURange node ids


# --- pure helpers (unit-tested) ---------------------------------------------------------


def check_endpoint(url: str) -> str | None:
    """None if `url` looks like opc.tcp://host:port[/path], else what is wrong with it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"bad endpoint {url!r}: {exc}"
    if parts.scheme != "opc.tcp":
        return f"bad endpoint {url!r}: must start with opc.tcp://"
    if not parts.hostname:
        return f"bad endpoint {url!r}: no host"
    if port is None:
        return f"bad endpoint {url!r}: no port (OPC UA servers usually listen on 4840)"
    return None


def tag_name(browse_name: str) -> str:
    """A config tag name from a browse name: `Pump.MotorCurrent` -> `pump_motor_current`."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", browse_name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    if not s:
        s = "tag"
    if not (s[0].isalpha() or s[0] == "_"):
        s = "t_" + s
    return s[:64]


def assign_names(found: list[Found]) -> None:
    """Unique names: the browse name's, else prefixed by the parent's, else numbered."""
    base = [tag_name(f.browse_name) for f in found]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    used: set[str] = set()
    for f, b in zip(found, base, strict=True):
        name = b
        if counts[b] > 1:
            parts = f.path.split("/")
            if len(parts) >= 2:
                name = tag_name(f"{parts[-2]}_{f.browse_name}")
        n = 2
        cand = name
        while cand in used:
            cand = f"{name[:60]}_{n}"
            n += 1
        used.add(cand)
        f.name = cand


def _num(x: float) -> str:
    """A finite number as YAML reads it back as a number (YAML 1.1 needs `2.0e+20`, not `2e+20`)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    r = repr(float(x))
    mant, e, exp = r.partition("e")
    return f"{mant}.0e{exp}" if e and "." not in mant else r


def yaml_scalar(s: str) -> str:
    """`s` as a YAML flow scalar: plain when safe, else double-quoted (JSON is valid YAML)."""
    if _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s, ensure_ascii=False)


def tag_line(f: Found) -> str:
    """The flow-mapping tag line of one found variable (a YAML sequence item)."""
    parts = [
        f"name: {f.name}",
        f"node: {json.dumps(f.node, ensure_ascii=False)}",
        f"type: {f.type}",
    ]
    if f.unit:
        parts.append(f"unit: {yaml_scalar(f.unit)}")
    if f.min is not None and f.max is not None:
        parts += [f"min: {_num(f.min)}", f"max: {_num(f.max)}"]
    if f.writable:
        parts.append("writable: true")
    if f.description and f.description != f.browse_name:
        parts.append(f"description: {json.dumps(f.description, ensure_ascii=False)}")
    return "- {" + ", ".join(parts) + "}"


def format_yaml(tags: list[Found], endpoint: str, indent: int = 0) -> str:
    pad = " " * max(0, indent)
    lines = [
        f"# {len(tags)} tags from {endpoint} (edgeloop browse); paste under a poll group's tags:"
    ]
    lines += [tag_line(f) for f in tags]
    return "\n".join(pad + line for line in lines)


def format_table(tags: list[Found], skipped: list[Found]) -> str:
    rows = [
        (
            f.name,
            f.node,
            f.type or "",
            f.unit,
            f"{_num(f.min)}..{_num(f.max)}" if f.min is not None and f.max is not None else "",
            "rw" if f.writable else "r",
            _value_text(f.value),
        )
        for f in tags
    ]
    header = ("name", "node", "type", "unit", "range", "rw", "value")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for f in skipped:
        out.append(f"skipped {f.path} ({f.node}): {f.skip}")
    return "\n".join(out)


def _value_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def matches(f: Found, pattern: str | None) -> bool:
    if not pattern:
        return True
    pat = pattern.lower()
    return any(fnmatch.fnmatchcase(s.lower(), pat) for s in (f.path, f.browse_name, f.node))


def finite_range(low: Any, high: Any) -> tuple[float | None, float | None]:
    """EURange (Low, High) as min/max when both are finite numbers and low <= high."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return None, None
    if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
        return lo, hi
    return None, None


# --- the walk ----------------------------------------------------------------------------


class BrowseError(Exception):
    """The server answered, but the walk cannot go on (a root it does not know)."""


class _Walker:
    """Breadth-first browse and attribute reads over one connected asyncua Client."""

    def __init__(self, client: Any, max_nodes_per_read: int, timeout_s: float) -> None:
        from asyncua import ua

        self.ua = ua
        self.client = client
        self.read_chunk = max(1, max_nodes_per_read or 1000)
        self.timeout_s = timeout_s
        self.visited = 0
        self.truncated = False
        self._vtypes: dict[Any, Any] = {}
        self.root: Any = None

    async def browse(self, node_ids: list[Any]) -> list[list[Any]]:
        """Forward hierarchical references (Objects and Variables) of each node."""
        ua = self.ua
        out: list[list[Any]] = []
        for i in range(0, len(node_ids), _BROWSE_CHUNK):
            params = ua.BrowseParameters()
            params.View = ua.ViewDescription()
            params.RequestedMaxReferencesPerNode = 0
            for nid in node_ids[i : i + _BROWSE_CHUNK]:
                d = ua.BrowseDescription()
                d.NodeId = nid
                d.BrowseDirection = ua.BrowseDirection.Forward
                d.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
                d.IncludeSubtypes = True
                d.NodeClassMask = ua.NodeClass.Object | ua.NodeClass.Variable
                d.ResultMask = ua.BrowseResultMask.All
                params.NodesToBrowse.append(d)
            results = await self.client.uaclient.browse(params)
            for nid, res in zip(node_ids[i : i + _BROWSE_CHUNK], results, strict=True):
                if nid == self.root and not res.StatusCode.is_good():
                    raise BrowseError(
                        f"cannot browse --root {nid.to_string()}: {res.StatusCode.name}"
                    )
                refs = list(res.References or []) if res.StatusCode.is_good() else []
                cp = res.ContinuationPoint
                while cp:
                    nxt = ua.BrowseNextParameters()
                    nxt.ReleaseContinuationPoints = False
                    nxt.ContinuationPoints = [cp]
                    more = (await self.client.uaclient.browse_next(nxt))[0]
                    refs += list(more.References or [])
                    cp = more.ContinuationPoint
                out.append(refs)
        return out

    async def read(self, items: list[tuple[Any, int]]) -> list[Any]:
        """One DataValue per (node id, attribute id), in Read requests of `read_chunk`."""
        ua = self.ua
        out: list[Any] = []
        for i in range(0, len(items), self.read_chunk):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Neither
            for nid, attr in items[i : i + self.read_chunk]:
                rv = ua.ReadValueId()
                rv.NodeId = nid
                rv.AttributeId = attr
                params.NodesToRead.append(rv)
            try:
                out += await self.client.uaclient.read(params)
            except ua.UaStatusCodeError as exc:
                if len(params.NodesToRead) == 1:  # this item: a Bad DataValue in its place
                    out.append(ua.DataValue(StatusCode=ua.StatusCode(exc.code)))
                    continue
                # one item the server cannot answer fails the whole Read: ask one by one
                for item in items[i : i + self.read_chunk]:
                    out += await self._read_one(item)
        return out

    async def _read_one(self, item: tuple[Any, int]) -> list[Any]:
        saved, self.read_chunk = self.read_chunk, 1
        try:
            return await self.read([item])
        finally:
            self.read_chunk = saved

    async def walk(self, root: Any, depth: int, max_nodes: int) -> list[Found]:
        ua = self.ua
        has_property = ua.NodeId(ua.ObjectIds.HasProperty)
        self.root = root
        seen = {root}
        found: dict[Any, Found] = {}
        # a variable as the root is a tag itself (its properties come with the first Browse)
        cls_dv, name_dv = await self.read(
            [(root, ua.AttributeIds.NodeClass), (root, ua.AttributeIds.BrowseName)]
        )
        root_is_var = _int(cls_dv) == ua.NodeClass.Variable
        if root_is_var:
            bname = getattr(_val(name_dv), "Name", None) or root.to_string()
            found[root] = Found(bname, root.to_string(), bname)
        level: list[tuple[Any, str, bool]] = [(root, "", root_is_var)]  # node, path, variable
        d = 0
        while level:
            refs_per_node = await self.browse([n for n, _, _ in level])
            nxt: list[tuple[Any, str, bool]] = []
            for (parent, path, parent_is_var), refs in zip(level, refs_per_node, strict=True):
                for ref in refs:
                    # ReferenceDescription.NodeId is an ExpandedNodeId: keep the local NodeId
                    nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex)
                    bname = ref.BrowseName.Name or ""
                    if ref.ReferenceTypeId == has_property:
                        if (
                            parent_is_var
                            and parent in found
                            and bname in ("EngineeringUnits", "EURange")
                        ):
                            found[parent].props[bname] = nid
                        continue
                    if d >= depth or nid in seen or nid.to_string() == _SERVER_OBJECT:
                        continue
                    if self.visited >= max_nodes:
                        self.truncated = True
                        continue
                    seen.add(nid)
                    self.visited += 1
                    child_path = f"{path}/{bname}" if path else bname
                    is_var = ref.NodeClass == ua.NodeClass.Variable
                    if is_var:
                        found[nid] = Found(child_path, nid.to_string(), bname)
                    if is_var or d + 1 < depth:  # a variable's properties are always read
                        nxt.append((nid, child_path, is_var))
            level = nxt
            d += 1
        tags = list(found.items())
        await self._describe(tags)
        return [f for _, f in tags]

    async def _describe(self, tags: list[tuple[Any, Found]]) -> None:
        ua = self.ua
        attrs = (
            ua.AttributeIds.DataType,
            ua.AttributeIds.ValueRank,
            ua.AttributeIds.AccessLevel,
            ua.AttributeIds.UserAccessLevel,
            ua.AttributeIds.Description,
        )
        n = len(attrs)
        dvs = await self.read([(nid, a) for nid, _ in tags for a in attrs])
        # Values only of readable non-arrays (an array of a PLC can be large), then the
        # EngineeringUnits/EURange property values
        want_value = [
            k
            for k in range(len(tags))
            if _int(dvs[k * n + 2]) & _ACCESS_READ and not _int(dvs[k * n + 1], -1) >= 0
        ]
        value_dvs = await self.read([(tags[k][0], ua.AttributeIds.Value) for k in want_value])
        values = dict(zip(want_value, value_dvs, strict=True))
        prop_items = [(pid, ua.AttributeIds.Value) for _, f in tags for pid in f.props.values()]
        prop_dvs = iter(await self.read(prop_items))
        for k, (_nid, f) in enumerate(tags):
            dtype, rank, access, user_access, desc = dvs[k * n : k * n + n]
            value = values.get(
                k, ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNotReadable))
            )
            props = {name: next(prop_dvs) for name in f.props}
            f.description = _text(_val(desc))
            access_v = _val(access)
            user_v = _val(user_access)
            readable = isinstance(access_v, int) and access_v & _ACCESS_READ
            f.writable = bool(
                isinstance(access_v, int)
                and access_v & _ACCESS_WRITE
                and (not isinstance(user_v, int) or user_v & _ACCESS_WRITE)
            )
            v = value.Value.Value if value.Value is not None else None
            f.value = v if isinstance(v, (bool, int, float, str)) else _text(v) or None
            vtype = await self._variant_type(_val(dtype), value)
            f.data_type = vtype.name if vtype is not None else str(_val(dtype))
            rank_v = _val(rank)
            if not readable:
                f.skip = "not readable (AccessLevel)"
            elif (isinstance(rank_v, int) and rank_v >= 0) or isinstance(v, list):
                f.skip = "an array"
            elif vtype is None or vtype.name not in TYPE_OF_VARIANT:
                f.skip = f"DataType {f.data_type} is not a number, bool or string"
            else:
                f.type = TYPE_OF_VARIANT[vtype.name]
            eu = _val(props.get("EngineeringUnits"))
            if eu is not None:
                f.unit = _text(getattr(eu, "DisplayName", None)).strip()
            rng = _val(props.get("EURange"))
            if rng is not None and f.type not in (None, "bool", "string"):
                f.min, f.max = finite_range(getattr(rng, "Low", None), getattr(rng, "High", None))

    async def _variant_type(self, dtype: Any, value: Any) -> Any:
        """The built-in VariantType of a DataType node id (cached); abstract types
        (BaseDataType, Number, ...) fall back to the type of the current value."""
        ua = self.ua
        if not isinstance(dtype, ua.NodeId):
            return None
        vt = self._vtypes.get(dtype)
        if vt is None:
            if (
                dtype.NamespaceIndex == 0
                and isinstance(dtype.Identifier, int)
                and 1 <= dtype.Identifier <= 25
            ):
                vt = ua.VariantType(dtype.Identifier)
            else:
                from asyncua.common.ua_utils import data_type_to_variant_type

                try:
                    vt = await data_type_to_variant_type(self.client.get_node(dtype))
                except (ua.UaError, ValueError):
                    vt = ua.VariantType.Variant
            self._vtypes[dtype] = vt
        if vt == ua.VariantType.Variant:
            if value is not None and value.Value is not None and value.Value.Value is not None:
                return value.Value.VariantType
            return None
        return vt


def _val(dv: Any) -> Any:
    """The value of a Good DataValue, else None."""
    if dv is None or dv.StatusCode is None or not dv.StatusCode.is_good() or dv.Value is None:
        return None
    return dv.Value.Value


def _int(dv: Any, default: int = 0) -> int:
    """The integer value of a Good DataValue (AccessLevel, ValueRank), else `default`."""
    v = _val(dv)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _text(v: Any) -> str:
    if v is None:
        return ""
    if hasattr(v, "Text"):
        return v.Text or ""
    return str(v)


# --- the command ---------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> OpcUaDevice:
    """The device keys `drivers.opcua` reads, from the command line, as its typed model."""
    from drivers.opcua_config import OpcUaDevice

    policy = args.security_policy
    mode = args.security_mode or ("None" if policy == "None" else "SignAndEncrypt")
    return OpcUaDevice.for_command(
        name="browse",
        endpoint=args.endpoint,
        security_policy=policy,
        security_mode=mode,
        client_certificate=args.cert,
        client_private_key=args.key,
        server_certificate=args.server_cert,
        trust_dir=args.trust_dir,
        username=args.user,
        password_env=args.password_env,
        password_file=args.password_file,
        timeout_s=args.timeout,
    )


def _argument_problem(args: argparse.Namespace, dev: OpcUaDevice) -> str | None:
    """The config's checks of the same keys, as one line (the driver checks the rest)."""
    problem = check_endpoint(args.endpoint)
    if problem:
        return problem
    if args.depth < 0 or args.max_nodes < 1:
        return "--depth must be >= 0 and --max-nodes >= 1"
    if not (args.timeout > 0):
        return "--timeout must be > 0"
    if dev.security_policy == "None" and dev.security_mode != "None":
        return f"--security-mode {dev.security_mode} needs a --security-policy"
    if dev.security_policy != "None" and dev.security_mode == "None":
        return (
            f"--security-policy {dev.security_policy} needs --security-mode Sign or SignAndEncrypt"
        )
    if (dev.password_env or dev.password_file) and not dev.username:
        return "--password-env/--password-file need --user"
    if (
        dev.security_policy == "None"
        and (dev.password_env or dev.password_file)
        and not args.allow_plaintext_password
    ):
        return (
            "security None sends the password in clear text: give --security-policy, or "
            "--allow-plaintext-password"
        )
    return None


async def _browse(
    args: argparse.Namespace, dev: OpcUaDevice, root: Any
) -> tuple[list[Found], _Walker]:
    from drivers.opcua import create

    drv = create(dev, [])
    try:
        await drv.connect()
        walker = _Walker(drv.client, drv.max_nodes_per_read, dev.timeout_s)
        found = await walker.walk(root, args.depth, args.max_nodes)
    finally:
        await drv.close()
    return found, walker


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    dev = _device(args)
    problem = _argument_problem(args, dev)
    if problem:
        print(f"edgeloop browse: {problem}", file=sys.stderr)
        return 2
    from asyncua import ua

    from drivers.base import DriverError

    try:
        root = ua.NodeId.from_string(args.root)
    except Exception:  # asyncua raises UaStringParsingError, ValueError, IndexError
        print(
            f"edgeloop browse: bad --root node id {args.root!r} (e.g. i=85, ns=2;s=Plant)",
            file=sys.stderr,
        )
        return 2
    try:
        found, walker = asyncio.run(_browse(args, dev, root))
    except DriverError as exc:
        print(f"edgeloop browse: {exc}", file=sys.stderr)
        return EX_CONNECT
    except BrowseError as exc:
        print(f"edgeloop browse: {exc}", file=sys.stderr)
        return 1
    except ua.UaStatusCodeError as exc:
        print(f"edgeloop browse: {args.endpoint}: the server refused: {exc}", file=sys.stderr)
        return EX_CONNECT
    except (TimeoutError, OSError) as exc:
        print(f"edgeloop browse: {args.endpoint}: connection failed: {exc!r}", file=sys.stderr)
        return EX_CONNECT
    found = [f for f in found if matches(f, args.match)]
    tags = [f for f in found if f.type is not None]
    skipped = [f for f in found if f.type is None]
    assign_names(tags)
    note = f"browse: {walker.visited} nodes visited, {len(tags)} tags, {len(skipped)} skipped" + (
        f"; stopped at --max-nodes {args.max_nodes}" if walker.truncated else ""
    )
    if args.json:
        doc = {
            "endpoint": args.endpoint,
            "root": args.root,
            "visited": walker.visited,
            "truncated": walker.truncated,
            "tags": [_json_tag(f) for f in tags],
            "skipped": [{"path": f.path, "node": f.node, "why": f.skip} for f in skipped],
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    elif args.yaml:
        print(format_yaml(tags, args.endpoint, args.indent))
        for f in skipped:
            print(f"skipped {f.path} ({f.node}): {f.skip}", file=sys.stderr)
    else:
        print(format_table(tags, skipped))
    print(note, file=sys.stderr)
    return 0 if tags else 1


def _json_tag(f: Found) -> dict[str, Any]:
    d = asdict(f)
    d.pop("props")
    d.pop("skip")
    if not isinstance(d["value"], (bool, int, float, str, type(None))) or (
        isinstance(d["value"], float) and not math.isfinite(d["value"])
    ):
        d["value"] = None
    return d
