"""Unit tests of the staged Arrow batch: schema, values, derived columns, key uniqueness."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pyarrow as pa
import pytest

from schemas.columns import BUSINESS_COLUMNS
from tests.oracles.reducer import Version, Winner
from tests.oracles.staging import Row, build_staged
from warehouse.errors import TerminalWarehouseError
from warehouse.staging import STAGED_SCHEMA, assert_unique_keys, stage_frame, stage_taken
from warehouse.tables import STATE_COLUMNS

T0 = 1_700_000_000_123_456  # 2023-11-14 22:13:20.123456 UTC, in microseconds
SYNCED = 1_700_000_600_000_001


def winner(
    key: int,
    op_type: str = "UPDATE",
    op_time: int = T0,
    partition: int = 0,
    offset: int = 0,
    row: Row | None = None,
) -> Winner[Row]:
    payload = row if row is not None else (key, f"g{key}", f"c{key}", f"p{key}", T0 - 1, T0)
    return Winner(key, Version(op_time, partition, offset), op_type, payload)


def micros(table: pa.Table, name: str) -> list[int | None]:
    values: list[int | None] = table.column(name).cast(pa.int64()).to_pylist()
    return values


def test_schema_is_state_columns() -> None:
    table = build_staged([winner(1)], "batch-1", SYNCED)
    assert table.schema == STAGED_SCHEMA
    assert table.schema.names == [c.name for c in STATE_COLUMNS]
    expected_types = {
        "kyc_profile_id": pa.int64(),
        "goldtier_id": pa.string(),
        "created_date": pa.timestamp("us"),
        "updated_date": pa.timestamp("us"),
        "op_type": pa.string(),
        "op_time": pa.timestamp("us"),
        "src_partition": pa.int32(),
        "src_offset": pa.int64(),
        "is_deleted": pa.bool_(),
        "batch_id": pa.dictionary(pa.int32(), pa.string()),
        "synced_at": pa.timestamp("us"),
    }
    for name, arrow_type in expected_types.items():
        assert table.schema.field(name).type == arrow_type, name
    assert not table.schema.field("kyc_profile_id").nullable
    assert table.schema.field("goldtier_id").nullable


def test_values_in_order() -> None:
    winners = [
        winner(10, "INSERT", op_time=T0, partition=2, offset=7),
        winner(11, "UPDATE", op_time=T0 + 5, partition=0, offset=99,
               row=(11, None, None, None, None, None)),
        winner(12, "DELETE", op_time=T0 + 9, partition=1, offset=2**40),
    ]
    table = build_staged(winners, "batch-xyz", SYNCED)
    assert table.num_rows == 3
    assert table.column("kyc_profile_id").to_pylist() == [10, 11, 12]
    assert table.column("goldtier_id").to_pylist() == ["g10", None, "g12"]
    assert table.column("cid").to_pylist() == ["c10", None, "c12"]
    assert table.column("party_id").to_pylist() == ["p10", None, "p12"]
    assert micros(table, "created_date") == [T0 - 1, None, T0 - 1]
    assert micros(table, "updated_date") == [T0, None, T0]
    assert table.column("op_type").to_pylist() == ["INSERT", "UPDATE", "DELETE"]
    assert micros(table, "op_time") == [T0, T0 + 5, T0 + 9]
    assert table.column("src_partition").to_pylist() == [2, 0, 1]
    assert table.column("src_offset").to_pylist() == [7, 99, 2**40]
    assert table.column("batch_id").to_pylist() == ["batch-xyz"] * 3
    assert micros(table, "synced_at") == [SYNCED] * 3


def test_timestamps_are_microseconds_not_rescaled() -> None:
    table = build_staged([winner(1)], "b", SYNCED)
    # Naive UTC timestamps with microsecond precision, no unit conversion on the way.
    assert table.column("op_time").to_pylist() == [datetime(2023, 11, 14, 22, 13, 20, 123456)]
    assert table.column("created_date").to_pylist() == [
        datetime(2023, 11, 14, 22, 13, 20, 123455)
    ]


@pytest.mark.parametrize(
    ("op_type", "deleted"),
    [
        pytest.param("INSERT", False, id="insert-live"),
        pytest.param("UPDATE", False, id="update-live"),
        pytest.param("DELETE", True, id="delete-tombstone"),
    ],
)
def test_is_deleted_derived_from_op_type(op_type: str, deleted: bool) -> None:
    table = build_staged([winner(1, op_type)], "b", SYNCED)
    assert table.column("is_deleted").to_pylist() == [deleted]
    assert table.column("op_type").to_pylist() == [op_type]


def test_empty_batch() -> None:
    table = build_staged([], "empty", SYNCED)
    assert table.num_rows == 0
    assert table.schema == STAGED_SCHEMA
    assert_unique_keys(table)


def test_unique_keys_accepted() -> None:
    assert_unique_keys(build_staged([winner(1), winner(2), winner(3)], "b", SYNCED))


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param([1, 1], id="pair"),
        pytest.param([1, 2, 3, 2], id="one-duplicate-among-many"),
        pytest.param([5, 5, 5], id="triple"),
    ],
)
def test_duplicate_keys_rejected(keys: list[int]) -> None:
    table = build_staged([winner(k, offset=i) for i, k in enumerate(keys)], "b", SYNCED)
    expected = f"{len(keys)} rows but {len(set(keys))} distinct keys"
    with pytest.raises(TerminalWarehouseError, match=expected):
        assert_unique_keys(table)


@pytest.mark.parametrize(
    ("keys", "distinct"),
    [
        pytest.param(pa.array(["a", "b", "a"]), 2, id="text-duplicate"),
        pytest.param(pa.array([1, None], pa.int64()), 1, id="null-integer-key"),
        pytest.param(pa.array([None, None], pa.string()), 0, id="null-text-keys"),
        pytest.param(pa.chunked_array([[3, 1], [2, 3]], pa.int64()), 3, id="chunked-integers"),
    ],
)
def test_duplicate_or_null_keys_of_any_type_rejected(keys: pa.Array, distinct: int) -> None:
    with pytest.raises(TerminalWarehouseError, match=f"{len(keys)} rows but {distinct} distinct"):
        assert_unique_keys(pa.table({"kyc_profile_id": keys}))


def test_distinct_text_keys_accepted() -> None:
    assert_unique_keys(pa.table({"kyc_profile_id": pa.array(["b", "a", "c"])}))


@pytest.mark.parametrize(
    "row",
    [
        pytest.param((1, "g", "c", "p", T0), id="too-few-values"),
        pytest.param((1, "g", "c", "p", T0, T0, "extra"), id="too-many-values"),
    ],
)
def test_row_of_wrong_arity_rejected(row: Row) -> None:
    with pytest.raises(ValueError):
        build_staged([winner(1, row=row)], "b", SYNCED)


def test_rows_of_mixed_arity_rejected() -> None:
    short = winner(2, row=(2, "g", "c", "p", T0))
    with pytest.raises(ValueError):
        build_staged([winner(1), short], "b", SYNCED)


def as_frame(winners: list[Winner[Row]]) -> pl.DataFrame:
    """The reduced frame the run loop holds for these winners (``decoding.ROW_SCHEMA`` order)."""
    columns = [list(c) for c in zip(*(w.payload for w in winners), strict=True)]
    return pl.DataFrame({
        **{c.name: pl.Series(c.name, values, dtype=pl.String if c.type == "text" else pl.Int64)
           for c, values in zip(BUSINESS_COLUMNS, columns, strict=True)},
        "op_type": [w.op_type for w in winners],
        "op_time": [w.version.op_time for w in winners],
        "src_partition": pl.Series([w.version.partition for w in winners], dtype=pl.Int32),
        "src_offset": [w.version.offset for w in winners],
    })


def test_frame_staging_equals_winner_staging() -> None:
    winners = [
        winner(10, "INSERT", op_time=T0, partition=2, offset=7),
        winner(11, "UPDATE", op_time=T0 + 5, partition=0, offset=99,
               row=(11, None, None, None, None, None)),
        winner(12, "DELETE", op_time=T0 + 9, partition=1, offset=2**40),
    ]
    staged = stage_frame(as_frame(winners), "batch-xyz", SYNCED)
    assert staged.schema == STAGED_SCHEMA
    assert staged.equals(build_staged(winners, "batch-xyz", SYNCED))


def test_staging_a_frame_taken_over_empties_the_list_and_stages_the_same() -> None:
    winners = [winner(10, "INSERT", offset=7), winner(12, "DELETE", op_time=T0 + 9, offset=8)]
    frames = [as_frame(winners)]

    staged = stage_taken(frames, "batch-xyz", SYNCED)

    assert frames == []
    assert staged.equals(build_staged(winners, "batch-xyz", SYNCED))
    assert staged.column("batch_id").to_pylist() == ["batch-xyz", "batch-xyz"]
