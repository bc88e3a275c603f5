"""Every metric and event name edgeloop emits, with its type and help text, in one place.

Each component owns a block below and adds to it, never elsewhere.  Labels are fixed per
name (documented in the help text) so dashboards do not break.  The compliance test
(`tests/unit/test_names.py`) checks each component emits the names it lists in COMPONENTS.
"""

from __future__ import annotations

# name -> (type, help). Types: counter | gauge | summary.
METRICS: dict[str, tuple[str, str]] = {
    # --- acquire (labels: device, group) ---
    "edgeloop_polls_total": ("counter", "Poll cycles completed, by device and group."),
    "edgeloop_poll_errors_total": ("counter", "Poll cycles that failed, by device and group."),
    "edgeloop_poll_overruns_total": (
        "counter",
        "Polls skipped because the previous poll of the group was still running.",
    ),
    "edgeloop_poll_latency_seconds": ("summary", "Time of one poll cycle, by device and group."),
    "edgeloop_device_up": ("gauge", "1 when the device answers, 0 when down, by device."),
    # --- service (labels: version, python, numba, litert) ---
    "edgeloop_build_info": (
        "gauge",
        "Always 1; the labels say what is running: version, python, numba, litert.",
    ),
    "edgeloop_reconnects_total": ("counter", "Reconnect attempts, by device."),
    # --- kernel (labels: group) ---
    "edgeloop_kernel_seconds": ("summary", "Kernel time per poll-group frame, by group."),
    "edgeloop_anomaly_alarm": ("gauge", "1 while a kernel group alarm is active, by group."),
    # (labels: tag, kind = tag|group; level = tag|group, source = tag or group name, cause)
    "edgeloop_tag_alarm": (
        "gauge",
        "1 while a tag is in alarm, by tag and kind (tag: its own alarm; group: a group "
        "containing it).",
    ),
    "edgeloop_alarms_total": (
        "counter",
        "Alarm onsets, by level (tag|group), source and cause (tag: out_of_range, stuck, "
        "spike, drift, score; group: spe, t2).",
    ),
    # --- store ---
    "edgeloop_store_rows_total": ("counter", "Rows written to history, by table."),
    "edgeloop_store_queue_depth": ("gauge", "Frames waiting for the history writer."),
    "edgeloop_store_dropped_total": ("counter", "Frames dropped because the store queue was full."),
    "edgeloop_store_bytes": ("gauge", "Size of the history database files."),
    "edgeloop_store_retention_deleted_total": (
        "counter",
        "Rows removed by retention, by reason (age|size).",
    ),
    # --- publish (labels: reason where given) ---
    "edgeloop_publish_messages_total": ("counter", "Messages acknowledged by the broker."),
    "edgeloop_outbox_depth": ("gauge", "Messages waiting in the durable outbox."),
    "edgeloop_outbox_bytes": ("gauge", "Bytes used by the outbox."),
    "edgeloop_outbox_dropped_total": (
        "counter",
        "Outbox messages dropped by the overflow policy (drop oldest).",
    ),
    "edgeloop_mqtt_connected": ("gauge", "1 while connected to the MQTT broker."),
    # --- control (labels: loop, reason where given) ---
    "edgeloop_control_mode": (
        "gauge",
        "Active controller of a loop: 0 off, 1 manual, 2 fallback, 3 model.",
    ),
    "edgeloop_control_fallbacks_total": ("counter", "Fallback entries, by loop and reason."),
    "edgeloop_control_writes_total": ("counter", "Setpoint writes sent, by loop."),
    "edgeloop_control_write_errors_total": ("counter", "Setpoint writes that failed, by loop."),
    "edgeloop_control_step_seconds": ("summary", "Control step compute time, by loop."),
    "edgeloop_control_model_mismatch": (
        "gauge",
        "Run-time model check: prediction error RMS / what commissioning saw, by loop.",
    ),
    "edgeloop_control_refused_total": (
        "counter",
        "Writes refused by the safety envelope, by loop.",
    ),
    # --- telemetry (labels: endpoint, code) ---
    "edgeloop_http_requests_total": (
        "counter",
        "Requests to the telemetry HTTP server, by endpoint and status code.",
    ),
    "edgeloop_watchdog_missed_total": (
        "counter",
        "Watchdog feeds withheld because the pipeline made no progress.",
    ),
    # --- service ---
    "edgeloop_up": ("gauge", "1 while the service runs."),
    "edgeloop_config_reloads_total": ("counter", "SIGHUP reloads, by result (ok|refused)."),
    "edgeloop_queue_dropped_total": ("counter", "Items dropped from a bounded queue, by queue."),
    # --- supervision (label: component = acquire|kernel|control|store|publish|http) ---
    "edgeloop_component_up": (
        "gauge",
        "1 while a supervised task or thread runs normally, 0 while failed, by component.",
    ),
    "edgeloop_component_crashes_total": (
        "counter",
        "Crashes of a supervised task or thread (logged with traceback), by component.",
    ),
    "edgeloop_component_restarts_total": (
        "counter",
        "Restarts of a supervised task or thread after a crash, by component.",
    ),
    "edgeloop_storage_recovered_total": (
        "counter",
        "Corrupt or unreadable SQLite files moved aside and started afresh, by component.",
    ),
}

# Which names each component must emit; checked by the compliance test.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "acquire": (
        "edgeloop_polls_total",
        "edgeloop_poll_latency_seconds",
        "edgeloop_device_up",
    ),
    "store": ("edgeloop_store_rows_total", "edgeloop_store_queue_depth", "edgeloop_store_bytes"),
    "publish": ("edgeloop_outbox_depth", "edgeloop_mqtt_connected"),
    "control": ("edgeloop_control_mode", "edgeloop_control_step_seconds"),
    "kernel": ("edgeloop_anomaly_alarm", "edgeloop_tag_alarm", "edgeloop_alarms_total"),
    "telemetry": ("edgeloop_http_requests_total",),
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
