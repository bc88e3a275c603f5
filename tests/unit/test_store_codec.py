"""Pure parts of the store: the frame blob layout and time parsing."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from agent.store.history import (
    BYTES_PER_TAG,
    LEGACY_BYTES_PER_TAG,
    StoreError,
    iso,
    pack_frame,
    to_ns,
    unpack_frames,
)


def _slice(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=n),
        rng.normal(size=n),
        rng.random(n),
        rng.integers(0, 2**16, n).astype(np.uint16),
        rng.integers(0, 5, n).astype(np.uint8),
        rng.integers(0, 2**16, n).astype(np.uint16),
    )


def test_pack_is_29_bytes_per_tag_and_round_trips() -> None:
    frames = [_slice(7, s) for s in range(5)]
    blobs = [pack_frame(*f) for f in frames]
    assert BYTES_PER_TAG == 29
    assert all(len(b) == 7 * BYTES_PER_TAG for b in blobs)
    out = unpack_frames(list(range(5)), blobs, 7)
    for r, (raw, value, score, flags, quality, reason) in enumerate(frames):
        np.testing.assert_array_equal(out.reason[r], reason)
        np.testing.assert_array_equal(out.raw[r], raw)
        np.testing.assert_array_equal(out.value[r], value)
        np.testing.assert_array_equal(out.score[r], score)
        np.testing.assert_array_equal(out.flags[r], flags)
        np.testing.assert_array_equal(out.quality[r], quality)
    assert out.ts_ns.tolist() == [0, 1, 2, 3, 4]


def test_rows_from_before_the_reason_column_still_read_with_reason_0() -> None:
    """A history file written by the previous release (27 bytes a tag, no reason) mixed
    with new rows in one group: both decode, the old rows with reason 0."""
    old, new = _slice(4, 1), _slice(4, 2)
    legacy = pack_frame(*old)[: 4 * LEGACY_BYTES_PER_TAG]
    out = unpack_frames([0, 1], [legacy, pack_frame(*new)], 4)
    np.testing.assert_array_equal(out.quality[0], old[4])
    np.testing.assert_array_equal(out.raw[1], new[0])
    assert out.reason[0].tolist() == [0] * 4
    np.testing.assert_array_equal(out.reason[1], new[5])


def test_pack_copies_so_later_changes_do_not_leak() -> None:
    raw, value, score, flags, quality, _ = _slice(3, 1)
    blob = pack_frame(raw, value, score, flags, quality)
    raw[:] = 99.0
    assert unpack_frames([0], [blob], 3).raw[0, 0] != 99.0


def test_nan_survives() -> None:
    raw = np.array([np.nan, 1.0])
    z = np.zeros(2)
    out = unpack_frames([0], [pack_frame(raw, z, z, z.astype(np.uint16), z.astype(np.uint8))], 2)
    assert np.isnan(out.raw[0, 0]) and out.raw[0, 1] == 1.0


def test_wrong_blob_size_is_an_error() -> None:
    with pytest.raises(StoreError, match="do not match"):
        unpack_frames([0], [b"\x00" * 10], 2)


def test_time_forms() -> None:
    assert to_ns(1700000000) == 1_700_000_000 * 10**9
    assert to_ns("1700000000.5") == 1_700_000_000_500_000_000
    assert to_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert to_ns("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9
    assert to_ns(dt.datetime(2023, 11, 14, 22, 13, 20)) == 1_700_000_000 * 10**9  # naive = UTC
    assert iso(1_700_000_000 * 10**9) == "2023-11-14T22:13:20.000000Z"
    with pytest.raises(StoreError, match="not a time"):
        to_ns("yesterday")
