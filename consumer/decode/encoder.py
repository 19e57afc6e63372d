"""Encode audit records the way producers do: plain schemaless Avro or the Confluent wire format.

Used by the sample producer, the tests and the benchmarks; kyc-sync itself only decodes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fastavro

from consumer.decode.decoder import WIRE_HEADER


class AuditEncoder:
    """Writes audit records; ``schema_id`` set means the Confluent wire format."""

    def __init__(self, schema: Mapping[str, Any], schema_id: int | None = None) -> None:
        self.parsed = fastavro.parse_schema(dict(schema))
        self.schema_id = schema_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        if self.schema_id is not None:
            buf.write(WIRE_HEADER.pack(0, self.schema_id))
        fastavro.schemaless_writer(buf, self.parsed, dict(record))
        return buf.getvalue()


def message_key(kyc_profile_id: int) -> bytes:
    """Producers key messages by kyc_profile_id, as a decimal string."""
    return str(kyc_profile_id).encode("ascii")
