"""The one gate every PLC write passes: who may write a tag, bounds, rate, budget, never NaN.

The control loop's safety envelope already keeps its own commands inside these limits; the
gate is the second fence, in front of the driver, that holds whatever the caller is (a loop
output, a heartbeat, an operator write over HTTP, a future Sparkplug DCMD):

- **roles**: a tag that a loop writes (its output, its heartbeat) may be written only by that
  loop in that role (`output:<loop>`, `heartbeat:<loop>`); other writable tags take
  `operator` writes.  A heartbeat can never move an output, and nothing else moves either.
- **bounds**: the tag's min/max (a loop output: narrowed by the loop's output_min/max).
- **rate**: a rate-limited tag moves at most `max_rate_per_s * dt` per write, `dt` being the
  time since the value the step is measured from was established plus `jitter_s` (a late
  period must not make the next on-time write fail), capped at `step_cap_s` (so a long
  pause does not bank a large step).  The reference is our own last write while
  it is recent, else the last good read; with neither (the present value unknown) a
  rate-limited write is refused, unless the rule has a `start` value to ramp from.
- **budget**: at most `max_writes_per_s` writes per tag (a token bucket), so a runaway caller
  cannot hammer a PLC.

Pure: no I/O, the caller passes `now_ns`; `Acquirer.write` calls `check` before sending and
`committed` after the device acknowledged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from drivers.base import WriteRefused
from drivers.config_common import bounds_refusal

OPERATOR = "operator"
RATE_SLACK = 1.01  # float noise; timing slack is `jitter_s`
DEFAULT_WRITES_PER_S = 10.0


@dataclass(frozen=True, slots=True)
class TagRule:
    """Write limits of one tag."""

    roles: frozenset[str] = frozenset({OPERATOR})
    lo: float = -math.inf
    hi: float = math.inf
    max_rate_per_s: float = math.inf
    step_cap_s: float = 1.0
    jitter_s: float = 0.1
    max_writes_per_s: float = DEFAULT_WRITES_PER_S
    start: float = math.nan  # assumed present value when it cannot be read


@dataclass(slots=True)
class _TagState:
    written: float = math.nan
    written_ns: int = 0
    tokens: float = 0.0
    tokens_ns: int = 0


@dataclass
class WriteGate:
    """Rules per tag index, and what was written; see the module docstring."""

    table: Any
    rules: dict[int, TagRule] = field(default_factory=dict)
    _state: dict[int, _TagState] = field(default_factory=dict)

    def rule(self, idx: int) -> TagRule:
        rule = self.rules.get(idx)
        if rule is None:
            p = self.table.points[idx]
            rate = p.max_rate_per_s if p.max_rate_per_s else math.inf
            rule = TagRule(
                lo=p.min if p.min is not None else -math.inf,
                hi=p.max if p.max is not None else math.inf,
                max_rate_per_s=rate,
            )
            self.rules[idx] = rule
        return rule

    def present(self, idx: int, now_ns: int) -> tuple[float, int]:
        """(value the tag holds now as far as we know, when that was established; NaN, 0)."""
        rule = self.rule(idx)
        st = self._state.get(idx)
        t = self.table
        read_ok = int(t.quality[idx]) == 0 and math.isfinite(float(t.raw[idx]))
        read_ns = int(t.ts_ns[idx]) if read_ok else 0
        if st is not None and math.isfinite(st.written):
            recent = now_ns - st.written_ns <= rule.step_cap_s * 2e9
            if recent or read_ns <= st.written_ns:
                return st.written, st.written_ns
        # a read (or the configured start) says what the register holds, not since when:
        # credit it with one writer period (half the cap), as if written that long ago
        held_ns = now_ns - int(rule.step_cap_s * 0.5e9)
        if read_ok:
            return float(t.raw[idx]), min(read_ns, held_ns)
        if math.isfinite(rule.start):
            return rule.start, held_ns
        return math.nan, 0

    def check(self, idx: int, value: float, role: str | None, now_ns: int) -> None:
        """Raise `WriteRefused` unless this write is allowed now (numbers only)."""
        rule = self.rule(idx)
        name = self.table.names[idx]
        who = role or OPERATOR
        if who not in rule.roles:
            raise WriteRefused(
                f"{name!r} may be written only as {', '.join(sorted(rule.roles))}, not as {who}"
            )
        if not math.isfinite(value):
            raise WriteRefused(f"{name!r}: {value!r} is not finite")
        why = bounds_refusal(value, rule.lo, rule.hi)
        if why is not None:
            raise WriteRefused(f"{name!r}: {why}")
        st = self._state.setdefault(idx, _TagState(tokens=rule.max_writes_per_s))
        dt_b = max(0, now_ns - st.tokens_ns) / 1e9 if st.tokens_ns else 0.0
        tokens = min(rule.max_writes_per_s, st.tokens + dt_b * rule.max_writes_per_s)
        if tokens < 1.0:
            raise WriteRefused(f"{name!r}: write budget of {rule.max_writes_per_s:g}/s spent")
        if math.isfinite(rule.max_rate_per_s):
            ref, ref_ns = self.present(idx, now_ns)
            if not math.isfinite(ref):
                raise WriteRefused(
                    f"{name!r}: present value unknown, so its rate limit cannot be kept "
                    "(nothing written until it is read, or set the loop's start_output)"
                )
            dt = min(max(0, now_ns - ref_ns) / 1e9 + rule.jitter_s, rule.step_cap_s)
            allowed = rule.max_rate_per_s * dt * RATE_SLACK + 1e-9
            if abs(value - ref) > allowed:
                raise WriteRefused(
                    f"{name!r}: {ref:g} -> {value:g} is faster than "
                    f"{rule.max_rate_per_s:g}/s (at most {allowed:g} now)"
                )
        st.tokens, st.tokens_ns = tokens - 1.0, now_ns

    def committed(self, idx: int, value: float, now_ns: int) -> None:
        """The device acknowledged `value`, sent at `now_ns`: the tag's present value."""
        st = self._state.setdefault(idx, _TagState(tokens=self.rule(idx).max_writes_per_s))
        st.written, st.written_ns = float(value), now_ns


def rules_from_config(cfg: Any, table: Any) -> dict[int, TagRule]:
    """Roles and limits of the tags the control loops own (output and heartbeat)."""
    from agent.control.settings import output_bounds

    rules: dict[int, TagRule] = {}
    control = getattr(cfg, "control", None)
    for lp in getattr(control, "loops", []):
        idx = table.index.get(lp.output)
        if idx is not None:
            p = table.points[idx]
            lo, hi = output_bounds(lp, p.min, p.max)
            rate = lp.max_rate_per_s or p.max_rate_per_s or math.inf
            start = lp.start_output if lp.start_output is not None else math.nan
            rules[idx] = TagRule(
                roles=frozenset({f"output:{lp.name}"}),
                lo=lo if lo is not None else -math.inf,
                hi=hi if hi is not None else math.inf,
                max_rate_per_s=rate,
                step_cap_s=max(lp.period_s, 0.05) * 2,
                jitter_s=max(lp.period_s, 0.05) / 2,
                max_writes_per_s=max(DEFAULT_WRITES_PER_S, 4.0 / lp.period_s),
                start=start,
            )
        if lp.heartbeat is not None:
            hidx = table.index.get(lp.heartbeat.tag)
            if hidx is not None:
                p = table.points[hidx]
                rules[hidx] = TagRule(
                    roles=frozenset({f"heartbeat:{lp.name}"}),
                    lo=p.min if p.min is not None else -math.inf,
                    hi=p.max if p.max is not None else math.inf,
                    max_writes_per_s=max(DEFAULT_WRITES_PER_S, 4.0 / lp.period_s),
                )
    return rules
