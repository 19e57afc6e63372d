"""The state table's columns as they are, and the changes a batch needs: pure functions.

A writer reads two things about its state table: the columns it physically has
(``physical_columns_sql``, from ``information_schema``) and the column metadata it recorded
(``recorded_columns_sql``). ``table_state`` combines them into the ``TableState`` the run loop
starts from: the business columns in table order, each with its logical type (recorded, else the
packaged schema's, else read back from its SQL type), and the column policy recorded with the
table. ``pending`` picks the changes of a batch's ``TableSchema`` that are not recorded yet, and
``alter_statements`` renders them; both are safe to repeat, so two instances racing to make the
same change both succeed.

A table that follows the state table's columns (the history table) is brought to them with
``follow_statements``: every column of the state table it lacks is added, every narrower one
widened. Its types are read from the table itself (``column_from_sql``), never from the column
metadata, which describes the state table: once the state table is widened the metadata already
says the wider type. Writers run it in (DuckDB) or right before (Snowflake) each flush whose
columns the history table does not hold yet, when they open, and on both copies of a full
refresh, so that the history table never lacks a column its state table has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from schemas.columns import BASE_SCHEMA, KEY, Column, ColumnChange, TableSchema, parse_type
from schemas.evolution import ColumnPolicy, TableState, compare
from warehouse.identifiers import QualifiedName
from warehouse.tables import (
    COLUMNS_COLUMNS,
    NOT_BUSINESS,
    Dialect,
    add_column_sql,
    col,
    widen_column_sql,
)

POLICY_MARK = "policy"


def physical_columns_sql(table: QualifiedName, dialect: Dialect) -> tuple[str, list[str]]:
    """Name, type, precision and scale of each column of ``table``, in table order."""
    parts = [p.name.upper() if p.upper else p.name for p in table.parts]
    if dialect == "snowflake":
        database = table.parts[0].sql() + "." if len(parts) == 3 else ""
        return (
            "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
            f"FROM {database}INFORMATION_SCHEMA.COLUMNS "
            "WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            parts[-2:] if len(parts) >= 2 else ["PUBLIC", parts[-1]],
        )
    schema = parts[-2] if len(parts) >= 2 else "main"
    return (
        "SELECT column_name, data_type, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [schema, parts[-1]],
    )


def has_rows_sql(state: QualifiedName) -> str:
    return f"SELECT COUNT(*) FROM (SELECT 1 FROM {state.sql()} LIMIT 1) AS t"


def recorded_columns_sql(columns: QualifiedName, dialect: Dialect) -> str:
    """The column metadata in the order it was recorded."""
    names = ", ".join(col(c, dialect) for c in ("column_name", "change", "column_type"))
    return f"SELECT {names} FROM {columns.sql()} ORDER BY {col('recorded_at', dialect)}"


def record_sql(columns: QualifiedName, dialect: Dialect) -> str:
    """One metadata row, values bound in ``COLUMNS_COLUMNS`` order."""
    names = ", ".join(col(c.name, dialect) for c in COLUMNS_COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS_COLUMNS)
    return f"INSERT INTO {columns.sql()} ({names}) VALUES ({marks})"


def change_rows(
    changes: Sequence[ColumnChange], batch_id: str, at: datetime
) -> list[list[Any]]:
    """The metadata rows of ``changes``, one microsecond apart: read back in ``recorded_at``
    order, the last one of a column is its type."""
    return [
        [c.column.name, c.change, c.column.describe(), c.schema, c.schema_id, batch_id,
         at + timedelta(microseconds=i)]
        for i, c in enumerate(changes)
    ]


def policy_rows(policy: ColumnPolicy, at: datetime) -> list[list[Any]]:
    """The metadata rows that record a column policy (an empty one included)."""
    rows: list[list[Any]] = [["", POLICY_MARK, "", "settings", None, None, at]]
    rows += [[name, "exclude", "", "settings", None, None, at] for name in sorted(policy.exclude)]
    rows += [[name, "hash", "text", "settings", None, None, at] for name in sorted(policy.hash)]
    return rows


_SQL_TYPES: dict[str, str] = {
    "BOOLEAN": "bool", "INTEGER": "int", "INT": "int", "BIGINT": "bigint", "REAL": "float",
    "FLOAT": "double", "DOUBLE": "double", "VARCHAR": "text", "TEXT": "text", "BLOB": "binary",
    "BINARY": "binary", "DATE": "date", "TIME": "time", "TIMESTAMP": "timestamp",
    "TIMESTAMP_NTZ": "timestamp", "UUID": "uuid", "JSON": "json", "VARIANT": "json",
}


FLOAT_BITS = 24
"""``information_schema`` precision (in bits) of a 4-byte float: DuckDB names its REAL ``FLOAT``
with precision 24; Snowflake's FLOAT (always 8 bytes) has none."""


def column_from_sql(
    name: str, data_type: str, precision: int | None, scale: int | None,
    like: Column | None = None,
) -> Column:
    """A column read back from its SQL type (a column without metadata); unknown types are
    taken as text. ``like``: the column it should be (a decimal reads as a decimal then, also
    when its scale is 0)."""
    upper = data_type.upper()
    match = re.fullmatch(r"(DECIMAL|NUMERIC|NUMBER)(?:\((\d+),\s*(\d+)\))?", upper)
    if match:
        p = int(match.group(2) or precision or 38)
        s = int(match.group(3) or scale or 0)
        if like is not None and like.type == "decimal":
            return Column(name, "decimal", precision=p, scale=s)
        if s == 0 and p <= 10:
            return Column(name, "int")
        if s == 0 and p <= 19:
            return Column(name, "bigint")
        return Column(name, "decimal", precision=p, scale=s)
    if upper == "FLOAT" and precision is not None and int(precision) <= FLOAT_BITS:
        return Column(name, "float")
    return Column(name, _SQL_TYPES.get(upper.split("(")[0], "text"))  # type: ignore[arg-type]


def table_state(
    physical: Sequence[Sequence[Any]], recorded: Iterable[Sequence[Any]], has_rows: bool,
    upper: bool,
) -> TableState:
    """The state table as the run loop starts from it (see the module doc). ``physical``: rows of
    ``physical_columns_sql``; ``recorded``: rows of ``recorded_columns_sql``; ``upper``: the dialect
    stores names upper-cased (Snowflake)."""
    types: dict[str, Column] = {}
    spelled: dict[str, str] = {}
    exclude: set[str] = set()
    hashed: set[str] = set()
    marked = False
    for name, change, column_type in recorded:
        if change in ("add", "widen"):
            types[str(name).lower()] = parse_type(str(column_type))
            spelled[str(name).lower()] = str(name)
        elif change == POLICY_MARK:
            marked = True
        elif change == "exclude":
            exclude.add(str(name))
        elif change == "hash":
            hashed.add(str(name))
    base = {c.name.lower(): c for c in BASE_SCHEMA.columns}
    spelled.update({n.lower(): n for n in (*exclude, *hashed)})
    hashed_lower = {n.lower() for n in hashed}
    columns: list[Column] = []
    for row in physical:
        sql_name = str(row[0])
        lower = sql_name.lower()
        if lower in NOT_BUSINESS:
            continue
        name = _logical_name(sql_name, upper, base, spelled)
        if lower in types:
            column = Column(name, types[lower].type, True, types[lower].precision,
                            types[lower].scale)
        elif lower in hashed_lower:
            column = Column(name, "text")
        elif lower in base:
            column = base[lower]
        else:
            column = column_from_sql(name, str(row[1]), _int(row[2]), _int(row[3]))
        columns.append(column)
    columns.sort(key=lambda c: c.name != KEY)  # the key first (it always is, when we create it)
    policy = ColumnPolicy(frozenset(exclude), frozenset(hashed)) if marked else None
    return TableState(TableSchema(tuple(columns)), policy, has_rows)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _logical_name(
    sql_name: str, upper: bool, base: dict[str, Column], spelled: dict[str, str]
) -> str:
    """A column's name as fields spell it: Snowflake returns names upper-cased, the metadata
    keeps the field's spelling."""
    if not upper:
        return sql_name
    lower = sql_name.lower()
    if lower in base:
        return base[lower].name
    return spelled.get(lower, lower)


def pending(
    changes: Iterable[ColumnChange], recorded: dict[str, str]
) -> list[ColumnChange]:
    """The changes of the columns whose final type (their last change) is not recorded, or
    wider than the one recorded (``recorded``: name -> latest type). A narrower one is an
    instance that has not seen a newer schema yet: its values fit, nothing changes."""
    changes = list(changes)
    final = {c.column.name.lower(): c.column for c in changes}

    def needed(name: str) -> bool:
        known = recorded.get(name)
        return known is None or compare(final[name], parse_type(known)) == "widen"

    return [c for c in changes if needed(c.column.name.lower())]


def latest_types(recorded: Iterable[Sequence[Any]]) -> dict[str, str]:
    """Latest recorded type per column (lower-cased name) from rows of ``recorded_columns_sql``."""
    out: dict[str, str] = {}
    for name, change, column_type in recorded:
        if change in ("add", "widen"):
            out[str(name).lower()] = str(column_type)
    return out


def alter_statements(
    table: QualifiedName, changes: Iterable[ColumnChange], schema: TableSchema, dialect: Dialect
) -> list[str]:
    """The DDL that brings ``table`` (any table with the state table's columns, now of
    ``schema``) to the types ``changes`` end with: a column it lacks is added with its final
    type, one it has is widened to it."""
    final: dict[str, Column] = {}
    for change in changes:
        final[change.column.name] = change.column
    statements: list[str] = []
    for name, column in final.items():
        current = schema.column(name)
        if current is None:
            statements.append(add_column_sql(table, column, dialect))
        elif compare(column, current) == "widen":  # never narrower: another instance widened it
            statements += widen_column_sql(table, current, column, dialect)
    return statements


def follow_statements(
    table: QualifiedName, physical: Sequence[Sequence[Any]], state: Sequence[Sequence[Any]],
    logical: TableSchema, dialect: Dialect,
) -> list[str]:
    """The DDL that brings a table that follows the state table's columns (``table``) level
    with the state table: each business column of the state table it lacks is added, each one
    it holds narrower is widened. ``physical`` and ``state``: the two tables' rows of
    ``physical_columns_sql``; the state table's columns as they are set what is needed (also
    a change another instance made and has not recorded yet); ``logical`` (the columns as
    recorded or as a batch has them) gives their exact types where the table holds them as
    wide. Names match regardless of case (Snowflake returns them upper-cased). Empty when the
    table is level; every statement is harmless to repeat."""
    have = {str(row[0]).lower(): row for row in physical}
    known = {c.name.lower(): c for c in logical.columns}
    statements: list[str] = []
    for row in state:
        lower = str(row[0]).lower()
        if lower in NOT_BUSINESS:
            continue
        hint = known.get(lower)
        column = column_from_sql(
            hint.name if hint else lower, str(row[1]), _int(row[2]), _int(row[3]), hint)
        if hint is not None and compare(column, hint) != "widen":
            column = hint
        held = have.get(lower)
        if held is None:
            statements.append(add_column_sql(table, column, dialect))
            continue
        current = column_from_sql(column.name, str(held[1]), _int(held[2]), _int(held[3]),
                                  column)
        if compare(column, current) == "widen":
            statements += widen_column_sql(table, current, column, dialect)
    return statements
