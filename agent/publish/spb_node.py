"""The Sparkplug B edge node's state: bdSeq, seq, births, the primary host, commands.

The publisher (agent/publish/publisher.py) owns the MQTT connection and the outbox; this
class owns what the Sparkplug 3.0 specification asks of an edge node and builds its payloads
(agent/publish/sparkplug.py), without I/O except the small bdSeq file:

- **bdSeq**: one number per MQTT connection (0..255, wrapping), the same in the connection's
  will (NDEATH) and its NBIRTH, so a host can tell which session a death ends. It is kept in
  a file next to the outbox (`<outbox>.bdseq`, written atomically as soon as the broker
  accepts a connection), so a restart or a kill -9 of the agent goes on from the next number
  instead of reusing 0; attempts that never reached CONNACK use up no number.
- **seq**: 0..255 per session, NBIRTH 0, every later NBIRTH/DBIRTH/DDATA/DDEATH of the
  session the next one (DDATA gets it when sent, not when stored).
- **primary host**: with `primary_host_id` set, nothing is published until the host's
  `spBv1.0/STATE/<id>` says `{"online": true, ...}`; a later `online: false` (not older than
  the last STATE seen) makes the node say NDEATH and reconnect, waiting again. The outbox
  keeps storing meanwhile; what was stored while not publishing goes out as historical.
- **commands**: NCMD `Node Control/Rebirth`, DCMD `Device Control/Rebirth` and DCMD writes
  (metrics by alias or by name, values read as the tag's datatype), resolved here into
  `(tag, value)` pairs for the publisher to pass to the acquirer's write gate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.publish import sparkplug as spb
from agent.telemetry.episodes import EpisodeLog

log = logging.getLogger("edgeloop.publish")


def _reason_name(code: int) -> str | None:
    """The name of a `drivers.base.Reason` code (None when none is set or known)."""
    if not code:
        return None
    try:
        from drivers.base import reason_name  # type: ignore[attr-defined]
    except ImportError:  # a tag table without reason codes
        return None
    return str(reason_name(int(code)))


class BdSeqFile:
    """The bdSeq of the last connection, kept across restarts in one small text file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.last: int | None = None
        with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as fh:
            self.last = int(fh.read().strip()) % 256
        self._episodes = EpisodeLog(log)

    def candidate(self) -> int:
        """The bdSeq for the next connection: one more than the last one a broker accepted
        (0 the very first time). An attempt that never got a CONNACK registered no will,
        so its number is not used up."""
        return 0 if self.last is None else (self.last + 1) % 256

    def save(self, n: int) -> None:
        """The broker accepted a connection with bdSeq `n`: keep it (atomically)."""
        self.last = n
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{n}\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # go on in memory: a restart would then reuse numbers
            self._episodes.fail(f"Sparkplug bdSeq file {self.path}", f"cannot save: {exc}")
        else:
            self._episodes.ok(f"Sparkplug bdSeq file {self.path}")

    def next(self) -> int:
        """`candidate()`, saved at once."""
        n = self.candidate()
        self.save(n)
        return n


@dataclass(frozen=True, slots=True)
class Write:
    """A DCMD write resolved to a tag, or refused before reaching the write gate."""

    device: str
    tag: str
    index: int
    value: Any
    refused: str | None = None


class SparkplugNode:
    """Session state and payloads of the edge node; see the module docstring."""

    def __init__(
        self, table: Any, groups: Sequence[Any], bdseq_path: str, primary_host: str | None
    ) -> None:
        self.table = table
        self.specs: dict[int, spb.MetricSpec] = {}
        self.by_name: dict[str, int] = {}
        self.groups: dict[str, list[Any]] = {}  # device -> groups
        self.born: set[str] = set()  # devices with a DBIRTH in this session
        self.bdseq_file = BdSeqFile(bdseq_path)
        self.bdseq = self.bdseq_file.last if self.bdseq_file.last is not None else 0
        self.seq = 0
        self.primary_host = primary_host
        self.host_online = primary_host is None
        self._host_ts = -1
        for g in groups:
            self.learn(g)

    # ------------------------------------------------------------------ tags
    def learn(self, group: Any) -> bool:
        """Remember a group for its device's DBIRTH; True when it was new (re-birth it)."""
        known = self.groups.setdefault(group.device, [])
        if any(g.start == group.start for g in known):
            return False
        known.append(group)
        points = getattr(group, "points", ()) or ()
        for i in range(group.start, group.stop):
            p = points[i - group.start] if points else self.table.points[i]
            spec = spb.spec_for(p, group.name)
            self.specs[i] = spec
            self.by_name[spec.name] = i
            self.by_name.setdefault(p.name, i)
        self.born.discard(group.device)
        return True

    def device_of(self, segment: str, topic_segment: Any) -> str | None:
        """The device whose topic level is `segment`."""
        for device in self.groups:
            if topic_segment(device) == segment:
                return device
        return None

    # ------------------------------------------------------------------ session
    def new_connection(self) -> int:
        """A new MQTT connection attempt: the bdSeq its will and NBIRTH carry."""
        self.bdseq = self.bdseq_file.candidate()
        self.born = set()
        if self.primary_host is not None:
            self.host_online = False  # wait for the host's STATE on every connection
        return self.bdseq

    def connected(self) -> None:
        """The broker accepted the connection (its will holds our bdSeq): save the number
        before anything is published, so a restart goes on from the next one."""
        self.bdseq_file.save(self.bdseq)

    def next_seq(self) -> int:
        s = self.seq
        self.seq = (s + 1) % 256
        return s

    def nbirth(self, now_ms: int) -> bytes:
        self.seq = 0
        self.born = set()
        return spb.node_birth(self.bdseq, now_ms, seq=self.next_seq())

    def ndeath(self, now_ms: int) -> bytes:
        return spb.node_death(self.bdseq, now_ms)

    def ready_devices(self) -> list[str]:
        """Devices every tag of which has been read: born eagerly after NBIRTH (the others
        just before their first DDATA, so their birth carries values where they exist)."""
        t = self.table
        return [
            d
            for d, gs in self.groups.items()
            if all((t.ts_ns[g.start : g.stop] > 0).all() for g in gs)
        ]

    def dbirth(self, device: str, now_ms: int) -> bytes:
        """Every tag of the device with its current value, quality and properties."""
        t = self.table
        texts = getattr(t, "texts", None) or {}
        reasons = getattr(t, "reason", None)
        p = spb.Payload(timestamp=now_ms)
        for g in self.groups.get(device, []):
            for i in range(g.start, g.stop):
                spec = self.specs[i]
                if spec.datatype == spb.STRING:
                    value: Any = texts.get(i)
                else:
                    x = float(t.raw[i])
                    value = x if x == x else None
                code = int(reasons[i]) if reasons is not None else 0
                ts = int(t.ts_ns[i]) // 1_000_000 or now_ms
                spb.add_birth_metric(p, spec, value, int(t.quality[i]), _reason_name(code), ts)
        p.seq = self.next_seq()
        self.born.add(device)
        return p.SerializeToString()

    def ddeath(self, now_ms: int) -> bytes:
        return spb.Payload(timestamp=now_ms, seq=self.next_seq()).SerializeToString()

    def ddata(self, frames: Sequence[Any], historical: bool) -> bytes:
        """DDATA of one group's frames (oldest first), stored without seq.

        Runs in the outbox writer thread for every frame: a good float value without a
        Quality property to say (the common case) is set inline, the rest goes through
        `sparkplug.add_data_metric`."""
        p = spb.Payload(timestamp=frames[-1].ts_ns // 1_000_000)
        add = p.metrics.add
        specs = self.specs
        for f in frames:
            ms = f.ts_ns // 1_000_000
            s = f.start
            raw = f.raw.tolist()
            q = f.quality.tolist()
            qsend = f.qsend.tolist() if f.qsend is not None else [True] * len(raw)
            for k, x in enumerate(raw):
                spec = specs[s + k]
                dt = spec.datatype
                if not qsend[k] and x == x and (dt == spb.DOUBLE or dt == spb.FLOAT):
                    m = add()
                    m.alias = spec.alias
                    m.timestamp = ms
                    if historical:
                        m.is_historical = True
                    if dt == spb.DOUBLE:
                        m.double_value = x
                    else:
                        m.float_value = x
                    continue
                value = f.texts.get(s + k) if dt == spb.STRING else x
                code = int(f.reason[k]) if (qsend[k] and f.reason is not None) else 0
                spb.add_data_metric(
                    p,
                    spec,
                    value,
                    ms,
                    quality=q[k] if qsend[k] else None,
                    reason=_reason_name(code),
                    historical=historical,
                )
        return p.SerializeToString()

    def refusal(self, w: Write, now_ms: int) -> bytes:
        """DDATA answering a refused DCMD write: the tag's present value (so the host's
        display falls back to it) with a `writeRefused` property saying why."""
        t = self.table
        spec = self.specs[w.index]
        p = spb.Payload(timestamp=now_ms)
        if spec.datatype == spb.STRING:
            value: Any = (getattr(t, "texts", None) or {}).get(w.index)
        else:
            x = float(t.raw[w.index])
            value = x if x == x else None
        m = spb.add_data_metric(p, spec, value, now_ms, quality=int(t.quality[w.index]))
        spb._prop(m.properties, "writeRefused", spb.STRING, w.refused or "refused")
        return p.SerializeToString()

    # ------------------------------------------------------------------ primary host
    def state_message(self, body: bytes) -> bool | None:
        """Apply a STATE message of the primary host; returns the new online flag, or None
        when the message is ignored (malformed, or older than the last one seen)."""
        try:
            doc = json.loads(body)
            online = doc["online"]
            ts = int(doc.get("timestamp", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring a malformed STATE message of host %s", self.primary_host)
            return None
        if not isinstance(online, bool) or ts < self._host_ts:
            return None
        self._host_ts = ts
        self.host_online = online
        return online

    # ------------------------------------------------------------------ commands
    def writes(self, device: str, body: bytes) -> tuple[list[Write], bool]:
        """The writes a DCMD asks for on `device`, and whether it asks for a device rebirth.

        A metric naming no tag of this device is returned refused (with index -1 when no tag
        matches at all); a null or non-scalar value is refused here, everything else is for
        the write gate to judge.
        """
        out: list[Write] = []
        rebirth = False
        for m in spb.command_metrics(body):
            if m.name == spb.DEVICE_REBIRTH:
                rebirth = rebirth or bool(m.boolean_value)
                continue
            idx = -1
            if m.HasField("alias") and int(m.alias) in self.specs:
                idx = int(m.alias)
            elif m.name in self.by_name:
                idx = self.by_name[m.name]
            label = m.name or f"alias {m.alias}"
            if idx < 0:
                out.append(Write(device, label, -1, None, f"no tag {label!r} on this node"))
                continue
            tag = self.table.names[idx]
            if not any(g.start <= idx < g.stop for g in self.groups.get(device, ())):
                out.append(Write(device, tag, idx, None, f"tag {tag!r} is not on {device!r}"))
                continue
            value = spb.get_value(m, self.specs[idx].datatype)
            if value is None:
                out.append(Write(device, tag, idx, None, "the command carries no value"))
                continue
            out.append(Write(device, tag, idx, value))
        return out, rebirth
