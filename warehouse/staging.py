"""Build the staged Arrow table of a batch: one row per winning event, ``STATE_COLUMNS``."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from schemas.columns import BUSINESS_COLUMNS, ColumnType
from warehouse.errors import TerminalWarehouseError
from warehouse.tables import STATE_COLUMNS

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
