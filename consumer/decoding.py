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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from batcher.events import OP_TYPES
from consumer.avro import AvroSchemaError, RecordReader, reader_for
from warehouse.tables import DATA_COLUMNS

_DECIMAL = re.compile(r"-?[0-9]{1,20}")

ROW_FIELDS: tuple[str, ...] = tuple(c.name for c in DATA_COLUMNS)
"""Order of the values in ``Decoded.row``: the business columns of the table."""
_row = operator.itemgetter(*ROW_FIELDS)


ERROR_CLASSES: tuple[str, ...] = ("decode", "wire_format", "schema", "validation", "key_mismatch")
"""The classes of ``InvalidEvent``: the ``kyc_sync.error_class`` header of a dead letter."""


class InvalidEvent(Exception):
    """An event that cannot be applied: bad bytes, schema or values."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason


class RegistryUnavailable(Exception):
    """The schema registry could not be reached; retry, do not dead-letter."""


class UnknownSchemaId(Exception):
    """The registry answered that a schema id does not exist."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A valid event: the reducer's ordering fields and the row values (``ROW_FIELDS``)."""

    key: int
    op_type: str
    op_time: int
    row: tuple[Any, ...]


class Decoder(Protocol):
    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        """Decode and validate one message; raise ``InvalidEvent``."""


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
        return Decoded(profile_id, op_type, op_time, row)
    return _validate(record, key)


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
    return Decoded(profile_id, op_type, op_time, tuple(record.get(f) for f in ROW_FIELDS))


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

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        if not value:
            raise InvalidEvent("decode", "empty message value")
        return _read(self.reader, value, 0, key)


SchemaFetcher = Callable[[int], Mapping[str, Any]]
"""Returns the writer schema of an id; raises UnknownSchemaId or RegistryUnavailable."""

WIRE_HEADER = struct.Struct(">bI")


class ConfluentAvroDecoder:
    """Confluent wire format; writer schemas fetched once per id and cached."""

    def __init__(self, fetch: SchemaFetcher) -> None:
        self.fetch = fetch
        self.cache: dict[int, RecordReader] = {}
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
