"""Encoding of one frame row and the time arguments of reads.

A frame of a group of `n` tags is packed as little-endian `raw f8[n] | value f8[n] |
score f8[n] | flags u2[n] | quality u1[n] | reason u2[n]` (29 bytes per tag; rows of
earlier releases, without the reason, still read).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.store.schema import StoreError

BYTES_PER_TAG = 29  # 3 x f8 + u2 flags + u1 quality + u2 reason
LEGACY_BYTES_PER_TAG = 27  # rows written before the reason was stored: read as reason 0

# --- encoding of one frame ---------------------------------------------------------------


def pack_frame(
    raw: np.ndarray,
    value: np.ndarray,
    score: np.ndarray,
    flags: np.ndarray,
    quality: np.ndarray,
    reason: np.ndarray | None = None,
) -> bytes:
    """Pack one group slice into the row blob (copies, so the table may change afterwards)."""
    why = np.zeros(len(raw), "<u2") if reason is None else reason.astype("<u2", copy=False)
    return b"".join(
        (
            raw.astype("<f8", copy=False).tobytes(),
            value.astype("<f8", copy=False).tobytes(),
            score.astype("<f8", copy=False).tobytes(),
            flags.astype("<u2", copy=False).tobytes(),
            quality.astype("u1", copy=False).tobytes(),
            why.tobytes(),
        )
    )


@dataclass(frozen=True, slots=True)
class Frames:
    """Decoded frames of one group version: arrays of shape (samples, tags)."""

    ts_ns: np.ndarray
    raw: np.ndarray
    value: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    quality: np.ndarray
    reason: np.ndarray  # `drivers.base.Reason` codes, 0 where good (and in legacy rows)


def unpack_frames(ts_ns: Sequence[int], blobs: Sequence[bytes], n: int) -> Frames:
    """Decode many row blobs of an `n`-tag group in one numpy pass."""
    m = len(blobs)
    joined = b"".join(blobs)
    if len(joined) != m * n * BYTES_PER_TAG and all(
        len(b) in (n * BYTES_PER_TAG, n * LEGACY_BYTES_PER_TAG) for b in blobs
    ):  # a file that has rows from before the reason column: pad them with reason 0
        pad = bytes(2 * n)
        joined = b"".join(b if len(b) == n * BYTES_PER_TAG else b + pad for b in blobs)
    buf = np.frombuffer(joined, dtype=np.uint8)
    if buf.size != m * n * BYTES_PER_TAG:
        raise StoreError(f"frame blobs do not match a {n}-tag group ({buf.size} bytes, {m} rows)")
    rows = buf.reshape(m, n * BYTES_PER_TAG)
    o = 8 * n

    def col(a: int, b: int, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(rows[:, a:b]).view(dtype).reshape(m, n)

    return Frames(
        ts_ns=np.asarray(ts_ns, dtype=np.int64),
        raw=col(0, o, "<f8"),
        value=col(o, 2 * o, "<f8"),
        score=col(2 * o, 3 * o, "<f8"),
        flags=col(3 * o, 3 * o + 2 * n, "<u2"),
        quality=col(3 * o + 2 * n, 3 * o + 3 * n, "u1"),
        reason=col(3 * o + 3 * n, 3 * o + 5 * n, "<u2"),
    )


# --- time arguments ------------------------------------------------------------------------


def to_ns(t: float | int | dt.datetime | str) -> int:
    """Epoch seconds (int/float), an aware/naive-UTC datetime, or an ISO 8601 / epoch string."""
    if isinstance(t, str):
        s = t.strip()
        try:
            return round(float(s) * 1e9)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError as exc:
            raise StoreError(f"not a time (ISO 8601 or epoch seconds): {t!r}") from exc
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return round(t.timestamp() * 1e6) * 1000
    return round(float(t) * 1e9)


def iso(ts_ns: int) -> str:
    """UTC ISO 8601 with microseconds, the form export writes."""
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return d.isoformat(timespec="microseconds").replace("+00:00", "Z")
