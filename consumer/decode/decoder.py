"""Decode and validate audit events: plain Avro (schema from ``schemas/`` or a schema file) or the
Confluent wire format (magic byte 0, 4-byte schema id, Avro body; writer schemas fetched once per
id).

Each writer schema is resolved once against the table's columns (``contract.Contract``): its
events fill the columns it keeps, the table gains the columns it adds. Every failure of the input
itself raises ``InvalidEvent`` with a class and a reason, which the run loop sends to the
dead-letter topic. Failures of our infrastructure (the registry is down) raise
``RegistryUnavailable`` instead: those events are not bad and must be retried.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol

import polars as pl

from consumer.decode.avro import AvroSchemaError, RecordReader, reader_for
from consumer.decode.columnar import EXACT, decode_block
from consumer.decode.contract import Contract, Shape, describe_schema, frame_of
from consumer.decode.values import INT64, column_value, valid_rows
from schemas.columns import BUSINESS_COLUMNS, KEY, OP_TYPES
from schemas.errors import InvalidEvent, KycSyncError, TransientError

_DECIMAL = re.compile(r"-?[0-9]{1,20}")

ROW_FIELDS: tuple[str, ...] = tuple(c.name for c in BUSINESS_COLUMNS)
"""The business columns of the packaged schema, in its order."""

ERROR_CLASSES: tuple[str, ...] = ("decode", "wire_format", "schema", "validation", "key_mismatch")
"""The classes of ``InvalidEvent``: the ``kyc_sync.error_class`` header of a dead letter."""

SCHEMA_FILE_BEHIND = (
    "; if the producers changed their schema, the schema file (decoding.schema_file) is probably "
    "behind: update it and replay from the time of the change (docs: Schema changes)"
)


class RegistryUnavailable(TransientError):
    """The schema registry could not be reached; retry, do not dead-letter."""


class UnknownSchemaId(KycSyncError):
    """The registry answered that a schema id does not exist."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A valid event: the reducer's ordering fields and the values of the business columns its
    schema fills (``shape.columns`` order; ``ROW_FIELDS`` for the packaged schema)."""

    key: int
    op_type: str
    op_time: int
    row: tuple[Any, ...]
    shape: Shape | None = field(default=None, compare=False, repr=False)


INDEX = "_message"
"""Column of ``DecodedBatch.rows``: the index of the row's message in the decoded batch."""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A batch decoded in columns. Rows are valid events (the columns of their schemas, aligned
    by name: a column one schema lacks is null in its rows); the messages at ``singles`` must be
    decoded one by one (``Decoder.decode``), which validates or rejects each with its reason.
    Messages from ``stop`` on were not looked at: the registry was unavailable (``error``)."""

    rows: pl.DataFrame
    singles: tuple[int, ...]
    stop: int
    error: RegistryUnavailable | None = None


class Decoder(Protocol):
    contract: Contract

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        """Decode and validate one message; raise ``InvalidEvent``."""

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        """Decode the valid messages of a batch in columns; point at the others."""


def empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema={
        INDEX: pl.Int64, KEY: pl.Int64, "op_type": pl.String, "op_time": pl.Int64,
    })


def concat_rows(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Frames of several writer schemas as one: columns aligned by name, null where absent."""
    frames = [f for f in frames if f.height] or list(frames[:1])
    if not frames:
        return empty_rows()
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal")


def rows_of(decoded: Iterable[tuple[int, Decoded]]) -> pl.DataFrame:
    """The rows of events decoded one by one, as ``(message index, event)`` pairs."""
    groups: dict[int, tuple[Shape, list[tuple[Any, ...]]]] = {}
    for index, event in decoded:
        shape = event.shape
        if shape is None:
            raise ValueError("an event decoded without its shape")
        values = (index, event.op_type, event.op_time, *event.row)
        groups.setdefault(id(shape), (shape, []))[1].append(values)
    frames = []
    for shape, rows in groups.values():
        names = (INDEX, "op_type", "op_time", *shape.columns)
        by_name = dict(zip(names, zip(*rows, strict=True), strict=True))
        kept = [tuple(by_name[s.name]) for s in shape.kept]
        frame = frame_of(shape, list(zip(*kept, strict=True)))
        frame = shape.finish(frame).with_columns(
            pl.Series(INDEX, list(by_name[INDEX]), dtype=pl.Int64)
        )
        frames.append(_ordered(frame, shape))
    return concat_rows(frames)


def _ordered(frame: pl.DataFrame, shape: Shape) -> pl.DataFrame:
    return frame.select(INDEX, *shape.columns, "op_type", "op_time")


SPLIT_BELOW = 8
"""A failing block smaller than this is decoded one message at a time."""


def _decode_group(
    shape: Shape,
    bodies: Sequence[bytes | memoryview],
    keys: Sequence[bytes | None],
    indexes: Sequence[int],
    skip: int = 0,
) -> tuple[list[pl.DataFrame], list[int]]:
    """Rows of the valid events among ``bodies`` (one writer schema; each after its first
    ``skip`` bytes) and the indexes to decode one by one. A block that fails is split in halves
    until the failing messages are isolated, so a few bad events do not send a whole batch down
    the one-by-one path."""
    plan = shape.plan
    if plan is None or not bodies:
        return [], list(indexes)
    frame = decode_block(plan, bodies, skip)
    if frame is None:
        if len(bodies) < SPLIT_BELOW:
            return [], list(indexes)
        half = len(bodies) // 2
        head, head_singles = _decode_group(
            shape, bodies[:half], keys[:half], indexes[:half], skip)
        tail, tail_singles = _decode_group(
            shape, bodies[half:], keys[half:], indexes[half:], skip)
        return head + tail, head_singles + tail_singles
    key_text = pl.col(KEY).cast(pl.String).cast(pl.Binary)
    checked = frame.with_columns(
        pl.Series(INDEX, indexes, dtype=pl.Int64),
        pl.Series("_key", keys, dtype=pl.Binary),
    ).with_columns(
        _valid=(
            pl.col(EXACT)
            & pl.col(KEY).is_not_null()
            & pl.col("op_time").is_not_null()
            & pl.col("op_type").is_in(sorted(OP_TYPES)).fill_null(False)
            & (pl.col("_key").is_null() | (pl.col("_key") == key_text)).fill_null(False)
            & valid_rows(frame, shape.kept)
        )
    )
    rejected = checked.filter(~pl.col("_valid")).get_column(INDEX).to_list()
    valid = checked.filter(pl.col("_valid"))
    return [_ordered(shape.finish(valid), shape)], rejected


def _batch(
    frames: list[pl.DataFrame], singles: list[int], stop: int,
    error: RegistryUnavailable | None = None,
) -> DecodedBatch:
    rows = concat_rows(frames)
    if error is not None:
        rows = rows.filter(pl.col(INDEX) < stop)
        singles = [i for i in singles if i < stop]
    return DecodedBatch(rows, tuple(sorted(singles)), stop, error)


def _check_key(key: bytes, profile_id: int) -> None:
    try:
        text = key.decode("ascii")
        if not _DECIMAL.fullmatch(text):
            raise ValueError(text)
        key_id = int(text)
    except (UnicodeDecodeError, ValueError):
        raise InvalidEvent(
            "key_mismatch", f"message key {key[:40]!r} is not a decimal kyc_profile_id"
        ) from None
    if key_id != profile_id:
        raise InvalidEvent(
            "key_mismatch", f"message key {key_id} disagrees with kyc_profile_id {profile_id}",
        )


def validate(record: Mapping[str, Any], key: bytes | None, shape: Shape) -> Decoded:
    """Check a decoded record and its message key; build the event."""
    profile_id = record.get(KEY)
    if profile_id is None:
        raise InvalidEvent("validation", "kyc_profile_id is null")
    if type(profile_id) is not int:
        raise InvalidEvent("validation", f"kyc_profile_id is not an integer: {profile_id!r}")
    raw_time = record.get("op_time")
    if raw_time is None:
        raise InvalidEvent("validation", "op_time is null")
    if type(raw_time) is not int:
        raise InvalidEvent("validation", f"op_time is not a timestamp: {raw_time!r}")
    op_type = record.get("op_type")
    if op_type not in OP_TYPES:
        raise InvalidEvent("validation", f"op_type {op_type!r} is not INSERT, UPDATE or DELETE")
    if profile_id not in INT64 or raw_time not in INT64:
        raise InvalidEvent("validation", "kyc_profile_id or op_time is outside 64-bit integers")
    values: dict[str, Any] = {}
    for spec in shape.kept:
        values[spec.name] = column_value(spec, record.get(spec.name))
    if key is not None:
        _check_key(key, profile_id)
    row = tuple(values[name] for name in shape.columns)
    return Decoded(profile_id, str(op_type), values["op_time"], row, shape)


def _read(shape: Shape, value: bytes, start: int, key: bytes | None, hint: str = "") -> Decoded:
    if shape.rejected is not None:
        raise InvalidEvent("schema", shape.rejected)
    try:
        record = shape.reader.read(value, start)
    except Exception as err:  # any decoding failure of foreign bytes is the input's fault
        raise InvalidEvent("decode", f"{type(err).__name__}: {err}{hint}") from None
    return validate(record, key, shape)


class PlainAvroDecoder:
    """Schemaless Avro bodies written with one known schema (``AvroSchemaError`` at
    construction if it cannot carry audit records: a setting to fix, not an event to drop)."""

    def __init__(
        self, writer_schema: Mapping[str, Any], contract: Contract | None = None,
        schema_file: bool = False,
    ) -> None:
        self.contract = contract or Contract()
        self.reader = reader_for(writer_schema)
        self.hint = SCHEMA_FILE_BEHIND if schema_file else ""
        self._shape: Shape | None = None
        self._generation = -1

    @property
    def shape(self) -> Shape:
        if self._shape is None or self._generation != self.contract.generation:
            self._generation = self.contract.generation
            self._shape = self.contract.shape(self.reader, describe_schema(None, self.reader))
        return self._shape

    @property
    def plan(self) -> Any:
        return self.shape.plan

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        if not value:
            raise InvalidEvent("decode", "empty message value")
        return _read(self.shape, value, 0, key, self.hint)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        shape = self.shape
        if shape.rejected is not None:
            return _batch([], list(range(len(values))), len(values))
        if all(values):  # the common case: no message without a value
            rows, rejected = _decode_group(
                shape, values, keys, range(len(values)))  # type: ignore[arg-type]
            self.contract.count_discarded(shape, sum(r.height for r in rows))
            return _batch(rows, rejected, len(values))
        indexes = [i for i, value in enumerate(values) if value]
        singles = [i for i, value in enumerate(values) if not value]
        bodies = [values[i] or b"" for i in indexes]
        rows, rejected = _decode_group(shape, bodies, [keys[i] for i in indexes], indexes)
        self.contract.count_discarded(shape, sum(r.height for r in rows))
        return _batch(rows, singles + rejected, len(values))


def _one_header(values: Sequence[bytes | None]) -> bytes | None:
    """The wire-format header every value starts with, if they all start with the same one
    (magic byte 0) and carry a body; None otherwise (then each is looked at on its own)."""
    if not values or not all(values):
        return None
    first = values[0]
    assert first is not None
    header = first[:WIRE_HEADER.size]
    if len(header) < WIRE_HEADER.size or header[0] != 0:
        return None
    try:
        same = all(map(bytes.startswith, values, repeat(header)))  # type: ignore[arg-type]
    except TypeError:  # a value that is not bytes
        return None
    if not same or min(map(len, values)) <= WIRE_HEADER.size:  # type: ignore[arg-type]
        return None
    return header


class SchemaSource(Protocol):
    def schema(self, schema_id: int) -> Mapping[str, Any]:
        """The writer schema of an id; raises UnknownSchemaId or RegistryUnavailable."""

    def versions(self, schema_id: int) -> str:
        """The subjects and versions of an id, for metadata (best effort: "" if unknown)."""


WIRE_HEADER = struct.Struct(">bI")


class ConfluentAvroDecoder:
    """Confluent wire format; writer schemas fetched once per id and cached."""

    def __init__(self, registry: SchemaSource, contract: Contract | None = None) -> None:
        self.registry = registry
        self.contract = contract or Contract()
        self.shapes: dict[int, Shape] = {}
        self.readers: dict[int, RecordReader] = {}
        self.rejected: dict[int, str] = {}
        self._generation = contract.generation if contract else 0

    def _shape_of(self, schema_id: int) -> Shape:
        if self._generation != self.contract.generation:
            self._generation = self.contract.generation
            self.shapes.clear()
        shape = self.shapes.get(schema_id)
        if shape is not None:
            return shape
        if schema_id in self.rejected:
            raise InvalidEvent("schema", self.rejected[schema_id])
        reader = self.readers.get(schema_id)
        if reader is None:
            try:
                reader = reader_for(self.registry.schema(schema_id))
            except UnknownSchemaId:
                raise InvalidEvent("schema", f"unknown schema id {schema_id}") from None
            except AvroSchemaError as err:
                self.rejected[schema_id] = f"schema id {schema_id}: {err}"
                raise InvalidEvent("schema", self.rejected[schema_id]) from None
            self.readers[schema_id] = reader
        shape = self.contract.shape(
            reader, describe_schema(schema_id, reader), schema_id,
            detail=lambda: describe_schema(schema_id, reader, self._versions(schema_id)),
        )
        self.shapes[schema_id] = shape
        return shape

    def _versions(self, schema_id: int) -> str:
        try:
            return self.registry.versions(schema_id)
        except (KycSyncError, OSError):
            return ""

    def _shape(self, value: bytes) -> Shape:
        if len(value) < WIRE_HEADER.size:
            raise InvalidEvent("wire_format", f"message of {len(value)} bytes has no header")
        magic, schema_id = WIRE_HEADER.unpack_from(value)
        if magic != 0:
            raise InvalidEvent("wire_format", f"unknown magic byte {magic}")
        return self._shape_of(schema_id)

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        if not value:
            raise InvalidEvent("decode", "empty message value")
        return _read(self._shape(value), value, WIRE_HEADER.size, key)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        header = _one_header(values)
        if header is not None:  # the common case: every message under one schema id
            try:
                shape = self._shape(header)
            except InvalidEvent:
                return _batch([], list(range(len(values))), len(values))
            except RegistryUnavailable as err:
                return _batch([], [], 0, err)
            if shape.rejected is not None:
                return _batch([], list(range(len(values))), len(values))
            rows, rejected = _decode_group(
                shape, values, keys, range(len(values)),  # type: ignore[arg-type]
                skip=WIRE_HEADER.size)
            self.contract.count_discarded(shape, sum(r.height for r in rows))
            return _batch(rows, rejected, len(values))
        groups: dict[bytes, list[int]] = {}
        singles: list[int] = []
        for i, value in enumerate(values):
            if value is None or len(value) <= WIRE_HEADER.size or value[0] != 0:
                singles.append(i)
            else:
                groups.setdefault(value[:WIRE_HEADER.size], []).append(i)
        frames: list[pl.DataFrame] = []
        for header, indexes in groups.items():
            try:
                shape = self._shape(header)
            except InvalidEvent:
                singles.extend(indexes)
                continue
            except RegistryUnavailable as err:
                # The events are fine: stop at the first one, the caller re-reads from there.
                return _batch(frames, singles, indexes[0], err)
            if shape.rejected is not None:
                singles.extend(indexes)
                continue
            bodies = [memoryview(values[i] or b"")[WIRE_HEADER.size:] for i in indexes]
            rows, rejected = _decode_group(shape, bodies, [keys[i] for i in indexes], indexes)
            self.contract.count_discarded(shape, sum(r.height for r in rows))
            frames.extend(rows)
            singles.extend(rejected)
        return _batch(frames, singles, len(values))
