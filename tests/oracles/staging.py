"""The reference staging: the staged table built from one-by-one winners, row by row.

The oracle of ``warehouse.staging.stage_frame``, and how the contract tests build batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from schemas.columns import BASE_SCHEMA, TableSchema
from tests.oracles.reducer import Winner
from warehouse.staging import arrow_type, staged_schema

Row = tuple[Any, ...]
"""Values of the schema's business columns in order; timestamps, times and dates as integers
(microseconds, microseconds since midnight, days; UTC)."""


def build_staged(
    winners: Sequence[Winner[Row]], batch_id: str, synced_at_us: int,
    schema: TableSchema = BASE_SCHEMA,
) -> pa.Table:
    """Column-wise build of the batch; timestamps stay integers until Arrow casts them."""
    n = len(winners)
    columns: list[Sequence[Any]] = (
        [list(c) for c in zip(*(w.payload for w in winners), strict=True)]
        if n else [[] for _ in schema.columns]
    )
    op_type = [w.op_type for w in winners]
    arrays: list[pa.Array] = [
        pa.array(values, type=arrow_type(c))
        for c, values in zip(schema.columns, columns, strict=True)
    ]
    arrays += [
        pa.array(op_type, type=pa.string()),
        pa.array([w.version.op_time for w in winners], type=pa.timestamp("us")),
        pa.array([w.version.partition for w in winners], type=pa.int32()),
        pa.array([w.version.offset for w in winners], type=pa.int64()),
        pa.array([o == "DELETE" for o in op_type], type=pa.bool_()),
        pa.array([batch_id] * n, type=pa.string()).dictionary_encode(),
        pa.array([synced_at_us] * n, type=pa.timestamp("us")),
    ]
    return pa.Table.from_arrays(arrays, schema=staged_schema(schema))
