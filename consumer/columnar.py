"""Decode a whole consume() batch of Avro bodies in one pass, into columns.

Per-event decoding builds a Python dict per event, which costs more than Kafka delivering it. Here
the bodies written with one schema are laid end to end as the single block of an in-memory Avro
object container file, which polars decodes in native code into columns.

Concatenated bodies carry no boundaries, so a body that is too short or too long would shift every
later record. The decode is therefore accepted only if each record's canonical encoded length,
computed from its decoded values, equals its message's length. A decoder never reads fewer bytes
than the canonical length, so equal totals mean each record was read from exactly its own message
bytes — the same result as decoding each message alone. Anything else (a decode error, a length
mismatch, a schema this plan does not cover) returns None and the caller decodes one by one.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from consumer.avro import RecordReader

MAGIC = b"Obj\x01"

_PRIMITIVE_SIZES: dict[str, int | None] = {
    # encoded size of a value; None: a zigzag varint
    "null": 0,
    "boolean": 1,
    "int": None,
    "long": None,
    "float": 4,
    "double": 8,
}
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _zigzag_varint(n: int) -> bytes:
    value = (n << 1) ^ (n >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _avro_bytes(data: bytes) -> bytes:
    return _zigzag_varint(len(data)) + data


def container_header(schema_json: str, sync: bytes) -> bytes:
    """The header of an uncompressed Avro object container file."""
    meta = {"avro.schema": schema_json.encode(), "avro.codec": b"null"}
    out = bytearray(MAGIC)
    out += _zigzag_varint(len(meta))
    for key, value in meta.items():
        out += _avro_bytes(key.encode()) + _avro_bytes(value)
    out += b"\x00" + sync
    return bytes(out)


@dataclass(frozen=True, slots=True)
class FieldSize:
    """How to compute the canonical encoded size of one field from its decoded column."""

    name: str
    kind: str  # "fixed", "varint", "string", "bytes", "enum"
    fixed: int = 0
    nullable: bool = False  # a ["null", T] union: one byte of branch index first


def _unwrap(field_type: Any) -> tuple[Any, bool] | None:
    """The value type of a field and whether it is a ["null", T] union; None for other unions."""
    if not isinstance(field_type, list):
        return field_type, False
    branches = [b for b in field_type if b != "null"]
    if len(field_type) != 2 or len(branches) != 1:
        return None
    return branches[0], True


def _field_size(name: str, field_type: Any) -> FieldSize | None:
    unwrapped = _unwrap(field_type)
    if unwrapped is None:
        return None
    value_type, nullable = unwrapped
    if isinstance(value_type, dict):
        kind = value_type.get("type")
        if kind == "enum":
            # one-byte indexes only: the size of a symbol's index is then known
            fits = len(value_type.get("symbols", [])) <= 64
            return FieldSize(name, "enum", nullable=nullable) if fits else None
        if not isinstance(kind, str) or not set(value_type) <= {"type", "doc"}:
            return None
        value_type = kind
    if value_type in ("string", "bytes"):
        return FieldSize(name, value_type, nullable=nullable)
    if not isinstance(value_type, str) or value_type not in _PRIMITIVE_SIZES:
        return None
    size = _PRIMITIVE_SIZES[value_type]
    kind = "varint" if size is None else "fixed"
    return FieldSize(name, kind, fixed=size or 0, nullable=nullable)


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """Everything needed to decode a batch of bodies written with one (stripped) writer schema."""

    header: bytes
    sync: bytes
    sizes: tuple[FieldSize, ...]
    scales: tuple[tuple[str, int], ...]
    names: frozenset[str]
    types: dict[str, str]


def plan_for(reader: RecordReader) -> BlockPlan | None:
    """A block plan for the reader's schema, or None if it holds a type the plan cannot size."""
    schema = json.loads(reader.plain)
    sizes: list[FieldSize] = []
    types: dict[str, str] = {}
    for field in schema.get("fields", []):
        size = _field_size(field["name"], field["type"])
        if size is None:
            return None
        sizes.append(size)
        types[size.name] = size.kind
    sync = os.urandom(16)
    return BlockPlan(
        header=container_header(reader.plain, sync),
        sync=sync,
        sizes=tuple(sizes),
        scales=reader.scales,
        names=frozenset(types),
        types=types,
    )


def _varint_sizes(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    signed = values.astype(np.int64, copy=False)
    zigzag = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    sizes: np.ndarray[Any, Any] = np.searchsorted(_VARINT_LIMITS, zigzag, side="right") + 1
    return sizes


def _encoded_sizes(frame: pl.DataFrame, plan: BlockPlan) -> np.ndarray[Any, Any]:
    total = np.zeros(frame.height, dtype=np.int64)
    for size in plan.sizes:
        column = frame.get_column(size.name)
        present = column.is_not_null().to_numpy() if size.nullable else None
        if size.kind == "fixed":
            part = np.full(frame.height, size.fixed, dtype=np.int64)
        elif size.kind == "enum":
            part = np.ones(frame.height, dtype=np.int64)
        elif size.kind == "varint":
            part = _varint_sizes(column.fill_null(0).to_numpy())
        else:  # string or bytes: a length, then the bytes
            lengths = (
                column.str.len_bytes() if size.kind == "string" else column.bin.size()
            ).fill_null(0).to_numpy().astype(np.int64)
            part = _varint_sizes(lengths) + lengths
        if present is not None:
            part = np.where(present, part + 1, 1)
        total += part
    return total


def decode_block(plan: BlockPlan, bodies: Sequence[bytes | memoryview]) -> pl.DataFrame | None:
    """Decode ``bodies`` (one schemaless Avro record each) into one frame, row i from body i,
    timestamps scaled to microseconds; None when the batch must be decoded one by one."""
    if not bodies:
        return None
    lengths = np.fromiter((len(b) for b in bodies), dtype=np.int64, count=len(bodies))
    payload = b"".join(bodies)
    container = b"".join((
        plan.header,
        _zigzag_varint(len(bodies)),
        _zigzag_varint(len(payload)),
        payload,
        plan.sync,
    ))
    try:
        frame = pl.read_avro(io.BytesIO(container))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # foreign bytes can make the reader panic (pyo3's
        return None  # PanicException is a BaseException); the caller decodes one by one
    if frame.height != len(bodies) or not np.array_equal(_encoded_sizes(frame, plan), lengths):
        return None
    if plan.scales:
        frame = frame.with_columns(
            pl.col(name).cast(pl.Int64) * factor for name, factor in plan.scales
        )
    return frame
