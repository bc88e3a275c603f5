"""Every metric and event name edgeloop emits, with its type and help text, in one place.

Each component owns a block below and adds to it, never elsewhere.  Labels are fixed per
name (documented in the help text) so dashboards do not break.  The compliance test
(`tests/unit/test_names.py`) checks each component emits the names it lists in COMPONENTS;
`startup_series` lists the series that exist from start-up, at 0, for a configuration
(`tests/system/test_metrics_exposition.py` scrapes a running service for them).
"""

from __future__ import annotations

from typing import Any

# Metric names: components import these constants instead of spelling the string.
POLLS_TOTAL = "edgeloop_polls_total"
POLL_ERRORS_TOTAL = "edgeloop_poll_errors_total"
POLL_OVERRUNS_TOTAL = "edgeloop_poll_overruns_total"
POLL_LATENCY_SECONDS = "edgeloop_poll_latency_seconds"
DEVICE_UP = "edgeloop_device_up"
BUILD_INFO = "edgeloop_build_info"
RECONNECTS_TOTAL = "edgeloop_reconnects_total"
KERNEL_SECONDS = "edgeloop_kernel_seconds"
ANOMALY_ALARM = "edgeloop_anomaly_alarm"
TAG_ALARM = "edgeloop_tag_alarm"
ALARMS_TOTAL = "edgeloop_alarms_total"
STORE_ROWS_TOTAL = "edgeloop_store_rows_total"
STORE_QUEUE_DEPTH = "edgeloop_store_queue_depth"
STORE_DROPPED_TOTAL = "edgeloop_store_dropped_total"
STORE_BYTES = "edgeloop_store_bytes"
STORE_RETENTION_DELETED_TOTAL = "edgeloop_store_retention_deleted_total"
PUBLISH_MESSAGES_TOTAL = "edgeloop_publish_messages_total"
PUBLISH_SECONDS = "edgeloop_publish_seconds"
OUTBOX_DEPTH = "edgeloop_outbox_depth"
OUTBOX_BYTES = "edgeloop_outbox_bytes"
OUTBOX_DROPPED_TOTAL = "edgeloop_outbox_dropped_total"
MQTT_CONNECTED = "edgeloop_mqtt_connected"
CONTROL_MODE = "edgeloop_control_mode"
CONTROL_FALLBACKS_TOTAL = "edgeloop_control_fallbacks_total"
CONTROL_WRITES_TOTAL = "edgeloop_control_writes_total"
CONTROL_WRITE_ERRORS_TOTAL = "edgeloop_control_write_errors_total"
CONTROL_STEP_SECONDS = "edgeloop_control_step_seconds"
CONTROL_MODEL_MISMATCH = "edgeloop_control_model_mismatch"
CONTROL_REFUSED_TOTAL = "edgeloop_control_refused_total"
HTTP_REQUESTS_TOTAL = "edgeloop_http_requests_total"
WATCHDOG_MISSED_TOTAL = "edgeloop_watchdog_missed_total"
UP = "edgeloop_up"
CONFIG_RELOADS_TOTAL = "edgeloop_config_reloads_total"
QUEUE_DROPPED_TOTAL = "edgeloop_queue_dropped_total"
COMPONENT_UP = "edgeloop_component_up"
COMPONENT_CRASHES_TOTAL = "edgeloop_component_crashes_total"
COMPONENT_RESTARTS_TOTAL = "edgeloop_component_restarts_total"
STORAGE_RECOVERED_TOTAL = "edgeloop_storage_recovered_total"

# name -> (type, help). Types: counter | gauge | histogram (buckets in BUCKETS).
METRICS: dict[str, tuple[str, str]] = {
    # --- acquire (labels: device, group) ---
    POLLS_TOTAL: ("counter", "Poll cycles completed, by device and group."),
    POLL_ERRORS_TOTAL: ("counter", "Poll cycles that failed, by device and group."),
    POLL_OVERRUNS_TOTAL: (
        "counter",
        "Polls skipped because the previous poll of the group was still running.",
    ),
    POLL_LATENCY_SECONDS: (
        "histogram",
        "Time of one successful poll cycle, by device and group.",
    ),
    DEVICE_UP: ("gauge", "1 when the device answers, 0 when down, by device."),
    # --- service (labels: version, python, numba, litert) ---
    BUILD_INFO: (
        "gauge",
        "Always 1; the labels say what is running: version, python, numba, litert.",
    ),
    RECONNECTS_TOTAL: ("counter", "Reconnect attempts, by device."),
    # --- kernel (labels: group) ---
    KERNEL_SECONDS: (
        "histogram",
        "Kernel time per poll-group frame, by group (device/group).",
    ),
    ANOMALY_ALARM: ("gauge", "1 while a kernel group alarm is active, by group."),
    # (labels: tag, kind = tag|group; level = tag|group, source = tag or group name, cause)
    TAG_ALARM: (
        "gauge",
        "1 while a tag is in alarm, by tag and kind (tag: its own alarm; group: a group "
        "containing it).",
    ),
    ALARMS_TOTAL: (
        "counter",
        "Alarm onsets, by level (tag|group), source and cause (tag: out_of_range, stuck, "
        "spike, drift, score; group: spe, t2).",
    ),
    # --- store ---
    STORE_ROWS_TOTAL: ("counter", "Rows written to history, by table."),
    STORE_QUEUE_DEPTH: ("gauge", "Frames waiting for the history writer."),
    STORE_DROPPED_TOTAL: ("counter", "Frames dropped because the store queue was full."),
    STORE_BYTES: ("gauge", "Size of the history database files."),
    STORE_RETENTION_DELETED_TOTAL: (
        "counter",
        "Rows removed by retention, by reason (age|size).",
    ),
    # --- publish (labels: reason where given) ---
    PUBLISH_MESSAGES_TOTAL: ("counter", "Messages acknowledged by the broker."),
    PUBLISH_SECONDS: (
        "histogram",
        "Time from sending a batch of outbox messages to the broker's last acknowledgement.",
    ),
    OUTBOX_DEPTH: ("gauge", "Messages waiting in the durable outbox."),
    OUTBOX_BYTES: ("gauge", "Bytes used by the outbox."),
    OUTBOX_DROPPED_TOTAL: (
        "counter",
        "Outbox messages dropped by the overflow policy (drop oldest).",
    ),
    MQTT_CONNECTED: ("gauge", "1 while connected to the MQTT broker."),
    # --- control (labels: loop, reason where given) ---
    CONTROL_MODE: (
        "gauge",
        "Active controller of a loop: 0 off, 1 manual, 2 fallback, 3 model.",
    ),
    CONTROL_FALLBACKS_TOTAL: ("counter", "Fallback entries, by loop and reason."),
    CONTROL_WRITES_TOTAL: ("counter", "Setpoint writes sent, by loop."),
    CONTROL_WRITE_ERRORS_TOTAL: ("counter", "Setpoint writes that failed, by loop."),
    CONTROL_STEP_SECONDS: ("histogram", "Control step compute time, by loop."),
    CONTROL_MODEL_MISMATCH: (
        "gauge",
        "Run-time model check: prediction error RMS / what commissioning saw, by loop.",
    ),
    CONTROL_REFUSED_TOTAL: (
        "counter",
        "Writes refused by the safety envelope, by loop.",
    ),
    # --- telemetry (labels: endpoint, code) ---
    HTTP_REQUESTS_TOTAL: (
        "counter",
        "Requests to the telemetry HTTP server, by endpoint and status code.",
    ),
    WATCHDOG_MISSED_TOTAL: (
        "counter",
        "Watchdog feeds withheld because the pipeline made no progress.",
    ),
    # --- service ---
    UP: ("gauge", "1 while the service runs."),
    CONFIG_RELOADS_TOTAL: ("counter", "SIGHUP reloads, by result (ok|refused)."),
    QUEUE_DROPPED_TOTAL: ("counter", "Items dropped from a bounded queue, by queue."),
    # --- supervision (label: component = acquire|kernel|control|store|publish|http) ---
    COMPONENT_UP: (
        "gauge",
        "1 while a supervised task or thread runs normally, 0 while failed, by component.",
    ),
    COMPONENT_CRASHES_TOTAL: (
        "counter",
        "Crashes of a supervised task or thread (logged with traceback), by component.",
    ),
    COMPONENT_RESTARTS_TOTAL: (
        "counter",
        "Restarts of a supervised task or thread after a crash, by component.",
    ),
    STORAGE_RECOVERED_TOTAL: (
        "counter",
        "Corrupt or unreadable SQLite files moved aside and started afresh, by component.",
    ),
}

# Upper bounds (seconds) of each histogram's buckets; +Inf is implicit.  Fixed per name, so
# `histogram_quantile` works across restarts and gateways.  Each spans what its stage takes
# on a Raspberry-Pi-class CPU, from well below the usual to the point of an overrun.
_POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUCKETS: dict[str, tuple[float, ...]] = {
    # a Modbus/OPC UA round trip: ~1 ms on a LAN to seconds on a serial line or a timeout
    POLL_LATENCY_SECONDS: _POLL_BUCKETS,
    # the jitted per-frame kernel: tens of microseconds, a PCA group fit a few ms
    KERNEL_SECONDS: (
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    ),
    # a PID step ~10 us, a TFLite policy ~0.1-1 ms, an MPC expert up to tens of ms
    CONTROL_STEP_SECONDS: (
        0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
        0.1, 0.25,
    ),
    # a QoS 1 batch to the broker: ms on a LAN, seconds over a cellular uplink
    PUBLISH_SECONDS: (*_POLL_BUCKETS, 10.0, 30.0),
}  # fmt: skip

# Label names of each metric, in the order the help text gives them.
LABELS: dict[str, tuple[str, ...]] = {
    POLLS_TOTAL: ("device", "group"),
    POLL_ERRORS_TOTAL: ("device", "group"),
    POLL_OVERRUNS_TOTAL: ("device", "group"),
    POLL_LATENCY_SECONDS: ("device", "group"),
    DEVICE_UP: ("device",),
    BUILD_INFO: ("version", "python", "numba", "litert"),
    RECONNECTS_TOTAL: ("device",),
    KERNEL_SECONDS: ("group",),
    ANOMALY_ALARM: ("group",),
    TAG_ALARM: ("tag", "kind"),
    ALARMS_TOTAL: ("level", "source", "cause"),
    STORE_ROWS_TOTAL: ("table",),
    STORE_QUEUE_DEPTH: (),
    STORE_DROPPED_TOTAL: (),
    STORE_BYTES: (),
    STORE_RETENTION_DELETED_TOTAL: ("reason",),
    PUBLISH_MESSAGES_TOTAL: (),
    PUBLISH_SECONDS: (),
    OUTBOX_DEPTH: (),
    OUTBOX_BYTES: (),
    OUTBOX_DROPPED_TOTAL: (),
    MQTT_CONNECTED: (),
    CONTROL_MODE: ("loop",),
    CONTROL_FALLBACKS_TOTAL: ("loop", "reason"),
    CONTROL_WRITES_TOTAL: ("loop",),
    CONTROL_WRITE_ERRORS_TOTAL: ("loop",),
    CONTROL_STEP_SECONDS: ("loop",),
    CONTROL_MODEL_MISMATCH: ("loop",),
    CONTROL_REFUSED_TOTAL: ("loop",),
    HTTP_REQUESTS_TOTAL: ("endpoint", "code"),
    WATCHDOG_MISSED_TOTAL: (),
    UP: (),
    CONFIG_RELOADS_TOTAL: ("result",),
    QUEUE_DROPPED_TOTAL: ("queue",),
    COMPONENT_UP: ("component",),
    COMPONENT_CRASHES_TOTAL: ("component",),
    COMPONENT_RESTARTS_TOTAL: ("component",),
    STORAGE_RECOVERED_TOTAL: ("component",),
}

# Which names each component must emit; checked by the compliance test.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "acquire": (
        POLLS_TOTAL,
        POLL_LATENCY_SECONDS,
        DEVICE_UP,
    ),
    "store": (STORE_ROWS_TOTAL, STORE_QUEUE_DEPTH, STORE_BYTES),
    "publish": (OUTBOX_DEPTH, MQTT_CONNECTED, PUBLISH_MESSAGES_TOTAL, PUBLISH_SECONDS),
    "control": (CONTROL_MODE, CONTROL_STEP_SECONDS),
    "kernel": (ANOMALY_ALARM, TAG_ALARM, ALARMS_TOTAL, KERNEL_SECONDS),
    "telemetry": (HTTP_REQUESTS_TOTAL,),
}

# Event kinds written to history and published on the events topic.
EVENT_ANOMALY_ON = "anomaly_on"
EVENT_ANOMALY_OFF = "anomaly_off"
EVENT_CONTROL_MODE = "control_mode"
EVENT_CONTROL_FALLBACK = "control_fallback"
EVENT_CONTROL_ACTION = "control_action"  # each control period: sp, pv, mv, active (history only)
EVENT_DEVICE_DOWN = "device_down"
EVENT_DEVICE_UP = "device_up"
EVENT_COMPONENT_CRASH = "component_crash"  # a supervised task or thread died (and why)
EVENT_STORAGE_RECOVERED = "storage_recovered"  # a corrupt file was moved aside
EVENT_WRITE_REFUSED = "write_refused"  # a write from the north (Sparkplug DCMD) refused


def startup_series(compiled: Any) -> list[tuple[str, dict[str, str]]]:
    """The series that exist, at 0 (histograms empty), from start-up for this configuration
    (an `agent.tags.Compiled`): every counter and latency histogram per configured device,
    poll group, kernel group and control loop, and the gauges whose start value is 0.

    Why: a series that appears with its first event has no earlier sample, so
    `increase(x[10m]) > 0` cannot see that first event (the first frame lost, the first
    fallback).  Series with open-ended labels (an HTTP endpoint and code, a crash of a
    component) are declared for the values known in advance.
    """
    from agent.control.safety import REASONS  # the fallback reasons; lazy: names stays a leaf

    cfg = compiled.config
    out: list[tuple[str, dict[str, str]]] = [
        (WATCHDOG_MISSED_TOTAL, {}),
        (CONFIG_RELOADS_TOTAL, {"result": "ok"}),
        (CONFIG_RELOADS_TOTAL, {"result": "refused"}),
    ]
    components = ["acquire", "kernel"]
    running = set(compiled.drivers)  # enabled devices (disabled ones are never polled)
    for device in sorted(running):
        out.append((RECONNECTS_TOTAL, {"device": device}))
        out.append((DEVICE_UP, {"device": device}))
    for g in compiled.groups:
        if g.device not in running:
            continue
        labels = {"device": g.device, "group": g.name}
        for name in (
            POLLS_TOTAL,
            POLL_ERRORS_TOTAL,
            POLL_OVERRUNS_TOTAL,
            POLL_LATENCY_SECONDS,
        ):
            out.append((name, labels))
        out.append((KERNEL_SECONDS, {"group": f"{g.device}/{g.name}"}))
        if getattr(compiled.devices[g.device], "driver", None) == "opcua":
            # a subscription's notification queue (drivers/opcua.py)
            out.append((QUEUE_DROPPED_TOTAL, {"queue": f"opcua:{g.device}/{g.name}"}))
    for kg in cfg.kernel.groups:
        out.append((ANOMALY_ALARM, {"group": kg.name}))  # 0 through the warm-up too
    if cfg.store.enabled:
        components.append("store")
        out += [
            (STORE_DROPPED_TOTAL, {}),
            (STORE_QUEUE_DEPTH, {}),
            (STORAGE_RECOVERED_TOTAL, {"component": "store"}),
        ]
        tables = ("frames", "events", "control")
        out += [(STORE_ROWS_TOTAL, {"table": t}) for t in tables]
        out += [(STORE_RETENTION_DELETED_TOTAL, {"reason": r}) for r in ("age", "size")]
    if cfg.publish.enabled:
        components.append("publish")
        out += [
            (PUBLISH_MESSAGES_TOTAL, {}),
            (PUBLISH_SECONDS, {}),
            (OUTBOX_DROPPED_TOTAL, {}),
            (MQTT_CONNECTED, {}),
            (QUEUE_DROPPED_TOTAL, {"queue": "outbox"}),
            (STORAGE_RECOVERED_TOTAL, {"component": "publish"}),
        ]
    if cfg.control.loops:
        components.append("control")
    for lp in cfg.control.loops:
        loop = {"loop": lp.name}
        for name in (
            CONTROL_WRITES_TOTAL,
            CONTROL_WRITE_ERRORS_TOTAL,
            CONTROL_REFUSED_TOTAL,
            CONTROL_STEP_SECONDS,
        ):
            out.append((name, loop))
        out += [(CONTROL_FALLBACKS_TOTAL, {**loop, "reason": r}) for r in REASONS]
    if cfg.http.enabled:
        out += [
            (HTTP_REQUESTS_TOTAL, {"endpoint": e, "code": "200"})
            for e in ("metrics", "healthz", "readyz")
        ]
    for c in components:
        out.append((COMPONENT_CRASHES_TOTAL, {"component": c}))
        out.append((COMPONENT_RESTARTS_TOTAL, {"component": c}))
    return out
