"""Avro readers for audit records, built from a writer schema.

Top-level logical types are stripped from the schema the reader parses: timestamps and times stay
integers (scaled to microseconds by ``values.column_value``), decimals stay their bytes, which
avoids building ``datetime`` and ``Decimal`` objects per event, and both decode paths read the
same underlying values. Records are read with the writer schema alone: measured here, a
projecting reader schema is slower in fastavro than reading every field (schema resolution costs
more than the fields it skips), and reading every field validates the whole event when it
arrives.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from schemas.avro_types import FieldSpec
from schemas.errors import TerminalError
from schemas.evolution import required_problem, writer_specs


class AvroSchemaError(TerminalError):
    """The writer schema cannot carry an audit record (terminal for a schema file; a registry
    schema makes its events dead letters instead)."""


@dataclass(frozen=True, slots=True)
class RecordReader:
    """Reads one record with a parsed writer schema (top-level logical types stripped)."""

    schema: Any
    specs: tuple[FieldSpec, ...]
    plain: str
    """The writer schema as JSON, top-level logical types stripped (what ``schema`` was parsed
    from, and the header of a columnar block)."""
    fingerprint: str
    """sha256 of the writer schema's canonical form: names a schema that has no registry id."""

    def read(self, payload: bytes, start: int = 0) -> dict[str, Any]:
        buf = io.BytesIO(payload)
        if start:
            buf.seek(start)
        record = fastavro.schemaless_reader(buf, self.schema, None)
        if not isinstance(record, dict):
            raise TypeError("the writer schema does not describe a record")
        if buf.tell() != len(payload):
            raise ValueError(f"{len(payload) - buf.tell()} trailing bytes after the record")
        return record


def reader_for(writer_schema: Mapping[str, Any]) -> RecordReader:
    """The reader of one writer schema; ``AvroSchemaError`` if it is no readable record."""
    if not isinstance(writer_schema, Mapping):
        raise AvroSchemaError(
            f"the writer schema is not an Avro record but {json.dumps(writer_schema)[:80]}"
        )
    try:
        specs = writer_specs(writer_schema)
    except ValueError as err:
        raise AvroSchemaError(str(err)) from None
    problem = required_problem(specs)
    if problem is not None:
        raise AvroSchemaError(problem)
    plain = copy.deepcopy(dict(writer_schema))
    for field, spec in zip(plain["fields"], specs, strict=True):
        field["type"] = spec.value_type
        field.pop("default", None)  # reading with the writer schema never uses it (and the
        # columnar reader refuses some defaults)
    try:
        parsed = fastavro.parse_schema(plain)
        canonical = fastavro.schema.to_parsing_canonical_form(dict(writer_schema))
    except Exception as err:  # fastavro raises several types for bad schemas
        raise AvroSchemaError(f"invalid writer schema: {err}") from err
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return RecordReader(parsed, specs, json.dumps(plain), fingerprint)
