"""The `store:` YAML section: where history lives, how long it is kept, how writes batch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.configbase import StrictModel


class StoreConfig(StrictModel):
    """Local SQLite history. Every default of the store lives here.

    Retention removes the oldest frames when either limit is reached: rows older than
    `retention_days`, or a database larger than `max_mb` (pages in use, WAL included).
    Every number has an upper bound: an absurd value (1e6 days) is a typo, and once killed
    the history writer with an integer overflow; `check` refuses it with its line.
    """

    enabled: bool = Field(True, description="Keep a local history of every frame.")
    path: str = Field(
        "/var/lib/edgeloop/history.db", description="SQLite database file of the history."
    )
    retention_days: float = Field(
        7.0, gt=0, le=36_500, description="Frames older than this many days are deleted."
    )  # 100 years
    max_mb: float = Field(
        2048.0,
        gt=0,
        le=1_048_576,
        description="Size limit of the database in MiB (WAL included); oldest frames go first.",
    )  # 1 TiB
    # A frame waits at most batch_ms before its transaction commits; kill -9 loses at most that.
    batch_ms: int = Field(
        500, ge=1, le=60_000, description="Longest wait in ms before queued frames are committed."
    )
    batch_max_frames: int = Field(
        2000, ge=1, le=1_000_000, description="Most frames committed in one transaction."
    )
    # Frames waiting for the writer thread; beyond this new frames are dropped and counted.
    queue_max: int = Field(
        20_000,
        ge=10,
        le=1_000_000,
        description="Frames waiting for the writer; beyond it new frames are dropped, counted.",
    )
    retention_interval_s: float = Field(
        60.0, gt=0, le=86_400, description="Seconds between two retention passes."
    )
    # normal: survives a process crash / kill -9 (WAL); full: also survives power loss, slower.
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite sync: normal survives a crash, full also a power loss (slower).",
    )
