"""The one definition of the tables kyc-sync owns, rendered as DDL per dialect.

- ``<state>`` (``kyc_profile_state``): one row per profile ever seen, live or deleted. Deleted
  profiles stay as tombstones (``is_deleted``) with the version of their DELETE, so that a replayed
  or late INSERT older than the DELETE can never bring the profile back.
- ``<table>`` (``kyc_profile_current``): a view of the live profiles only.
- ``<ledger>`` (``kyc_sync_ledger``): one row per applied batch, written in the batch's transaction.
- ``<columns>`` (``kyc_sync_columns``): the column metadata of the state table: each column a
  writer schema added or widened (which schema, which batch, when, its logical type), and the
  column policy the table was built with (``COLUMNS_COLUMNS``).
- ``<history>`` (``kyc_profile_history``, only with ``history.enabled``): one row per distinct
  version of each profile, with the interval it was valid in (``history_columns``).

The business columns are not fixed: every function that renders them takes the table's
``TableSchema`` (default: ``BASE_SCHEMA``, the packaged schema's), so that any table whose
columns follow the state table's (the state table itself, its staged batches, the view, the
history table) is created and altered from the same column list (``add_column_sql``,
``widen_column_sql``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.columns import BASE_SCHEMA, VERSION_COLUMNS, Column, ColumnType, TableSchema
from warehouse.identifiers import QualifiedName

Dialect = Literal["duckdb", "snowflake"]

_TYPES: dict[Dialect, dict[ColumnType, str]] = {
    "duckdb": {
        "bool": "BOOLEAN",
        "int": "INTEGER",
        "bigint": "BIGINT",
        "float": "REAL",
        "double": "DOUBLE",
        "decimal": "DECIMAL",
        "text": "VARCHAR",
        "binary": "BLOB",
        "date": "DATE",
        "time": "TIME",
        "timestamp": "TIMESTAMP",
        "uuid": "UUID",
        "json": "JSON",
    },
    "snowflake": {
        "bool": "BOOLEAN",
        "int": "NUMBER(10,0)",
        "bigint": "NUMBER(19,0)",
        "float": "FLOAT",
        "double": "FLOAT",
        "decimal": "NUMBER",
        "text": "VARCHAR",
        "binary": "BINARY",
        "date": "DATE",
        "time": "TIME(6)",
        "timestamp": "TIMESTAMP_NTZ(6)",
        "uuid": "VARCHAR(36)",
        "json": "VARIANT",
    },
}
"""Column types per dialect. Snowflake has one floating-point type and no UUID type; a
decimal renders with its precision and scale (``sql_type``)."""

BOOKKEEPING_COLUMNS: tuple[Column, ...] = (
    Column("is_deleted", "bool", nullable=False),
    Column("batch_id", "text", nullable=False),
    Column("synced_at", "timestamp", nullable=False),
)
"""What the writer adds to each row: tombstone flag, the batch that wrote it, when."""



def state_columns(schema: TableSchema = BASE_SCHEMA) -> tuple[Column, ...]:
    """Columns of the state table and, in the same order, of every staged batch."""
    return schema.columns + VERSION_COLUMNS + BOOKKEEPING_COLUMNS


STATE_COLUMNS: tuple[Column, ...] = state_columns()
"""The state table's columns before any writer schema changed them."""

PER_WRITE_COLUMNS: frozenset[str] = frozenset({"batch_id", "synced_at"})
"""State columns that say which write put a row there, not what the row holds."""

INTERVAL_COLUMNS: tuple[Column, ...] = (
    Column("valid_from", "timestamp", nullable=False),
    Column("valid_to", "timestamp"),
    Column("is_current", "bool", nullable=False),
)
"""What the history table adds to a version: valid from its op_time until the next version's
(NULL while it is the latest: ``is_current``)."""

NOT_BUSINESS: frozenset[str] = frozenset(
    c.name for c in VERSION_COLUMNS + BOOKKEEPING_COLUMNS + INTERVAL_COLUMNS
)
"""Columns of the state and history tables that are not business columns."""


def history_columns(state: tuple[Column, ...] = STATE_COLUMNS) -> tuple[Column, ...]:
    """The history table's columns: the state table's, whatever they are, then the interval.
    Derived, never listed twice, so that history follows the state table's columns."""
    return state + INTERVAL_COLUMNS


HISTORY_COLUMNS: tuple[Column, ...] = history_columns()
"""The history table's columns before any writer schema changed them."""


def view_columns(schema: TableSchema = BASE_SCHEMA) -> tuple[str, ...]:
    """The view's columns: the business columns, then op_time and synced_at."""
    return (*schema.names, "op_time", "synced_at")


VIEW_COLUMNS: tuple[str, ...] = view_columns()

COLUMNS_COLUMNS: tuple[Column, ...] = (
    Column("column_name", "text", nullable=False),
    Column("change", "text", nullable=False),
    Column("column_type", "text", nullable=False),
    Column("source_schema", "text", nullable=False),
    Column("schema_id", "bigint"),
    Column("batch_id", "text"),
    Column("recorded_at", "timestamp", nullable=False),
)
"""The column metadata table. ``change``: ``add`` / ``widen`` (a writer schema changed the
column: ``source_schema`` names it, ``schema_id`` its registry id), ``hash`` / ``exclude`` (the
column policy; ``policy`` with an empty column name marks that a policy was recorded)."""

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
    columns: QualifiedName | None = None
    """The column metadata table; None: nothing is recorded (no schema change is possible)."""
    history: QualifiedName | None = None
    """The history table; None when history is off (nothing of it is created or written)."""


def column_list(columns: tuple[Column, ...], dialect: Dialect) -> str:
    upper = dialect == "snowflake"
    rendered = []
    for column in columns:
        name = column.name.upper() if upper else column.name
        null = "" if column.nullable else " NOT NULL"
        rendered.append(f'    "{name}" {sql_type(column, dialect)}{null}')
    return ",\n".join(rendered)


def sql_type(column: Column, dialect: Dialect) -> str:
    """The column's type in the dialect."""
    rendered = _TYPES[dialect][column.type]
    if column.type == "decimal":
        return f"{rendered}({column.precision},{column.scale})"
    return rendered


def col(name: str, dialect: Dialect) -> str:
    """A quoted column name in the dialect's case."""
    return f'"{name.upper()}"' if dialect == "snowflake" else f'"{name}"'


def create_table_sql(
    name: QualifiedName, columns: tuple[Column, ...], dialect: Dialect, *, replace: bool = False
) -> str:
    head = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    return f"{head} {name.sql()} (\n{column_list(columns, dialect)}\n)"


def create_view_sql(
    names: TableNames, dialect: Dialect, schema: TableSchema = BASE_SCHEMA
) -> str:
    """Snowflake: ``COPY GRANTS`` keeps the readers' grants on the view when it is replaced."""
    cols = ", ".join(col(c, dialect) for c in view_columns(schema))
    grants = " COPY GRANTS" if dialect == "snowflake" else ""
    return (
        f"CREATE OR REPLACE VIEW {names.current.sql()}{grants} AS\n"
        f"SELECT {cols}\nFROM {names.state.sql()}\nWHERE NOT {col('is_deleted', dialect)}"
    )


def add_column_sql(table: QualifiedName, column: Column, dialect: Dialect) -> str:
    """Add a nullable column; a no-op where it exists (two instances may race to add it)."""
    return (
        f"ALTER TABLE {table.sql()} ADD COLUMN IF NOT EXISTS {col(column.name, dialect)} "
        f"{sql_type(column, dialect)}"
    )


def widen_column_sql(
    table: QualifiedName, old: Column, new: Column, dialect: Dialect
) -> list[str]:
    """Change a column to a wider type; nothing when the dialect renders both alike (Snowflake's
    FLOAT is already double). Repeating it is harmless."""
    if sql_type(old, dialect) == sql_type(new, dialect):
        return []
    return [
        f"ALTER TABLE {table.sql()} ALTER COLUMN {col(new.name, dialect)} SET DATA TYPE "
        f"{sql_type(new, dialect)}"
    ]


def table_ddl(
    names: TableNames, dialect: Dialect, schema: TableSchema = BASE_SCHEMA
) -> list[str]:
    """The tables, created if missing; ``schema``: the business columns of a state table (and
    history table) created now (an existing one keeps its own). The view follows, from the
    columns the state table then has (``create_view_sql``)."""
    statements = [
        create_table_sql(names.state, state_columns(schema), dialect),
        create_table_sql(names.ledger, LEDGER_COLUMNS, dialect),
    ]
    if names.columns is not None:
        statements.append(create_table_sql(names.columns, COLUMNS_COLUMNS, dialect))
    if names.history is not None:
        statements.append(
            create_table_sql(names.history, history_columns(state_columns(schema)), dialect)
        )
    return statements


def ddl(names: TableNames, dialect: Dialect, schema: TableSchema = BASE_SCHEMA) -> list[str]:
    """Every object of a new table of ``schema``: state table, ledger, view, then the column
    metadata table and the history table if named."""
    tables = table_ddl(names, dialect, schema)
    return [*tables[:2], create_view_sql(names, dialect, schema), *tables[2:]]
