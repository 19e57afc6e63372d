"""Build the staged Arrow table of a batch: one row per winning event, ``STATE_COLUMNS``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from batcher.reducer import Winner, gc_paused
from warehouse.tables import DATA_COLUMNS, STATE_COLUMNS, ColumnType

_ARROW: dict[ColumnType, pa.DataType] = {
    "int": pa.int32(),
    "bigint": pa.int64(),
    "text": pa.string(),
    "timestamp": pa.timestamp("us"),
    "bool": pa.bool_(),
}

STAGED_SCHEMA = pa.schema(
    [pa.field(c.name, _ARROW[c.type], nullable=c.nullable) for c in STATE_COLUMNS]
)

Row = tuple[Any, ...]
"""Values of ``DATA_COLUMNS`` in order, timestamps as integers (microseconds, UTC)."""


def build_staged(winners: Sequence[Winner[Row]], batch_id: str, synced_at_us: int) -> pa.Table:
    """Column-wise build of the batch; timestamps stay integers until Arrow casts them."""
    with gc_paused():
        return _build_staged(winners, batch_id, synced_at_us)


def _build_staged(winners: Sequence[Winner[Row]], batch_id: str, synced_at_us: int) -> pa.Table:
    n = len(winners)
    columns: list[Sequence[Any]] = (
        [list(c) for c in zip(*(w.payload for w in winners), strict=True)]
        if n else [[] for _ in DATA_COLUMNS]
    )
    op_type = [w.op_type for w in winners]
    arrays: list[pa.Array] = [
        pa.array(values, type=_ARROW[c.type])
        for c, values in zip(DATA_COLUMNS, columns, strict=True)
    ]
    arrays += [
        pa.array(op_type, type=pa.string()),
        pa.array([w.version.op_time for w in winners], type=pa.timestamp("us")),
        pa.array([w.version.partition for w in winners], type=pa.int32()),
        pa.array([w.version.offset for w in winners], type=pa.int64()),
        pa.array([o == "DELETE" for o in op_type], type=pa.bool_()),
        pa.array([batch_id] * n, type=pa.string()),
        pa.array([synced_at_us] * n, type=pa.timestamp("us")),
    ]
    return pa.Table.from_arrays(arrays, schema=STAGED_SCHEMA)


def assert_unique_keys(rows: pa.Table) -> None:
    """A MERGE source must hold one row per key; the reducer guarantees it, this checks it."""
    distinct = pc.count_distinct(rows.column("kyc_profile_id")).as_py()
    if distinct != rows.num_rows:
        raise ValueError(
            f"staged batch has {rows.num_rows} rows but {distinct} distinct keys"
        )


def stage_frame(rows: pl.DataFrame, batch_id: str, synced_at_us: int) -> pa.Table:
    """The staged table of a reduced frame: ``DATA_COLUMNS`` with integer timestamps, then
    op_type, op_time, src_partition, src_offset (any extra column is ignored)."""
    timestamp = pl.Datetime("us")
    staged = rows.select(
        *(
            pl.col(c.name).cast(timestamp) if c.type == "timestamp" else pl.col(c.name)
            for c in DATA_COLUMNS
        ),
        pl.col("op_type").cast(pl.String),
        pl.col("op_time").cast(timestamp),
        pl.col("src_partition").cast(pl.Int32),
        pl.col("src_offset").cast(pl.Int64),
        (pl.col("op_type").cast(pl.String) == "DELETE").alias("is_deleted"),
        pl.lit(batch_id, pl.String).alias("batch_id"),
        pl.lit(synced_at_us, pl.Int64).cast(timestamp).alias("synced_at"),
    ).to_arrow(compat_level=pl.CompatLevel.oldest())
    columns = [
        column.cast(field.type) for column, field in zip(staged.columns, STAGED_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=STAGED_SCHEMA)
