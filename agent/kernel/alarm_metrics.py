"""What is in alarm now, and why alarms were raised: the kernel's alarm metrics.

`AlarmBook` is fed by `KernelRuntime` on every alarm transition (never per sample) and keeps
two series in an `agent.metrics.Metrics`, all present at 0 from start-up so dashboards and
alert rules see every configured tag and group before anything happens:

- `edgeloop_tag_alarm{tag, kind}`: 1 while `kind="tag"`, the tag's own alarm (ANOMALOUS), is
  on; 1 while `kind="group"`, a group containing the tag, is in alarm (members only);
- `edgeloop_alarms_total{level, source, cause}`: alarm onsets.  A per-tag onset
  (`level="tag"`, `source` = tag) has one cause, the first of `TAG_CAUSES` that held on the
  onset sample among the tag's `alarm_on` (sensor faults first); a group onset
  (`level="group"`, `source` = group) is `spe` when the correlation broke (the sample is
  off the model plane, relative to its limit) or `t2` when it is an unusual but consistent
  move inside the plane.  Series exist for the causes that can happen: the tag's `alarm_on`
  causes, both group causes.

The same causes go into the `anomaly_on` events (`cause`), so the event log, MQTT and the
counters agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.kernel import pertag as pt
from agent.names import ALARMS_TOTAL, TAG_ALARM

TAG_CAUSES = ("out_of_range", "stuck", "spike", "drift", "score")  # priority at an onset
GROUP_CAUSES = ("spe", "t2")


def tag_cause(flags: int, score: float, mask: int, threshold: float) -> str:
    """The cause of a per-tag alarm onset from the onset sample's flags and score.

    `mask` is the tag's compiled `alarm_on` (`pertag.P_ALARM`).  An onset sample is bad by
    definition, so one cause holds; `unknown` only guards against a caller passing another
    sample.
    """
    for cause in TAG_CAUSES:
        bit = pt.ALARM_BITS[cause]
        if not mask & bit:
            continue
        if cause == "score":
            if score > threshold:
                return cause
        elif flags & bit:
            return cause
    return "unknown"


def group_cause(t2: float, spe: float, t2_limit: float, spe_limit: float) -> str:
    """`spe` when the sample is further off the model plane than it is far inside it
    (each relative to its control limit), else `t2`."""
    return "spe" if spe / spe_limit >= t2 / t2_limit else "t2"


class AlarmBook:
    """Alarm gauges and onset counters for one `KernelRuntime`; no-op without metrics."""

    def __init__(
        self,
        metrics: Any,
        names: list[str],
        params: np.ndarray,
        groups: list[tuple[str, np.ndarray]],
    ) -> None:
        self.metrics = metrics
        self.names = names
        self.mask = params[:, pt.P_ALARM].astype(np.int64)
        # a view: a budgeted tag's limit is set in place at the end of its warm-up
        self.threshold = params[:, pt.P_SLIM]
        self.groups_on = np.zeros(len(names), dtype=np.int64)  # groups in alarm per tag
        if metrics is None:
            return
        for i, name in enumerate(names):
            metrics.set(TAG_ALARM, 0.0, tag=name, kind="tag")
            for cause in TAG_CAUSES:
                if int(self.mask[i]) & pt.ALARM_BITS[cause]:
                    metrics.inc(ALARMS_TOTAL, 0.0, level="tag", source=name, cause=cause)
        for gname, idx in groups:
            for i in idx:
                metrics.set(TAG_ALARM, 0.0, tag=names[int(i)], kind="group")
            for cause in GROUP_CAUSES:
                metrics.inc(ALARMS_TOTAL, 0.0, level="group", source=gname, cause=cause)

    def tag_transition(self, i: int, on: bool, flags: int, score: float) -> str | None:
        """A tag's own alarm went on or off; returns the cause of an onset."""
        name = self.names[i]
        cause = None
        if on:
            cause = tag_cause(flags, score, int(self.mask[i]), float(self.threshold[i]))
        if self.metrics is not None:
            self.metrics.set(TAG_ALARM, 1.0 if on else 0.0, tag=name, kind="tag")
            if cause is not None:
                self.metrics.inc(ALARMS_TOTAL, level="tag", source=name, cause=cause)
        return cause

    def group_transition(self, name: str, idx: np.ndarray, on: bool, cause: str | None) -> None:
        """A group's alarm went on (with its cause) or off."""
        self.groups_on[idx] += 1 if on else -1
        if self.metrics is None:
            return
        for i in idx:
            v = 1.0 if self.groups_on[i] > 0 else 0.0
            self.metrics.set(TAG_ALARM, v, tag=self.names[int(i)], kind="group")
        if on and cause is not None:
            self.metrics.inc(ALARMS_TOTAL, level="group", source=name, cause=cause)
