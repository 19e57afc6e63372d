"""The table's columns as this process knows them, and how each writer schema is read into them.

A ``Contract`` starts from the columns the warehouse reports when it opens (``start``), then
resolves every writer schema it meets (``shape``) under the settings' policy
(``schemas.evolution``): a schema that adds or widens a column changes ``table`` at once, so the
batch carrying its events is applied with the new columns. A ``Shape`` is one resolved schema:
its reader, its columnar plan, the fields it keeps, hashes or drops.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from consumer.decode.avro import RecordReader
from consumer.decode.columnar import BlockPlan, plan_for, unplanned
from consumer.decode.values import frame_type, hash_column
from schemas.avro_types import FieldSpec, read_as
from schemas.columns import BASE_SCHEMA, KEY, Column, TableSchema
from schemas.errors import TerminalError
from schemas.evolution import ColumnPolicy, Policy, Resolution, TableState, resolve

log = logging.getLogger("kyc_sync.decode")

VERSION_FIELDS = ("op_type", "op_time")


class ColumnPolicyChanged(TerminalError):
    """The column policy differs from the one the table was built with."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One writer schema, resolved against the table."""

    reader: RecordReader
    resolution: Resolution
    plan: BlockPlan | None
    kept: tuple[FieldSpec, ...]
    """The fields decoded into columns, version fields normalized (op_time in microseconds)."""
    columns: tuple[str, ...]
    """The business columns an event of this shape fills (``Decoded.row`` order)."""
    hash_key: bytes = b""

    @property
    def rejected(self) -> str | None:
        return self.resolution.rejected

    def frame_schema(self) -> dict[str, pl.DataType]:
        out: dict[str, pl.DataType] = {}
        for spec in self.kept:
            out[spec.name] = pl.String() if spec.name == "op_type" else frame_type(spec.column)
        return out

    def finish(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Decoded columns as the table stores them: hashed columns as HMAC hex."""
        hashed = [c for c in self.resolution.hashed if c in frame.columns]
        if not hashed:
            return frame
        return frame.with_columns(hash_column(frame.get_column(c), self.hash_key) for c in hashed)


def _version_spec(spec: FieldSpec) -> FieldSpec:
    """The key and op_time read into the state table's types: op_time in microseconds (a plain
    long is microseconds already, an int date becomes its midnight)."""
    if spec.name == "op_time" and spec.column.type != "date":
        return FieldSpec(  # a timestamp, or a plain long of microseconds
            spec.name, Column(spec.name, "timestamp", False), spec.avro, spec.nullable,
            spec.reading, spec.multiply, spec.divide, spec.value_type, spec.logical, spec.scale,
        )
    if spec.name == "op_time":
        return read_as(spec, Column(spec.name, "timestamp", False))
    return spec


class Contract:
    """Not thread-safe; one per consumer (shared by its decoder and its run loop)."""

    def __init__(
        self, policy: Policy = "evolve", columns: ColumnPolicy | None = None,
        hash_key: bytes = b"", table: TableSchema | None = None,
    ) -> None:
        self.policy: Policy = policy
        self.columns = columns or ColumnPolicy()
        if self.columns.hash and not hash_key:
            raise ValueError("hashed columns need a hash key")
        self.hash_key = hash_key
        self.table = table or self.columns.initial_schema(BASE_SCHEMA)
        self.discarded: Counter[str] = Counter()
        self.generation = 0
        """Bumped by ``start``: shapes resolved before it are stale."""

    def start(self, state: TableState) -> None:
        """Take the warehouse's columns; refuse a column policy other than the table's."""
        recorded = state.policy
        if recorded is None and state.has_rows and self.columns != ColumnPolicy():
            recorded = ColumnPolicy()
        if recorded is not None and recorded != self.columns:
            raise ColumnPolicyChanged(
                f"the column policy ({self.columns.describe()}) differs from the one the table "
                f"holds ({recorded.describe()}); stored values cannot follow it row by row: "
                "a full refresh (kyc-sync replay --full-refresh --execute) rebuilds the table "
                "with the new policy, or restore the old one"
            )
        self.table = state.schema
        self.generation += 1

    def shape(
        self, reader: RecordReader, schema: str, schema_id: int | None = None,
        detail: Callable[[], str] | None = None,
    ) -> Shape:
        """Resolve a writer schema (described as ``schema`` in messages and metadata; ``detail``,
        asked only when the schema changes the table, describes it more fully for the column
        metadata); a schema that adds or widens columns changes ``table``."""
        resolution = resolve(
            reader.specs, self.table, self.policy, self.columns, schema, schema_id
        )
        if resolution.changes and detail is not None:
            resolution = resolve(
                reader.specs, self.table, self.policy, self.columns, detail(), schema_id
            )
        if resolution.rejected is None:
            if resolution.changes:
                log.info(
                    "%s changes the table's columns: %s", schema,
                    ", ".join(f"{c.change} {c.column.name} {c.column.describe()}"
                              for c in resolution.changes),
                )
            self.table = resolution.table
            if resolution.discarded:
                log.warning(
                    "%s: field(s) %s are not columns of the table and are dropped "
                    "(schema_evolution=discard)", schema, ", ".join(resolution.discarded),
                )
        kept = tuple(_version_spec(s) for s in resolution.kept)
        plan = plan_for(reader, kept) if resolution.rejected is None else None
        if plan is None and resolution.rejected is None:
            log.warning(
                "%s: field(s) %s cannot be decoded in columns; its events are decoded one at "
                "a time (slower)", schema, ", ".join(unplanned(reader)),
            )
        columns = (KEY, *(s.name for s in kept if s.name not in (KEY, *VERSION_FIELDS)))
        return Shape(reader, resolution, plan, kept, columns, self.hash_key)

    def count_discarded(self, shape: Shape, events: int) -> None:
        for name in shape.resolution.discarded:
            self.discarded[name] += events

    def take_discarded(self) -> dict[str, int]:
        """Events whose field was dropped by ``discard`` since the last call, per field."""
        out, self.discarded = dict(self.discarded), Counter()
        return out


def describe_schema(schema_id: int | None, reader: RecordReader, extra: str = "") -> str:
    """How metadata and messages name a writer schema."""
    if schema_id is None:
        return f"schema file sha256:{reader.fingerprint[:16]}"
    return f"registry id {schema_id}{f' ({extra})' if extra else ''}"


def frame_of(shape: Shape, rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """Rows decoded one at a time (values in ``shape.kept`` order) as a frame."""
    schema = shape.frame_schema()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pl.DataFrame(
        [pl.Series(name, list(values), dtype=dtype)
         for (name, dtype), values in zip(schema.items(), columns, strict=True)],
    )
