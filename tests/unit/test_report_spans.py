"""The report draws fault spans only on the signals they affect, clipped to the data, and
prints event times as local wall time (issue 14)."""

from __future__ import annotations

import time

from agent.report import _local, read_spans, visible_faults


def test_fault_spans_only_on_their_signals_and_clipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "spans.jsonl"
    log.write_text(
        '{"id": 1, "kind": "stuck", "signals": ["flow"], "start_wall": 100}\n'
        '{"id": 2, "kind": "leak", "signals": ["other"], "start_wall": 110, "end_wall": 120}\n'
        '{"id": 1, "end_wall": 130}\n'
        '{"id": 3, "kind": "drift", "signals": ["temp"], "start_wall": 190, "end_wall": 400}\n'
        '{"id": 4, "kind": "spike", "signals": ["temp"], "start_wall": 50, "end_wall": 60}\n'
    )
    faults = [
        {**f, "t0": float(f["start_wall"]), "t1": float(f.get("end_wall") or 300)}
        for f in read_spans(log)
    ]
    got = visible_faults(faults, ["flow", "temp"], t0=80.0, t_end=200.0)
    assert got == [("stuck", 20.0, 50.0), ("drift", 110.0, 120.0)]  # leak: other signal;
    # drift clipped at the end of the data; spike before the data starts: not drawn


def test_event_times_are_local_wall_time() -> None:
    t = 1_796_000_000.25
    text = _local(t)
    assert text.startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)))
    assert ".250 " in text and text.endswith(time.localtime(t).tm_zone)
