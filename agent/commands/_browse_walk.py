"""The OPC UA address-space walk of `edgeloop browse`: breadth-first Browse along
hierarchical references, then one Read per chunk of attributes, into `Found` variables.

Read-only; the connection is the driver's (`agent.commands.browse` makes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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


def finite_range(low: Any, high: Any) -> tuple[float | None, float | None]:
    """EURange (Low, High) as min/max when both are finite numbers and low <= high."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return None, None
    if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
        return lo, hi
    return None, None


class BrowseError(Exception):
    """The server answered, but the walk cannot go on (a root it does not know)."""


class Walker:
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
