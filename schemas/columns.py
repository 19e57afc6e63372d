"""The column contract: what an audit event carries and what every stage keeps of it.

Decode produces these columns, the reducer orders events by ``VERSION``, the warehouse stores
``BUSINESS_COLUMNS`` and ``VERSION_COLUMNS`` (plus its own bookkeeping, ``warehouse.tables``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ColumnType = Literal["int", "bigint", "text", "timestamp", "bool"]
"""Logical column types; each writer renders them (``warehouse.tables``). Timestamps are
microseconds since the Unix epoch, UTC, until a writer stores them."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True


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
"""The profile's columns, as in the audit stream, key first."""

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
"""Fields every writer schema must carry: without them an event cannot be ordered or applied."""
