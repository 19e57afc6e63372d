"""The writer interface: open, apply one batch in one transaction, close."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pyarrow as pa

from batcher.events import PartitionRange


@dataclass(frozen=True, slots=True)
class Batch:
    """One reduced window, ready to write. ``rows`` has one row per key (``STATE_COLUMNS``)."""

    batch_id: str
    topic: str
    consumer_group: str
    rows: pa.Table
    ranges: tuple[PartitionRange, ...]
    events_in: int
    invalid_events: int
    started_at: datetime
    decode_ms: int = 0

    def offsets_json(self) -> str:
        return json.dumps(
            [{"partition": r.partition, "first": r.first, "next": r.next_offset}
             for r in self.ranges],
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one applied batch did to the table."""

    inserted: int
    updated: int
    deleted: int
    skipped_stale: int
    min_op_time: datetime | None
    max_op_time: datetime | None
    write_s: float

    @property
    def applied(self) -> int:
        return self.inserted + self.updated + self.deleted


class Warehouse(Protocol):
    """A MERGE writer. ``apply`` is all-or-nothing: it commits, or raises and changed nothing."""

    def open(self) -> None:
        """Check connectivity and create the tables and view if missing."""

    def apply(self, batch: Batch) -> ApplyResult:
        """Stage, MERGE with the guard, write the ledger row, commit — one transaction."""

    def close(self) -> None:
        """Release connections. Safe to call twice."""
