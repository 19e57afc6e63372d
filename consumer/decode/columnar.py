"""Decode a whole consume() batch of Avro bodies in one pass, into columns.

Per-event decoding builds a Python dict per event, which costs more than Kafka delivering it. Here
the bodies written with one schema are laid end to end as the single block of an in-memory Avro
object container file, which polars decodes in native code into columns.

Concatenated bodies carry no boundaries, so a body that is too short or too long would shift every
later record. The decode is therefore accepted only if each record's canonical encoded length,
computed from its decoded values, equals its message's length. A decoder never reads fewer bytes
than the canonical length, so equal totals mean each record was read from exactly its own message
bytes. Equal boundaries are not yet equal values: the native reader is more lenient than
fastavro about a few bytes (a union branch index out of range, an enum index, a varint wider than
64 bits), so those bytes are checked in place, and rows where they or the timestamp scaling are
not exact are flagged (``EXACT``) for the caller to decode one by one, like a failed block. Any
other failure (a decode error, a length mismatch, a schema this plan does not cover) returns None.
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

from consumer.decode.avro import RecordReader

MAGIC = b"Obj\x01"
EXACT = "_exact"
"""Column added by ``decode_block``: False where a row must be decoded one by one."""

_PRIMITIVE_SIZES: dict[str, int | None] = {
    # encoded size of a value; None: a zigzag varint. Not here, so decoded one by one: "int"
    # (the native reader wraps values beyond 32 bits) and "boolean" (it reads any non-zero byte
    # as a value fastavro reads differently).
    "null": 0,
    "long": None,
    "float": 4,
    "double": 8,
}
_INT64_MAX = 2**63 - 1
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
    nullable: bool = False  # a ["null", T] or [T, "null"] union: one byte of branch index first
    null_first: bool = True  # the union's branch order
    symbols: int = 0  # enum: number of symbols


def _unwrap(field_type: Any) -> tuple[Any, bool, bool] | None:
    """The value type of a field, whether it is a union with null and whether null is the first
    branch; None for other unions."""
    if not isinstance(field_type, list):
        return field_type, False, True
    branches = [b for b in field_type if b != "null"]
    if len(field_type) != 2 or len(branches) != 1:  # a union of two branches
        return None
    return branches[0], True, field_type[0] == "null"


def _field_size(name: str, field_type: Any) -> FieldSize | None:
    unwrapped = _unwrap(field_type)
    if unwrapped is None:
        return None
    value_type, nullable, null_first = unwrapped
    if isinstance(value_type, dict):
        kind = value_type.get("type")
        if kind == "enum":
            # one-byte indexes only: the size of a symbol's index is then known
            symbols = len(value_type.get("symbols", []))
            fits = 0 < symbols <= 64  # zigzag indexes below 128: one byte
            return FieldSize(name, "enum", 0, nullable, null_first, symbols) if fits else None
        if not isinstance(kind, str) or not set(value_type) <= {"type", "doc"}:
            return None
        value_type = kind
    if value_type in ("string", "bytes"):
        return FieldSize(name, value_type, 0, nullable, null_first)
    if not isinstance(value_type, str) or value_type not in _PRIMITIVE_SIZES:
        return None
    size = _PRIMITIVE_SIZES[value_type]
    kind = "varint" if size is None else "fixed"
    return FieldSize(name, kind, size or 0, nullable, null_first)


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """Everything needed to decode a batch of bodies written with one (stripped) writer schema."""

    header: bytes
    sync: bytes
    sizes: tuple[FieldSize, ...]
    scales: tuple[tuple[str, int], ...]


def plan_for(reader: RecordReader) -> BlockPlan | None:
    """A block plan for the reader's schema, or None if it holds a type the plan cannot size."""
    schema = json.loads(reader.plain)
    sizes: list[FieldSize] = []
    for field in schema.get("fields", []):
        size = _field_size(field["name"], field["type"])
        if size is None:
            return None
        sizes.append(size)
    sync = os.urandom(16)
    return BlockPlan(
        header=container_header(reader.plain, sync),
        sync=sync,
        sizes=tuple(sizes),
        scales=reader.scales,
    )


def _varint_sizes(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    signed = values.astype(np.int64, copy=False)
    zigzag = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    sizes: np.ndarray[Any, Any] = np.searchsorted(_VARINT_LIMITS, zigzag, side="right") + 1
    return sizes


def _value_sizes(frame: pl.DataFrame, size: FieldSize) -> np.ndarray[Any, Any]:
    """Encoded size of each row's value of one field, without a union's branch byte."""
    column = frame.get_column(size.name)
    if size.kind == "fixed":
        return np.full(frame.height, size.fixed, dtype=np.int64)
    if size.kind == "enum":
        return np.ones(frame.height, dtype=np.int64)
    if size.kind == "varint":
        return _varint_sizes(column.fill_null(0).to_numpy())
    lengths = (  # string or bytes: a length, then the bytes
        column.str.len_bytes() if size.kind == "string" else column.bin.size()
    ).fill_null(0).to_numpy().astype(np.int64)
    sizes: np.ndarray[Any, Any] = _varint_sizes(lengths) + lengths
    return sizes


def _exact_rows(
    frame: pl.DataFrame, plan: BlockPlan, payload: bytes, lengths: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any] | None:
    """None if a record's canonical size differs from its message's; else, per row, whether the
    bytes the native reader is lenient about hold what fastavro would accept and read the same."""
    data = np.frombuffer(payload, dtype=np.uint8)
    position = np.cumsum(lengths) - lengths  # where each record starts
    total = np.zeros(frame.height, dtype=np.int64)
    exact = np.ones(frame.height, dtype=bool)
    fields: list[tuple[FieldSize, np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    for size in plan.sizes:
        present = (
            frame.get_column(size.name).is_not_null().to_numpy() if size.nullable
            else np.ones(frame.height, dtype=bool)
        )
        value = _value_sizes(frame, size)
        fields.append((size, present, value))
        total += np.where(present, value, 0) + (1 if size.nullable else 0)
    if not np.array_equal(total, lengths):
        return None
    for size, present, value in fields:  # every record lies exactly in its message: read bytes
        if size.nullable:
            branch = data[position] if frame.height else np.zeros(0, dtype=np.uint8)
            expected = np.where(present, 2, 0) if size.null_first else np.where(present, 0, 2)
            exact &= branch == expected
            position = position + 1
        if size.kind == "enum":
            index = data[np.where(present, position, 0)]
            exact &= ~present | ((index % 2 == 0) & (index // 2 < size.symbols))
        elif size.kind == "varint":
            exact &= ~present | (value < 10)  # 10 bytes: beyond 62 bits, one by one
        position = position + np.where(present, value, 0)
    for name, factor in plan.scales:
        values = frame.get_column(name).cast(pl.Int64).fill_null(0).to_numpy()
        exact &= np.abs(values) <= _INT64_MAX // factor
    return exact


def decode_block(plan: BlockPlan, bodies: Sequence[bytes | memoryview]) -> pl.DataFrame | None:
    """Decode ``bodies`` (one schemaless Avro record each) into one frame, row i from body i,
    timestamps scaled to microseconds, plus the ``EXACT`` column; None when the batch must be
    decoded one by one."""
    if not bodies:
        return None
    lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
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
    if frame.height != len(bodies):
        return None
    exact = _exact_rows(frame, plan, payload, lengths)
    if exact is None:
        return None
    exact_column = pl.Series(EXACT, exact, dtype=pl.Boolean)
    if plan.scales:
        scaled = [
            (pl.when(exact_column).then(pl.col(name).cast(pl.Int64)).otherwise(0) * factor)
            .alias(name)
            for name, factor in plan.scales
        ]
        frame = frame.with_columns(scaled)
    return frame.with_columns(exact_column)
