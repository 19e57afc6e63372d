"""The one definition of the tables kyc-sync owns, rendered as DDL per dialect.

- ``<state>`` (``kyc_profile_state``): one row per profile ever seen, live or deleted. Deleted
  profiles stay as tombstones (``is_deleted``) with the version of their DELETE, so that a replayed
  or late INSERT older than the DELETE can never bring the profile back.
- ``<table>`` (``kyc_profile_current``): a view of the live profiles only.
- ``<ledger>`` (``kyc_sync_ledger``): one row per applied batch, written in the batch's transaction.
- ``<history>`` (``kyc_profile_history``, only with ``history.enabled``): one row per distinct
  version of each profile, with the interval it was valid in (``HISTORY_COLUMNS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.columns import BUSINESS_COLUMNS, VERSION_COLUMNS, Column, ColumnType
from warehouse.identifiers import QualifiedName

Dialect = Literal["duckdb", "snowflake"]

_TYPES: dict[Dialect, dict[ColumnType, str]] = {
    "duckdb": {
        "int": "INTEGER",
        "bigint": "BIGINT",
        "text": "VARCHAR",
        "timestamp": "TIMESTAMP",
        "bool": "BOOLEAN",
    },
    "snowflake": {
        "int": "NUMBER(10,0)",
        "bigint": "NUMBER(19,0)",
        "text": "VARCHAR",
        "timestamp": "TIMESTAMP_NTZ(6)",
        "bool": "BOOLEAN",
    },
}

BOOKKEEPING_COLUMNS: tuple[Column, ...] = (
    Column("is_deleted", "bool", nullable=False),
    Column("batch_id", "text", nullable=False),
    Column("synced_at", "timestamp", nullable=False),
)
"""What the writer adds to each row: tombstone flag, the batch that wrote it, when."""

STATE_COLUMNS: tuple[Column, ...] = BUSINESS_COLUMNS + VERSION_COLUMNS + BOOKKEEPING_COLUMNS
"""Columns of the state table and, in the same order, of every staged batch."""

PER_WRITE_COLUMNS: frozenset[str] = frozenset({"batch_id", "synced_at"})
"""State columns that say which write put a row there, not what the row holds."""

INTERVAL_COLUMNS: tuple[Column, ...] = (
    Column("valid_from", "timestamp", nullable=False),
    Column("valid_to", "timestamp"),
    Column("is_current", "bool", nullable=False),
)
"""What the history table adds to a version: valid from its op_time until the next version's
(NULL while it is the latest: ``is_current``)."""


def history_columns(state: tuple[Column, ...] = STATE_COLUMNS) -> tuple[Column, ...]:
    """The history table's columns: the state table's, whatever they are, then the interval.
    Derived, never listed twice, so that history follows the state table's columns."""
    return state + INTERVAL_COLUMNS


HISTORY_COLUMNS: tuple[Column, ...] = history_columns()

VIEW_COLUMNS: tuple[str, ...] = (*(c.name for c in BUSINESS_COLUMNS), "op_time", "synced_at")

LEDGER_COLUMNS: tuple[Column, ...] = (
    Column("batch_id", "text", nullable=False),
    Column("topic", "text", nullable=False),
    Column("consumer_group", "text", nullable=False),
    Column("started_at", "timestamp", nullable=False),
    Column("committed_at", "timestamp", nullable=False),
    Column("events_in", "bigint", nullable=False),
    Column("invalid_events", "bigint", nullable=False),
    Column("rows_out", "bigint", nullable=False),
    Column("inserted", "bigint", nullable=False),
    Column("updated", "bigint", nullable=False),
    Column("deleted", "bigint", nullable=False),
    Column("skipped_stale", "bigint", nullable=False),
    Column("min_op_time", "timestamp"),
    Column("max_op_time", "timestamp"),
    Column("offsets", "text", nullable=False),
    Column("decode_ms", "bigint", nullable=False),
    Column("write_ms", "bigint", nullable=False),
)


@dataclass(frozen=True, slots=True)
class TableNames:
    """Where kyc-sync's objects live; every part is a validated identifier."""

    state: QualifiedName
    current: QualifiedName
    ledger: QualifiedName
    history: QualifiedName | None = None
    """The history table; None when history is off (nothing of it is created or written)."""


def column_list(columns: tuple[Column, ...], dialect: Dialect) -> str:
    upper = dialect == "snowflake"
    rendered = []
    for column in columns:
        name = column.name.upper() if upper else column.name
        null = "" if column.nullable else " NOT NULL"
        rendered.append(f'    "{name}" {_TYPES[dialect][column.type]}{null}')
    return ",\n".join(rendered)


def sql_type(column: Column, dialect: Dialect) -> str:
    """The column's type in the dialect."""
    return _TYPES[dialect][column.type]


def col(name: str, dialect: Dialect) -> str:
    """A quoted column name in the dialect's case."""
    return f'"{name.upper()}"' if dialect == "snowflake" else f'"{name}"'


def create_table_sql(
    name: QualifiedName, columns: tuple[Column, ...], dialect: Dialect, *, replace: bool = False
) -> str:
    head = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    return f"{head} {name.sql()} (\n{column_list(columns, dialect)}\n)"


def create_view_sql(names: TableNames, dialect: Dialect) -> str:
    """Snowflake: ``COPY GRANTS`` keeps the readers' grants on the view when it is replaced."""
    cols = ", ".join(col(c, dialect) for c in VIEW_COLUMNS)
    grants = " COPY GRANTS" if dialect == "snowflake" else ""
    return (
        f"CREATE OR REPLACE VIEW {names.current.sql()}{grants} AS\n"
        f"SELECT {cols}\nFROM {names.state.sql()}\nWHERE NOT {col('is_deleted', dialect)}"
    )


def ddl(names: TableNames, dialect: Dialect) -> list[str]:
    """Statements that create every object if missing; safe to run on every start."""
    statements = [
        create_table_sql(names.state, STATE_COLUMNS, dialect),
        create_table_sql(names.ledger, LEDGER_COLUMNS, dialect),
        create_view_sql(names, dialect),
    ]
    if names.history is not None:
        statements.append(create_table_sql(names.history, HISTORY_COLUMNS, dialect))
    return statements
