"""Decode and validate audit events: plain Avro (schema from ``schemas/``) or the Confluent wire
format (magic byte 0, 4-byte schema id, Avro body; writer schemas fetched once per id).

Every failure of the input itself raises ``InvalidEvent`` with a class and a reason, which the
run loop sends to the dead-letter topic. Failures of our infrastructure (the registry is down)
raise ``RegistryUnavailable`` instead: those events are not bad and must be retried.
"""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from consumer.decode.avro import AvroSchemaError, RecordReader, reader_for
from consumer.decode.columnar import EXACT, BlockPlan, decode_block, plan_for
from schemas.columns import BUSINESS_COLUMNS, KEY, OP_TYPES
from schemas.errors import InvalidEvent, KycSyncError, TransientError

_DECIMAL = re.compile(r"-?[0-9]{1,20}")
_INT64 = range(-(2**63), 2**63)
_TEXT_FIELDS = frozenset(c.name for c in BUSINESS_COLUMNS if c.type == "text")

ROW_FIELDS: tuple[str, ...] = tuple(c.name for c in BUSINESS_COLUMNS)
"""Order of the values in ``Decoded.row``: the business columns of the table."""
_row = operator.itemgetter(*ROW_FIELDS)


ERROR_CLASSES: tuple[str, ...] = ("decode", "wire_format", "schema", "validation", "key_mismatch")
"""The classes of ``InvalidEvent``: the ``kyc_sync.error_class`` header of a dead letter."""


class RegistryUnavailable(TransientError):
    """The schema registry could not be reached; retry, do not dead-letter."""


class UnknownSchemaId(KycSyncError):
    """The registry answered that a schema id does not exist."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A valid event: the reducer's ordering fields and the row values (``ROW_FIELDS``)."""

    key: int
    op_type: str
    op_time: int
    row: tuple[Any, ...]


INDEX = "_message"
"""Column of ``DecodedBatch.rows``: the index of the row's message in the decoded batch."""

ROW_SCHEMA = pl.Schema({
    INDEX: pl.Int64,
    **{c.name: (pl.String if c.type == "text" else pl.Int64) for c in BUSINESS_COLUMNS},
    "op_type": pl.String,
    "op_time": pl.Int64,
})
"""Columns of ``DecodedBatch.rows``: timestamps are integers (microseconds, UTC)."""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A batch decoded in columns. Rows are valid events; the messages at ``singles`` must be
    decoded one by one (``Decoder.decode``), which validates or rejects each with its reason.
    Messages from ``stop`` on were not looked at: the registry was unavailable (``error``)."""

    rows: pl.DataFrame
    singles: tuple[int, ...]
    stop: int
    error: RegistryUnavailable | None = None


class Decoder(Protocol):
    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        """Decode and validate one message; raise ``InvalidEvent``."""

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        """Decode the valid messages of a batch in columns; point at the others."""


def empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=ROW_SCHEMA)


def rows_of(decoded: Iterable[tuple[int, Decoded]]) -> pl.DataFrame:
    """The rows of events decoded one by one, as ``(message index, event)`` pairs."""
    pairs = list(decoded)
    columns: list[list[Any]] = [[i for i, _ in pairs]]
    columns += [list(c) for c in zip(*(e.row for _, e in pairs), strict=True)] if pairs else [
        [] for _ in ROW_FIELDS
    ]
    columns += [[e.op_type for _, e in pairs], [e.op_time for _, e in pairs]]
    return pl.DataFrame(columns, schema=ROW_SCHEMA, orient="col")


SPLIT_BELOW = 8
"""A failing block smaller than this is decoded one message at a time."""


def _decode_group(
    plan: BlockPlan | None,
    bodies: Sequence[bytes | memoryview],
    keys: Sequence[bytes | None],
    indexes: Sequence[int],
) -> tuple[list[pl.DataFrame], list[int]]:
    """Rows of the valid events among ``bodies`` (one writer schema) and the indexes to decode
    one by one. A block that fails is split in halves until the failing messages are isolated,
    so a few bad events do not send a whole batch down the one-by-one path."""
    if plan is None or not bodies:
        return [], list(indexes)
    frame = decode_block(plan, bodies)
    if frame is not None and not _columns_fit(frame):
        return [], list(indexes)  # the schema's types: the same for every half
    if frame is None:
        if len(bodies) < SPLIT_BELOW:
            return [], list(indexes)
        half = len(bodies) // 2
        head, head_singles = _decode_group(plan, bodies[:half], keys[:half], indexes[:half])
        tail, tail_singles = _decode_group(plan, bodies[half:], keys[half:], indexes[half:])
        return head + tail, head_singles + tail_singles
    key_text = pl.col(KEY).cast(pl.String).cast(pl.Binary)
    checked = frame.with_columns(
        pl.Series(INDEX, indexes, dtype=pl.Int64),
        pl.Series("_key", keys, dtype=pl.Binary),
        pl.col("op_type").cast(pl.String),
    ).with_columns(
        _valid=(
            pl.col(EXACT)
            & pl.col(KEY).is_not_null()
            & pl.col("op_time").is_not_null()
            & pl.col("op_type").is_in(sorted(OP_TYPES)).fill_null(False)
            & (pl.col("_key").is_null() | (pl.col("_key") == key_text)).fill_null(False)
        )
    )
    rejected = checked.filter(~pl.col("_valid")).get_column(INDEX).to_list()
    valid = checked.filter(pl.col("_valid"))
    rows = valid.select(
        pl.col(name).cast(dtype) if name in valid.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in ROW_SCHEMA.items()
    )
    return [rows], rejected


def _columns_fit(frame: pl.DataFrame) -> bool:
    """Whether the decoded columns have the types the one-by-one path accepts; if not, that path
    decides (and words) what happens to each event."""
    schema = frame.schema
    for name in (KEY, "op_time"):
        if name not in schema or not schema[name].is_integer():
            return False
    if "op_type" not in schema or not isinstance(schema["op_type"], pl.String | pl.Categorical):
        return False
    for column in BUSINESS_COLUMNS[1:]:
        dtype = schema.get(column.name)
        if dtype is None:
            continue
        if (column.type == "text") != (dtype == pl.String) or (
            column.type != "text" and not dtype.is_integer()
        ):
            return False
    return True


def _batch(
    frames: list[pl.DataFrame], singles: list[int], stop: int,
    error: RegistryUnavailable | None = None,
) -> DecodedBatch:
    rows = pl.concat(frames, how="vertical") if frames else empty_rows()
    if error is not None:
        rows = rows.filter(pl.col(INDEX) < stop)
        singles = [i for i in singles if i < stop]
    return DecodedBatch(rows, tuple(sorted(singles)), stop, error)


def validate(record: Mapping[str, Any], key: bytes | None) -> Decoded:
    """Check a decoded record and its message key; build the row."""
    # Fast path for the common case, exact ints and a canonical decimal key; anything else takes
    # the full checks below, which decide (and word) every rejection.
    profile_id = record.get("kyc_profile_id")
    op_time = record.get("op_time")
    op_type = record.get("op_type")
    if (
        type(profile_id) is int
        and type(op_time) is int
        and op_type in OP_TYPES
        and (key is None or (key.isdigit() and len(key) <= 20 and int(key) == profile_id))
    ):
        try:
            row = _row(record)
        except KeyError:  # a writer schema without some business column: those are null
            row = tuple(record.get(f) for f in ROW_FIELDS)
        if profile_id in _INT64 and op_time in _INT64 and _row_fits(row):
            return Decoded(profile_id, op_type, op_time, row)
    return _validate(record, key)


def _row_fits(row: tuple[Any, ...]) -> bool:
    """Every value has its column's type: text or null, an int64 timestamp or null."""
    for name, value in zip(ROW_FIELDS, row, strict=True):
        if value is None:
            continue
        if name in _TEXT_FIELDS:
            if type(value) is not str:
                return False
        elif type(value) is not int or value not in _INT64:
            return False
    return True


def _validate(record: Mapping[str, Any], key: bytes | None) -> Decoded:
    profile_id = record.get("kyc_profile_id")
    if profile_id is None:
        raise InvalidEvent("validation", "kyc_profile_id is null")
    if not isinstance(profile_id, int) or isinstance(profile_id, bool):
        raise InvalidEvent("validation", f"kyc_profile_id is not an integer: {profile_id!r}")
    op_time = record.get("op_time")
    if op_time is None:
        raise InvalidEvent("validation", "op_time is null")
    if not isinstance(op_time, int) or isinstance(op_time, bool):
        raise InvalidEvent("validation", f"op_time is not a timestamp: {op_time!r}")
    op_type = record.get("op_type")
    if op_type not in OP_TYPES:
        raise InvalidEvent("validation", f"op_type {op_type!r} is not INSERT, UPDATE or DELETE")
    if profile_id not in _INT64 or op_time not in _INT64:
        raise InvalidEvent("validation", "kyc_profile_id or op_time is outside 64-bit integers")
    row = tuple(record.get(f) for f in ROW_FIELDS)
    if not _row_fits(row):
        kinds = {f: type(v).__name__ for f, v in zip(ROW_FIELDS, row, strict=True)}
        raise InvalidEvent("validation", f"a column has a value of the wrong type: {kinds}")
    if key is not None:
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
                "key_mismatch",
                f"message key {key_id} disagrees with kyc_profile_id {profile_id}",
            )
    return Decoded(profile_id, op_type, op_time, row)


def _read(reader: RecordReader, value: bytes, start: int, key: bytes | None) -> Decoded:
    try:
        record = reader.read(value, start)
    except Exception as err:  # any decoding failure of foreign bytes is the input's fault
        raise InvalidEvent("decode", f"{type(err).__name__}: {err}") from None
    return validate(record, key)


class PlainAvroDecoder:
    """Schemaless Avro bodies written with one known schema."""

    def __init__(self, writer_schema: Mapping[str, Any]) -> None:
        self.reader = reader_for(writer_schema)
        self.plan = plan_for(self.reader)

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        if not value:
            raise InvalidEvent("decode", "empty message value")
        return _read(self.reader, value, 0, key)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        if all(values):  # the common case: no message without a value
            rows, rejected = _decode_group(
                self.plan, values, keys, range(len(values)))  # type: ignore[arg-type]
            return _batch(rows, rejected, len(values))
        indexes = [i for i, value in enumerate(values) if value]
        singles = [i for i, value in enumerate(values) if not value]
        bodies = [values[i] or b"" for i in indexes]
        rows, rejected = _decode_group(self.plan, bodies, [keys[i] for i in indexes], indexes)
        return _batch(rows, singles + rejected, len(values))


SchemaFetcher = Callable[[int], Mapping[str, Any]]
"""Returns the writer schema of an id; raises UnknownSchemaId or RegistryUnavailable."""

WIRE_HEADER = struct.Struct(">bI")


class ConfluentAvroDecoder:
    """Confluent wire format; writer schemas fetched once per id and cached."""

    def __init__(self, fetch: SchemaFetcher) -> None:
        self.fetch = fetch
        self.cache: dict[int, RecordReader] = {}
        self.plans: dict[int, BlockPlan | None] = {}
        self.rejected: dict[int, str] = {}

    def _reader(self, value: bytes) -> RecordReader:
        if len(value) < WIRE_HEADER.size:
            raise InvalidEvent("wire_format", f"message of {len(value)} bytes has no header")
        magic, schema_id = WIRE_HEADER.unpack_from(value)
        if magic != 0:
            raise InvalidEvent("wire_format", f"unknown magic byte {magic}")
        reader = self.cache.get(schema_id)
        if reader is not None:
            return reader
        if schema_id in self.rejected:
            raise InvalidEvent("schema", self.rejected[schema_id])
        try:
            reader = reader_for(self.fetch(schema_id))
        except UnknownSchemaId:
            raise InvalidEvent("schema", f"unknown schema id {schema_id}") from None
        except AvroSchemaError as err:
            self.rejected[schema_id] = f"schema id {schema_id}: {err}"
            raise InvalidEvent("schema", self.rejected[schema_id]) from None
        self.cache[schema_id] = reader
        return reader

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        if not value:
            raise InvalidEvent("decode", "empty message value")
        return _read(self._reader(value), value, WIRE_HEADER.size, key)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
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
                reader = self._reader(header)
            except InvalidEvent:
                singles.extend(indexes)
                continue
            except RegistryUnavailable as err:
                # The events are fine: stop at the first one, the caller re-reads from there.
                return _batch(frames, singles, indexes[0], err)
            schema_id = WIRE_HEADER.unpack_from(header)[1]
            if schema_id not in self.plans:
                self.plans[schema_id] = plan_for(reader)
            bodies = [memoryview(values[i] or b"")[WIRE_HEADER.size:] for i in indexes]
            rows, rejected = _decode_group(
                self.plans[schema_id], bodies, [keys[i] for i in indexes], indexes
            )
            frames.extend(rows)
            singles.extend(rejected)
        return _batch(frames, singles, len(values))
