"""The safety envelope between every controller and the write, and the input interlocks.

`Envelope.apply` clamps to the output's bounds (the tag's min/max, narrowed by the loop's
`output_min/max`) and limits the rate of change per period; a non-finite command is never
written (the last output is held).  With the output's present value unknown (`last` NaN) a
rate-limited envelope has nothing to limit from, so it refuses to produce a value at all
(`apply` returns NaN): the loop writes nothing until the PLC's value is known or a
configured `start_output` says where to ramp from.  `input_problem` turns the tag table's
view of one input (age, quality, kernel flags, value) into interlock reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.kernel.flags import (
    ANOMALOUS,
    DRIFT,
    GROUP_ALARM,
    INVALID,
    OUT_OF_RANGE,
    SPIKE,
    STUCK,
)

# With the default `on_anomaly: sensor_fault`, a per-tag alarm trips only together with one of
# these bits in the same sample: the sensor itself is suspect (it stopped moving, it reads
# outside its range, it was not usable).  A drift or score alarm alone is the process moving
# (a measured disturbance stepping, a controlled variable following its setpoint): an event,
# not an interlock.  GROUP_ALARM trips on its own: the tag's multivariate group says its
# members no longer move as they were learned to (a sensor drifting against its peers,
# which its own per-tag stage may not see at all, as the baseline follows a slow ramp).
SENSOR_FAULT_BITS = INVALID | OUT_OF_RANGE | STUCK

QUALITY_GOOD = 0
QUALITY_COMM_LOST = 3

# Interlock reasons (label values of edgeloop_control_fallbacks_total{reason}).
STALE_INPUT = "stale_input"
BAD_QUALITY = "bad_quality"
COMM_LOST = "comm_lost"
ANOMALY = "anomaly"
MODEL_ERROR = "model_error"
MODEL_NAN = "model_nan"
WRITE_FAILED = "write_failed"
READBACK_MISMATCH = "readback_mismatch"
NO_SETPOINT = "no_setpoint"
PLC_TRIPPED = "plc_tripped"  # the PLC's own watchdog/interlock took the output
OUTPUT_UNKNOWN = "output_unknown"  # the output's present value is not known: nothing written
MODEL_MISMATCH = "model_mismatch"  # the plant no longer behaves like the model was trained on
REASONS = (
    STALE_INPUT,
    BAD_QUALITY,
    COMM_LOST,
    ANOMALY,
    MODEL_ERROR,
    MODEL_NAN,
    WRITE_FAILED,
    READBACK_MISMATCH,
    NO_SETPOINT,
    PLC_TRIPPED,
    OUTPUT_UNKNOWN,
    MODEL_MISMATCH,
)


@dataclass(frozen=True)
class Envelope:
    """Output bounds and rate limit; `max_step` is the largest change per period (inf = none)."""

    lo: float
    hi: float
    max_step: float = math.inf

    def apply(self, u: float, last: float) -> tuple[float, bool]:
        """(safe output, whether the controller asked for something outside the bounds).

        The safe output is NaN (write nothing) when `last` is unknown and the rate is
        limited: a first write from an unknown present value could be any step at all.
        """
        if not math.isfinite(last) and math.isfinite(self.max_step):
            return math.nan, not (math.isfinite(u) and self.lo <= u <= self.hi)
        if not math.isfinite(u):
            u = last if math.isfinite(last) else self.lo
            return min(max(u, self.lo), self.hi), True
        refused = u < self.lo or u > self.hi
        if math.isfinite(last):
            u = min(max(u, last - self.max_step), last + self.max_step)
        return min(max(u, self.lo), self.hi), refused


def input_problem(
    value: float,
    quality: int,
    flags: int,
    age_ns: int,
    max_age_ns: int,
    *,
    check_quality: bool = True,
    check_anomaly: bool = True,
    anomaly_strict: bool = False,
) -> str | None:
    """The first interlock reason one input trips, or None when it is usable.

    `check_anomaly` trips on kernel flags that say the sensor is at fault
    (`anomaly_is_sensor_fault`); with `anomaly_strict` also on any other per-tag alarm.
    """
    if age_ns > max_age_ns:
        return STALE_INPUT
    if quality == QUALITY_COMM_LOST:
        return COMM_LOST
    if not math.isfinite(value):
        return BAD_QUALITY
    if check_quality and quality != QUALITY_GOOD:
        return BAD_QUALITY
    if check_anomaly and (anomaly_is_sensor_fault(flags) or (anomaly_strict and flags & ANOMALOUS)):
        return ANOMALY
    return None


def anomaly_is_sensor_fault(flags: int) -> bool:
    """Whether a kernel flags word says the *sensor* is at fault (or its group disagrees).

    Yes while a group containing the tag is in alarm (GROUP_ALARM), and for the tag's own
    alarm (ANOMALOUS) with any of `SENSOR_FAULT_BITS` or with a burst of spikes around a
    steady level (SPIKE without DRIFT: the outliers came back to where the signal was).  No
    for an alarm that only says the level moved (DRIFT, or the score): a step of a measured
    disturbance also gives half a Hampel window of spikes, but with DRIFT.
    """
    if flags & GROUP_ALARM:
        return True
    if not flags & ANOMALOUS:
        return False
    if flags & SENSOR_FAULT_BITS:
        return True
    return bool(flags & SPIKE) and not flags & DRIFT
