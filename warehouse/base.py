"""The writer interface: open, apply one batch in one transaction, close."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from batcher.ranges import PartitionRange
from schemas.columns import BASE_SCHEMA, TableSchema
from schemas.evolution import TableState
from warehouse.tables import TableNames


@dataclass(frozen=True, slots=True)
class Batch:
    """One reduced window, ready to write. ``rows`` has one row per key (the state columns of
    ``schema``, whose ``changes`` the writer makes before or with the MERGE); ``history``, with
    history on, one row per distinct (key, version) of the window (the same columns; the winners
    among them)."""

    batch_id: str
    topic: str
    consumer_group: str
    rows: pa.Table
    ranges: tuple[PartitionRange, ...]
    events_in: int
    invalid_events: int
    started_at: datetime
    decode_ms: int = 0
    schema: TableSchema = BASE_SCHEMA
    history: pa.Table | None = None

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


def ledger_row(
    batch: Batch, result: ApplyResult, committed_at: datetime, write_ms: int
) -> list[Any]:
    """The batch's ledger row, values in ``tables.LEDGER_COLUMNS`` order (bound, never
    formatted into the SQL)."""
    return [
        batch.batch_id, batch.topic, batch.consumer_group, batch.started_at, committed_at,
        batch.events_in, batch.invalid_events, batch.rows.num_rows,
        result.inserted, result.updated, result.deleted, result.skipped_stale,
        result.min_op_time, result.max_op_time, batch.offsets_json(), batch.decode_ms, write_ms,
    ]


class Warehouse(Protocol):
    """A MERGE writer. ``apply`` is all-or-nothing: it commits, or raises and changed nothing."""

    def open(self) -> None:
        """Check connectivity and create the tables and view if missing."""

    def table_state(self) -> TableState:
        """The state table's business columns, recorded column policy, whether it has rows."""

    def apply(self, batch: Batch) -> ApplyResult:
        """Stage, MERGE with the guard, write the ledger row, commit — one transaction."""

    def close(self) -> None:
        """Release connections. Safe to call twice."""


@runtime_checkable
class Inspector(Protocol):
    """Read-only queries for the operations commands (``lag``, ``check``) on the writer's own
    objects, ``names`` (qualified and cased as the writer renders them)."""

    names: TableNames

    def table_state(self) -> TableState:
        """The state table's business columns, recorded column policy, whether it has rows."""
        ...

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only query with bound ``params`` (``?`` marks); all rows."""
        ...


@runtime_checkable
class Refresher(Protocol):
    """Full refresh beside the live writers (``replay --full-refresh``): tables built on the
    side under the rebuild names are brought level with the live ones and swapped in.
    ``warehouse.swap`` renders the statements per dialect; ``names`` are the live objects.
    Every method but ``swap_in`` may be repeated safely after a failure."""

    names: TableNames

    def prepare(self) -> None:
        """Create the rebuild objects if missing."""
        ...

    def discard(self) -> None:
        """Drop the rebuild objects if they exist."""
        ...

    def level(self, built: Sequence[PartitionRange], into_live: bool) -> None:
        """Merge the rows outside the ``built`` offset ranges, under the version guard: from
        the live tables into the rebuild (``into_live`` False), or from the swapped-out tables
        into the live names (True)."""
        ...

    def swap_in(self, built: Sequence[PartitionRange]) -> None:
        """Exchange the rebuild and the live tables atomically; the rebuild names then hold
        the tables swapped out. DuckDB also levels the rebuild in the same transaction."""
        ...

    def finish(self) -> None:
        """Copy the rebuild's ledger rows and column metadata into the live ones, drop the
        rebuild objects."""
        ...

    def table_state(self) -> TableState:
        """The live state table's columns, recorded column policy, whether it has rows."""
        ...

    def outside_rows(self, built: Sequence[PartitionRange]) -> int:
        """Live rows whose version lies outside ``built``, history versions included: what
        leveling would copy."""
        ...
