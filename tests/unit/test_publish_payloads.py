"""The JSON data message assembled from parts is the documented document, byte for byte."""

from __future__ import annotations

import json
import math

import numpy as np

from agent.publish import payloads
from agent.publish.payloads import Frame


def _doc_bytes(seq: int, epoch: str | None, names: list[str], frames: list[Frame]) -> bytes:
    """docs/northbound.md's data message, as json.dumps makes it (the former encoder)."""

    def floats(a: np.ndarray) -> list[float | None]:
        return [v if math.isfinite(v) else None for v in a.tolist()]

    out = []
    for fr in frames:
        f = {
            "ts": payloads._iso(fr.ts_ns),
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


def test_json_frames_match_the_documented_encoding() -> None:
    names = [f"t{i}" for i in range(7)] + ['naïve "quoted"\n', "日本"]
    frames = [
        _frame(0, 9, True, {}),
        _frame(1, 9, False, {12: 'a "text"', 17: "ünïcode"}),
    ]
    for epoch in (None, "0123abcd"):
        got = payloads.json_frames(
            42,
            epoch,
            "plant \u00e9",
            "plc/1",
            "fast",
            names,
            payloads.names_json(names),
            10,
            frames,
        )
        assert got == _doc_bytes(42, epoch, names, frames)
        json.loads(got)  # strict JSON: no NaN or Infinity
