"""Build the staged Arrow table of a batch: one row per winning event, ``STATE_COLUMNS``.

With history on, the window's distinct versions are staged the same way (same columns), one row
per (key, version)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from schemas.columns import BUSINESS_COLUMNS, ColumnType
from warehouse.base import Batch
from warehouse.errors import TerminalWarehouseError
from warehouse.tables import STATE_COLUMNS, TableNames

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    "int": pa.int32(),
    "bigint": pa.int64(),
    "text": pa.string(),
    "timestamp": pa.timestamp("us"),
    "bool": pa.bool_(),
}

STAGED_SCHEMA = pa.schema(
    [pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in STATE_COLUMNS]
)

def assert_unique_keys(rows: pa.Table) -> None:
    """A MERGE source must hold one row per key; the reducer guarantees it, this checks it."""
    distinct = pc.count_distinct(rows.column("kyc_profile_id")).as_py()
    if distinct != rows.num_rows:
        raise TerminalWarehouseError(
            f"staged batch has {rows.num_rows} rows but {distinct} distinct keys"
        )


def assert_unique_versions(rows: pa.Table) -> None:
    """The staged history holds each (key, version) once; the reducer guarantees it."""
    versions = rows.select(["kyc_profile_id", "op_time", "src_partition", "src_offset"])
    distinct = versions.group_by(versions.column_names).aggregate([]).num_rows
    if distinct != rows.num_rows:
        raise TerminalWarehouseError(
            f"staged history has {rows.num_rows} rows but {distinct} distinct versions"
        )


def history_of(batch: Batch, names: TableNames) -> pa.Table | None:
    """The versions a writer adds to its history table: None when history is off; checked to be
    distinct. History on and a batch without its versions is a programming error: refused, so
    that history never silently misses versions."""
    if names.history is None:
        return None
    if batch.history is None:
        raise TerminalWarehouseError(
            f"history is on ({names.history.sql()}) but batch {batch.batch_id} carries no versions"
        )
    assert_unique_versions(batch.history)
    return batch.history


def stage_frame(rows: pl.DataFrame, batch_id: str, synced_at_us: int) -> pa.Table:
    """The staged table of a reduced frame: ``BUSINESS_COLUMNS`` with integer timestamps, then
    op_type, op_time, src_partition, src_offset (any extra column is ignored)."""
    timestamp = pl.Datetime("us")
    staged = rows.select(
        *(
            pl.col(c.name).cast(timestamp) if c.type == "timestamp" else pl.col(c.name)
            for c in BUSINESS_COLUMNS
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
