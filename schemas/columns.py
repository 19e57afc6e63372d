"""The column contract: what an audit event carries and what every stage keeps of it.

Decode produces the columns of a ``TableSchema``, the reducer orders events by ``VERSION``, the
warehouse stores the schema's columns and ``VERSION_COLUMNS`` (plus its own bookkeeping,
``warehouse.tables``). The schema is a value handed from stage to stage, not a constant: when a
writer schema adds a field, the table's schema grows (``schemas.evolution``) and every stage
follows the new value. ``BASE_SCHEMA`` is where a new table starts: the fields of the packaged
schema, the columns every existing deployment already has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

ColumnType = Literal[
    "bool", "int", "bigint", "float", "double", "decimal", "text", "binary", "date", "time",
    "timestamp", "uuid", "json",
]
"""Logical column types; each writer renders them (``warehouse.tables``). Until a writer stores
them, timestamps are microseconds since the Unix epoch (UTC), times microseconds since midnight,
dates days since the epoch; json is JSON text."""

COLUMN_TYPES: tuple[ColumnType, ...] = (
    "bool", "int", "bigint", "float", "double", "decimal", "text", "binary", "date", "time",
    "timestamp", "uuid", "json",
)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    precision: int = 0
    """decimal only: total digits (1-38) and digits after the point."""
    scale: int = 0

    def describe(self) -> str:
        """The type as users read it: ``bigint``, ``decimal(12,2)``."""
        if self.type == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.type

    def retyped(self, other: Column) -> Column:
        """This column with ``other``'s type."""
        return replace(self, type=other.type, precision=other.precision, scale=other.scale)


def parse_type(text: str) -> Column:
    """The unnamed column of a type as ``Column.describe`` writes it (metadata round trip)."""
    if text.startswith("decimal(") and text.endswith(")"):
        precision, scale = (int(x) for x in text[len("decimal("):-1].split(","))
        return Column("", "decimal", precision=precision, scale=scale)
    if text not in COLUMN_TYPES:
        raise ValueError(f"unknown column type {text!r}")
    return Column("", text)


class OpType(StrEnum):
    """The operation an audit event records."""

    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


OP_TYPES: frozenset[str] = frozenset(op.value for op in OpType)

KEY = "kyc_profile_id"
"""The profile key: one row per key in the state table."""

BUSINESS_COLUMNS: tuple[Column, ...] = (
    Column(KEY, "bigint", nullable=False),
    Column("goldtier_id", "text"),
    Column("cid", "text"),
    Column("party_id", "text"),
    Column("created_date", "timestamp"),
    Column("updated_date", "timestamp"),
)
"""The profile's columns in the packaged schema, key first: the columns a new table starts with."""

VERSION: tuple[str, str, str] = ("op_time", "src_partition", "src_offset")
"""The total order of one key's events, most significant first: "latest" is the greatest."""

VERSION_COLUMNS: tuple[Column, ...] = (
    Column("op_type", "text", nullable=False),
    Column("op_time", "timestamp", nullable=False),
    Column("src_partition", "int", nullable=False),
    Column("src_offset", "bigint", nullable=False),
)
"""The event a row reflects: its operation, and its version (op_time and Kafka position)."""

REQUIRED_FIELDS: tuple[str, ...] = (KEY, "op_type", "op_time")
"""Fields every writer schema must carry: without them an event cannot be ordered or applied.
They can never be dropped, retyped, excluded or hashed."""


@dataclass(frozen=True, slots=True)
class ColumnChange:
    """One change of a table's columns and the writer schema that caused it."""

    column: Column
    """The column as it is after the change."""
    change: Literal["add", "widen"]
    schema: str
    """The writer schema, as users can look it up: ``registry id 42`` or ``file sha256:…``."""
    schema_id: int | None = None


@dataclass(frozen=True, slots=True)
class TableSchema:
    """The business columns of the state table, key first, in the order they were added, and
    the changes this process made to them (recorded by the writer with the batch that needs
    them). Every stage receives it; nothing reads a module constant for the column set."""

    columns: tuple[Column, ...]
    changes: tuple[ColumnChange, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.columns or self.columns[0].name != KEY:
            raise ValueError(f"the first column must be {KEY}")
        names = [c.name.lower() for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate column names in {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def evolved(self, changes: Iterable[ColumnChange]) -> TableSchema:
        """The schema after ``changes``: added columns at the end, widened ones retyped."""
        columns = list(self.columns)
        done = list(self.changes)
        for change in changes:
            index = next(
                (i for i, c in enumerate(columns) if c.name == change.column.name), None
            )
            if index is None:
                columns.append(change.column)
            else:
                columns[index] = columns[index].retyped(change.column)
            done.append(change)
        return TableSchema(tuple(columns), tuple(done))


BASE_SCHEMA = TableSchema(BUSINESS_COLUMNS)
"""The columns of a table created before any writer schema added a field."""
