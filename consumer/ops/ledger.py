"""The warehouse ledger as the operations commands read it: the last successful batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consumer.ops.render import utc_iso
from consumer.run.retry import retry_transient
from warehouse.base import Inspector
from warehouse.inspect import last_batch_sql
from warehouse.tables import Dialect, TableNames

READ_RETRY_S = 30.0
"""How long reads wait out a DuckDB file held by a writing instance."""


@dataclass(frozen=True, slots=True)
class LastBatch:
    """The newest ledger row of a topic; times are naive UTC, as the ledger stores them."""

    batch_id: str
    committed_at: datetime
    newest_op_time: datetime | None
    batches: int

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "committed_at": utc_iso(self.committed_at),
            "newest_op_time": utc_iso(self.newest_op_time),
            "batches": self.batches,
        }


def fetch(
    inspector: Inspector, sql: str, params: tuple[object, ...] = (), retry_s: float = READ_RETRY_S
) -> list[tuple[Any, ...]]:
    """``inspector.fetch``, retrying transient errors (a locked DuckDB file) for ``retry_s``."""
    return retry_transient(lambda: inspector.fetch(sql, params), retry_s, "warehouse read")


def last_batch(
    inspector: Inspector, names: TableNames, dialect: Dialect, topic: str,
    retry_s: float = READ_RETRY_S,
) -> LastBatch | None:
    """The last successful batch of ``topic``; None when the ledger holds none."""
    rows = fetch(inspector, last_batch_sql(names.ledger, dialect), (topic,), retry_s)
    if not rows:
        return None
    batch_id, committed_at, newest, batches = rows[0]
    return LastBatch(str(batch_id), committed_at, newest, int(batches))
