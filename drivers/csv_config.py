"""The CSV replay driver's config: a recorded CSV file played back as a device.

Each tag is a column of the file; each poll of a group takes the next row (or, with
`time_column`, the row due at the time since connect, at the recorded pace); after the last
row the file starts again (`loop: true`) or the values hold with quality stale.  Writable
tags record what was written and read it back.  Useful to commission kernel settings and
control loops on a recorded day without a PLC, and the worked example of "how to write a
driver" in docs/architecture.md.  Registered in `drivers/registry.py`; the reading lives in
`drivers/csv_replay.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from drivers.base import Point
from drivers.config_common import DeviceBase, GroupBase, Problems, TagBase, raise_if
from drivers.registry import DriverSpec

CsvType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "string"]


class CsvTag(TagBase):
    """One column of the file, replayed as a tag."""

    ADDRESSED_BY: ClassVar[str] = "column"

    column: str = Field(min_length=1, description="Header of the column holding the values.")
    type: CsvType = Field(
        "float64", description="How the cells are read: numbers, bool (true/false/1/0), string."
    )

    @model_validator(mode="after")
    def _check(self) -> CsvTag:
        raise_if(self._common_problems())
        return self


class CsvPollGroup(GroupBase):
    """Tags replayed together: each poll of the group takes one row."""

    mode: Literal["poll"] = Field("poll", description="CSV groups are polled.")
    tags: list[CsvTag] = Field(min_length=1, description="Tags read together at this interval.")


class CsvDevice(DeviceBase):
    """A CSV file with a header row, replayed row by row as if a PLC sent it."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = ("file",)

    driver: Literal["csv"] = Field(description="csv: replay the columns of a CSV file.")
    file: str = Field(
        min_length=1, description="CSV file with a header row; relative to the config file."
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="Cell separator.")
    loop: bool = Field(
        True,
        description="After the last row start again at the first; false: hold the last "
        "values with quality stale.",
    )
    time_column: str | None = Field(
        None,
        min_length=1,
        description="Column of row times (seconds, or ISO 8601): rows are replayed at their "
        "recorded pace instead of one row per poll.",
    )
    timeout_s: float = Field(
        1.0, gt=0, le=60, description="Guard around each read; a file read never takes long."
    )
    poll_groups: list[CsvPollGroup] = Field(
        min_length=1, description="Groups of tags, each replayed at its own interval."
    )

    @model_validator(mode="after")
    def _check(self) -> CsvDevice:
        raise_if(self._device_problems())
        return self

    def point(self, tag: CsvTag, index: int) -> Point:
        return Point(index=index, dtype=tag.type, ref=tag.column, **tag.engineering())

    def columns(self) -> dict[tuple[str | int, ...], str]:
        """Every column the device reads, by the YAML path (relative to the device) of the
        key that names it."""
        out: dict[tuple[str | int, ...], str] = {}
        if self.time_column:
            out[("time_column",)] = self.time_column
        for gi, g in enumerate(self.poll_groups):
            for ti, t in enumerate(g.tags):
                out[("poll_groups", gi, "tags", ti, "column")] = t.column
        return out

    def file_problems(self) -> Problems:
        """The file must be readable CSV with a header naming every configured column."""
        from drivers.csv_replay import CsvFileError, read_header

        try:
            header = read_header(self.file, self.delimiter)
        except CsvFileError as exc:
            return [(("file",), str(exc))]
        return [
            (path, f"no column {name!r} in {Path(self.file).name} (columns: {_listing(header)})")
            for path, name in self.columns().items()
            if name not in header
        ]


def _listing(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


SPEC = DriverSpec(name="csv", device=CsvDevice, factory="drivers.csv_replay:create", label="CSV")
