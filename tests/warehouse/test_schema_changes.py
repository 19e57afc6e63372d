"""The pure column logic of ``warehouse.schema_changes`` that the history table relies on:
reading a column back from its SQL type, and the DDL that brings a table following the state
table's columns level with it (types read from the table itself, not from the metadata)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.columns import BASE_SCHEMA, Column, ColumnChange, TableSchema
from warehouse.identifiers import QualifiedName
from warehouse.schema_changes import column_from_sql, follow_statements
from warehouse.tables import Dialect

HISTORY = QualifiedName.of("kyc", "kyc_profile_history")
HISTORY_SF = QualifiedName.of("kyc", "kyc_profile_history", upper=True)
BASE_DUCKDB: list[tuple[Any, ...]] = [
    ("kyc_profile_id", "BIGINT", 64, 0), ("goldtier_id", "VARCHAR", None, None),
    ("cid", "VARCHAR", None, None), ("party_id", "VARCHAR", None, None),
    ("created_date", "TIMESTAMP", None, None), ("updated_date", "TIMESTAMP", None, None),
    ("op_type", "VARCHAR", None, None), ("op_time", "TIMESTAMP", None, None),
    ("src_partition", "INTEGER", 32, 0), ("src_offset", "BIGINT", 64, 0),
    ("is_deleted", "BOOLEAN", None, None), ("batch_id", "VARCHAR", None, None),
    ("synced_at", "TIMESTAMP", None, None),
]
INTERVAL: list[tuple[Any, ...]] = [("valid_from", "TIMESTAMP", None, None),
                                   ("valid_to", "TIMESTAMP", None, None),
                                   ("is_current", "BOOLEAN", None, None)]


def upper(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(str(r[0]).upper(), *r[1:]) for r in rows]


def evolved(*columns: Column) -> TableSchema:
    return BASE_SCHEMA.evolved(ColumnChange(c, "add", "v2") for c in columns)


@pytest.mark.parametrize(("data_type", "precision", "scale", "like", "expected"), [
    ("FLOAT", 24, 0, None, Column("c", "float")),  # DuckDB's REAL
    ("DOUBLE", 53, 0, None, Column("c", "double")),
    ("FLOAT", None, None, None, Column("c", "double")),  # Snowflake's FLOAT: 8 bytes
    ("NUMBER", 10, 0, None, Column("c", "int")),
    ("NUMBER", 19, 0, None, Column("c", "bigint")),
    ("NUMBER", 10, 0, Column("c", "decimal", True, 10, 0), Column("c", "decimal", True, 10, 0)),
    ("DECIMAL(12,2)", 12, 2, None, Column("c", "decimal", True, 12, 2)),
    ("DECIMAL(8,0)", 8, 0, Column("c", "decimal", True, 6, 0),
     Column("c", "decimal", True, 8, 0)),
    ("VARIANT", None, None, None, Column("c", "json")),
])
def test_column_from_sql(
    data_type: str, precision: int | None, scale: int | None, like: Column | None,
    expected: Column,
) -> None:
    assert column_from_sql("c", data_type, precision, scale, like) == expected


def test_a_level_history_needs_nothing() -> None:
    assert follow_statements(HISTORY, BASE_DUCKDB + INTERVAL, BASE_DUCKDB, BASE_SCHEMA,
                             "duckdb") == []


def test_a_column_history_lacks_is_added_with_its_logical_type() -> None:
    logical = evolved(Column("risk_rating", "text"), Column("amount", "decimal", True, 10, 0))
    state = [*BASE_DUCKDB, ("risk_rating", "VARCHAR", None, None),
             ("amount", "DECIMAL(10,0)", 10, 0)]
    assert follow_statements(HISTORY, BASE_DUCKDB + INTERVAL, state, logical, "duckdb") == [
        'ALTER TABLE "kyc"."kyc_profile_history" ADD COLUMN IF NOT EXISTS "risk_rating" VARCHAR',
        'ALTER TABLE "kyc"."kyc_profile_history" ADD COLUMN IF NOT EXISTS "amount" '
        "DECIMAL(10,0)",
    ]


def test_widened_state_columns_widen_history_whatever_the_metadata_says() -> None:
    """The metadata already records the wider type once the state table is widened: the
    history's types are read from the history table."""
    logical = evolved(Column("score", "bigint"), Column("ratio", "double"),
                      Column("amount", "decimal", True, 12, 2))
    state = [*BASE_DUCKDB, ("score", "BIGINT", 64, 0), ("ratio", "DOUBLE", 53, 0),
             ("amount", "DECIMAL(12,2)", 12, 2)]
    history = [*BASE_DUCKDB, *INTERVAL, ("score", "INTEGER", 32, 0), ("ratio", "FLOAT", 24, 0),
               ("amount", "DECIMAL(6,2)", 6, 2)]
    table = '"kyc"."kyc_profile_history"'
    assert follow_statements(HISTORY, history, state, logical, "duckdb") == [
        f'ALTER TABLE {table} ALTER COLUMN "score" SET DATA TYPE BIGINT',
        f'ALTER TABLE {table} ALTER COLUMN "ratio" SET DATA TYPE DOUBLE',
        f'ALTER TABLE {table} ALTER COLUMN "amount" SET DATA TYPE DECIMAL(12,2)',
    ]


def test_a_state_column_wider_than_recorded_is_followed() -> None:
    """Another instance widened the state table and was killed before it recorded the change:
    history follows the table, not the metadata."""
    logical = evolved(Column("score", "int"))
    state = [*BASE_DUCKDB, ("score", "BIGINT", 64, 0)]
    history = [*BASE_DUCKDB, *INTERVAL, ("score", "INTEGER", 32, 0)]
    assert follow_statements(HISTORY, history, state, logical, "duckdb") == [
        'ALTER TABLE "kyc"."kyc_profile_history" ALTER COLUMN "score" SET DATA TYPE BIGINT']


@pytest.mark.parametrize("dialect", ["duckdb", "snowflake"])
def test_names_match_regardless_of_case(dialect: Dialect) -> None:
    logical = evolved(Column("riskRating", "text"))
    rows = [*BASE_DUCKDB, ("riskRating", "VARCHAR", None, None)]
    if dialect == "snowflake":
        rows = upper(rows)
    assert follow_statements(HISTORY_SF, rows + INTERVAL, rows, logical, dialect) == []


def test_snowflake_types_that_render_alike_need_nothing() -> None:
    """Snowflake's FLOAT is already double, a UUID is text: nothing to widen."""
    logical = evolved(Column("ratio", "double"), Column("id", "uuid"))
    state = upper([*BASE_DUCKDB, ("ratio", "FLOAT", None, None), ("id", "TEXT", None, None)])
    history = upper([*BASE_DUCKDB, *INTERVAL, ("ratio", "FLOAT", None, None),
                     ("id", "TEXT", None, None)])
    assert follow_statements(HISTORY_SF, history, state, logical, "snowflake") == []
    narrow = [(n, "NUMBER", 10, 0) if n == "SCORE" else (n, *r) for n, *r in
              [*history, ("SCORE", "NUMBER", 10, 0)]]
    wide = [*state, ("SCORE", "NUMBER", 19, 0)]
    assert follow_statements(HISTORY_SF, narrow, wide, evolved(Column("score", "bigint")),
                             "snowflake") == [
        'ALTER TABLE "KYC"."KYC_PROFILE_HISTORY" ALTER COLUMN "SCORE" SET DATA TYPE '
        "NUMBER(19,0)"]
