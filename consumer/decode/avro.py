"""Avro readers for the audit record, built from a writer schema.

Timestamps stay integers (microseconds since the epoch, UTC): logical types are stripped from the
schema and the values scaled by their unit, which avoids building ``datetime`` objects per event.
Records are read with the writer schema alone: measured here, a projecting reader schema is slower
in fastavro than reading every field (schema resolution costs more than the fields it skips), and
reading every field validates the whole event when it arrives.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from schemas.columns import REQUIRED_FIELDS
from schemas.errors import TerminalError

_SCALE_TO_MICROS: dict[str, int] = {
    "timestamp-micros": 1,
    "local-timestamp-micros": 1,
    "timestamp-millis": 1000,
    "local-timestamp-millis": 1000,
    "date": 86_400_000_000,
}


class AvroSchemaError(TerminalError):
    """The writer schema cannot carry an audit record (terminal for a schema file; a registry
    schema makes its events dead letters instead)."""


def _strip(field_type: Any) -> tuple[Any, int]:
    """The field type without logical types, and the factor that turns its value into micros."""
    if isinstance(field_type, list):
        stripped = [_strip(branch) for branch in field_type]
        scales = {s for _, s in stripped if s != 1}
        return [t for t, _ in stripped], (scales.pop() if len(scales) == 1 else 1)
    if isinstance(field_type, dict) and "logicalType" in field_type:
        scale = _SCALE_TO_MICROS.get(str(field_type["logicalType"]), 1)
        plain = {k: v for k, v in field_type.items() if k != "logicalType"}
        return (plain["type"] if len(plain) == 1 else plain), scale
    return field_type, 1


@dataclass(frozen=True, slots=True)
class RecordReader:
    """Reads one record with a parsed writer schema and rescales timestamps to microseconds."""

    schema: Any
    scales: tuple[tuple[str, int], ...]
    plain: str
    """The writer schema as JSON, logical types stripped (what ``schema`` was parsed from)."""

    def read(self, payload: bytes, start: int = 0) -> dict[str, Any]:
        buf = io.BytesIO(payload)
        if start:
            buf.seek(start)
        record = fastavro.schemaless_reader(buf, self.schema, None)
        if not isinstance(record, dict):
            raise TypeError("the writer schema does not describe a record")
        if buf.tell() != len(payload):
            raise ValueError(f"{len(payload) - buf.tell()} trailing bytes after the record")
        for name, factor in self.scales:
            value = record.get(name)
            if value is not None:
                record[name] = value * factor
        return record


def reader_for(writer_schema: Mapping[str, Any]) -> RecordReader:
    """The reader of one writer schema, which must carry the fields the reducer needs."""
    if writer_schema.get("type") != "record" or not isinstance(writer_schema.get("fields"), list):
        raise AvroSchemaError("the writer schema is not an Avro record")
    plain = copy.deepcopy(dict(writer_schema))
    scales: list[tuple[str, int]] = []
    try:
        for field in plain["fields"]:
            field["type"], scale = _strip(field["type"])
            if scale != 1:
                scales.append((field["name"], scale))
        names = {f["name"] for f in plain["fields"]}
    except (KeyError, TypeError) as err:
        raise AvroSchemaError(f"invalid writer schema: field without {err}") from err
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise AvroSchemaError(f"the writer schema lacks field(s) {', '.join(missing)}")
    try:
        parsed = fastavro.parse_schema(plain)
    except Exception as err:  # fastavro raises several types for bad schemas
        raise AvroSchemaError(f"invalid writer schema: {err}") from err
    return RecordReader(parsed, tuple(scales), json.dumps(plain))
