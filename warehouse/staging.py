"""Build the staged Arrow table of a batch: one row per winning event, the state table's columns
for the batch's ``TableSchema`` (``tables.state_columns``).

With history on, the window's distinct versions are staged the same way (same columns, same
schema), one row per (key, version)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from schemas.columns import BASE_SCHEMA, KEY, Column, TableSchema
from warehouse.base import Batch
from warehouse.errors import TerminalWarehouseError
from warehouse.tables import TableNames, state_columns


def arrow_type(column: Column) -> pa.DataType:
    """The Arrow type a column is staged as."""
    kind = column.type
    if kind == "decimal":
        return pa.decimal128(column.precision, column.scale)
    return {
        "bool": pa.bool_(),
        "int": pa.int32(),
        "bigint": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "text": pa.string(),
        "binary": pa.binary(),
        "date": pa.date32(),
        "time": pa.time64("us"),
        "timestamp": pa.timestamp("us"),
        "uuid": pa.string(),
        "json": pa.string(),
    }[kind]


BATCH_ID_TYPE = pa.dictionary(pa.int32(), pa.string())
"""``batch_id`` is staged dictionary-encoded: one value for every row of the batch, so 4 bytes a
row instead of the id's 32 (about 30 MiB less at the peak of a 1M-profile flush). The warehouse
reads it as text."""


def staged_schema(schema: TableSchema = BASE_SCHEMA) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, BATCH_ID_TYPE if c.name == "batch_id" else arrow_type(c),
                  nullable=c.nullable)
         for c in state_columns(schema)]
    )


def batch_id_column(batch_id: str, rows: int) -> pa.DictionaryArray:
    """The staged ``batch_id`` column: ``rows`` times ``batch_id``, dictionary-encoded."""
    return pa.DictionaryArray.from_arrays(
        pa.repeat(pa.scalar(0, pa.int32()), rows), pa.array([batch_id], pa.string())
    )


STAGED_SCHEMA = staged_schema()


def assert_unique_keys(rows: pa.Table) -> None:
    """A MERGE source must hold one row per key; the reducer guarantees it, this checks it.

    Integer keys are sorted (a copy of the key column), not hashed: a hash set of a million keys
    is ~90 MiB, held beside the staged table at the peak of a flush, and Arrow's default pool
    would keep it for the process's life. Other keys are hashed with the system allocator."""
    keys = rows.column(KEY)
    if pa.types.is_integer(keys.type) and keys.null_count == 0:
        ordered = pl.Series(keys).sort()
        repeats = (ordered.slice(1) == ordered.slice(0, max(len(ordered) - 1, 0))).sum()
        distinct = rows.num_rows - int(repeats)
    else:
        distinct = pc.count_distinct(keys, memory_pool=pa.system_memory_pool()).as_py()
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
    distinct and staged with the rows' columns (the batch's ``schema``). History on and a batch
    without its versions is a programming error: refused, so that history never silently misses
    versions."""
    if names.history is None:
        return None
    if batch.history is None:
        raise TerminalWarehouseError(
            f"history is on ({names.history.sql()}) but batch {batch.batch_id} carries no versions"
        )
    if batch.history.column_names != batch.rows.column_names:
        raise TerminalWarehouseError(
            f"batch {batch.batch_id}: staged versions have columns {batch.history.column_names}, "
            f"its rows {batch.rows.column_names}"
        )
    assert_unique_versions(batch.history)
    return batch.history


def _business(rows: pl.DataFrame, column: Column) -> pl.Expr:
    """One business column of the reduced frame as staged: null where no event of the window
    had the field; timestamps, dates and times from their integers."""
    if column.name not in rows.columns:
        return pl.lit(None, pl.Null).alias(column.name)
    value = pl.col(column.name)
    if column.type == "timestamp":
        return value.cast(pl.Datetime("us"))
    if column.type == "date":
        return value.cast(pl.Int32).cast(pl.Date)
    if column.type == "time":
        return (value.cast(pl.Int64) * 1000).cast(pl.Time)
    return value


def stage_frame(
    rows: pl.DataFrame, batch_id: str, synced_at_us: int, schema: TableSchema = BASE_SCHEMA
) -> pa.Table:
    """The staged table of a reduced frame: the business columns of ``schema`` (values as
    decoded: timestamps as integers), then op_type, op_time, src_partition, src_offset (any
    extra column is ignored)."""
    return stage_taken([rows], batch_id, synced_at_us, schema)


def stage_taken(
    frames: list[pl.DataFrame], batch_id: str, synced_at_us: int,
    schema: TableSchema = BASE_SCHEMA,
) -> pa.Table:
    """``stage_frame`` of the one frame in ``frames``, taken out of the list.

    Built one column at a time from the columns it reads, each converted to Arrow before the
    next is computed, and each column of the frame released after its last use: when the caller
    holds the frame nowhere else, the live memory is about one of the two (for a window of 1M
    profiles, the reduced frame is ~150 MiB and the staged table ~110 MiB) rather than both plus
    a polars copy of the staged columns. The process's RSS follows only as fast as the
    allocator hands freed pages back (``consumer.cli.ALLOCATOR_CONF``)."""
    (rows,) = frames
    frames.clear()
    timestamp = pl.Datetime("us")
    expressions = [
        *(_business(rows, c) for c in schema.columns),
        pl.col("op_type").cast(pl.String),
        pl.col("op_time").cast(timestamp),
        pl.col("src_partition").cast(pl.Int32),
        pl.col("src_offset").cast(pl.Int64),
        (pl.col("op_type").cast(pl.String) == "DELETE").alias("is_deleted"),
        pl.lit(None, pl.Null).alias("batch_id"),  # built in Arrow: see batch_id_column
        pl.lit(synced_at_us, pl.Int64).cast(timestamp).alias("synced_at"),
    ]
    roots = [expression.meta.root_names() for expression in expressions]
    last_use = {name: index for index, names in enumerate(roots) for name in names}
    held = {series.name: series for series in rows.get_columns()}
    del rows  # the columns are held one by one from here, each released after its last use
    # The key stays to the end: a frame without columns has no rows for a literal to fill.
    dropped: list[list[str]] = [[] for _ in expressions]
    for name, index in last_use.items():
        if name != KEY and name in held:
            dropped[index].append(name)
    target = staged_schema(schema)
    columns: list[pa.Array] = []
    for index, (expression, field) in enumerate(zip(expressions, target, strict=True)):
        if field.name == "batch_id":
            columns.append(batch_id_column(batch_id, len(held[KEY])))
            continue
        # Computed over the columns it reads and the key (a literal fills the key's rows).
        inputs = pl.DataFrame([held[n] for n in dict.fromkeys([KEY, *roots[index]]) if n in held])
        series = inputs.with_columns(expression.alias(field.name)).get_column(field.name)
        columns.append(series.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(field.type))
        del inputs, series
        for name in dropped[index]:
            del held[name]
    return pa.Table.from_arrays(columns, schema=target)
