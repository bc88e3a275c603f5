"""The JSON data message (orjson from numpy) is the documented document, to every parser."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np

from agent.publish import payloads
from agent.publish.payloads import Frame


def _doc_bytes(seq: int, epoch: str | None, names: list[str], frames: list[Frame]) -> bytes:
    """docs/northbound.md's data message, as the stdlib's json.dumps makes it."""

    def floats(a: np.ndarray) -> list[float | None]:
        return [v if math.isfinite(v) else None for v in a.tolist()]

    out = []
    for fr in frames:
        f = {
            "ts": payloads.iso_ms(fr.ts_ns),
            "ts_ns": fr.ts_ns,
            "raw": floats(fr.raw),
            "value": floats(fr.value),
            "quality": fr.quality.tolist(),
            "flags": fr.flags.tolist(),
            "score": floats(fr.score),
        }
        if fr.reason is not None:
            f["reason"] = fr.reason.tolist()
        if fr.texts:
            f["texts"] = {names[i - 10]: v for i, v in fr.texts.items()}
        out.append(f)
    doc = {
        "v": 1,
        "seq": seq,
        "epoch": epoch,
        "site": "plant \u00e9",
        "device": "plc/1",
        "group": "fast",
        "tags": names,
        "frames": out,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _frame(k: int, n: int, reason: bool, texts: dict[int, str]) -> Frame:
    rng = np.random.default_rng(k)
    raw = rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, size=n)
    raw[0] = math.nan
    raw[1] = math.inf
    return Frame(
        ts_ns=1_700_000_000_123_456_789 + k,
        start=10,
        raw=raw,
        value=np.round(raw, 3),
        quality=np.array([0, 1, 2] * (n // 3) + [0] * (n % 3), dtype=np.int16),
        flags=np.arange(n, dtype=np.uint16),
        score=np.where(np.arange(n) % 2 == 0, 0.0, -math.inf),
        texts=texts,
        reason=np.arange(n, dtype=np.uint16) if reason else None,
    )


def _strict(text: bytes) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON payload")

    return json.loads(text, parse_constant=refuse)


def test_json_frames_match_the_documented_encoding() -> None:
    names = [f"t{i}" for i in range(7)] + ['naïve "quoted"\n', "日本"]
    frames = [
        _frame(0, 9, True, {}),
        _frame(1, 9, False, {12: 'a "text"', 17: "ünïcode"}),
    ]
    for epoch in (None, "0123abcd"):
        got = payloads.json_frames(42, epoch, "plant \u00e9", "plc/1", "fast", names, 10, frames)
        want = _doc_bytes(42, epoch, names, frames)
        # the same document to a parser: every float bit-identical, NaN/inf as null
        assert _strict(got) == _strict(want)
        assert len(got) <= len(want)  # compact (and UTF-8, where json.dumps says \\u00e9)


def test_json_frames_floats_round_trip_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    raw = rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, size=500)
    raw[:6] = [0.0, -0.0, 1e16, 1e-5, 5e-324, 1.7976931348623157e308]
    fr = Frame(1, 0, raw, raw, np.zeros(500, np.int16), np.zeros(500, np.uint16), raw, {}, None)
    doc = _strict(payloads.json_frames(1, None, "s", "d", "g", ["x"] * 500, 0, [fr]))
    back = np.array(doc["frames"][0]["raw"], dtype=np.float64)  # type: ignore[index]
    assert back.tobytes() == raw.tobytes()


def test_a_json_publisher_never_imports_protobuf(tmp_path) -> None:
    """protobuf and the Sparkplug module cost ~15 MB resident: only Sparkplug loads them."""
    code = f"""
import sys
from agent.publish import PublishConfig, Publisher
from agent.tags import TagTable
for enc in ("json", "json_flat", "sparkplug_b"):
    cfg = PublishConfig.model_validate({{"encoding": enc, "outbox": {{"path": "{tmp_path}/o.db"}}}})
    Publisher(cfg, "site", TagTable.for_names(["a"]))
    print(enc, "google.protobuf" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["json", "False", "json_flat", "False", "sparkplug_b", "True"]
