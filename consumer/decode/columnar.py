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

import decimal
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute

from consumer.decode.avro import RecordReader
from consumer.decode.values import frame_type
from schemas.avro_types import FieldSpec

MAGIC = b"Obj\x01"
EXACT = "_exact"
"""Column added by ``decode_block``: False where a row must be decoded one by one."""

_PRIMITIVE_SIZES: dict[str, tuple[str, int]] = {
    # kind, encoded size for "fixed"; "varint": a zigzag varint, "string"/"bytes": a length
    # then the bytes. "int" and "boolean" are checked in place (see ``_exact_rows``).
    "null": ("fixed", 0),
    "boolean": ("boolean", 1),
    "int": ("int", 0),
    "long": ("varint", 0),
    "float": ("fixed", 4),
    "double": ("fixed", 8),
    "string": ("string", 0),
    "bytes": ("bytes", 0),
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
    kind: str  # "fixed", "boolean", "int", "varint", "string", "bytes"
    fixed: int = 0
    nullable: bool = False  # a ["null", T] or [T, "null"] union: one byte of branch index first
    null_first: bool = True  # the union's branch order


def _unwrap(field_type: Any) -> tuple[Any, bool, bool] | None:
    """The value type of a field, whether it is a union with null and whether null is the first
    branch; None for other unions."""
    if not isinstance(field_type, list):
        return field_type, False, True
    branches = [b for b in field_type if b != "null"]
    if len(field_type) != 2 or len(branches) != 1:  # a union of two branches
        return None
    return branches[0], True, field_type[0] == "null"


def _enum_symbols(value_type: Any) -> tuple[str, ...] | None:
    if isinstance(value_type, dict) and value_type.get("type") == "enum":
        return tuple(value_type.get("symbols", ()))
    return None


def _field_size(name: str, field_type: Any) -> FieldSize | None:
    unwrapped = _unwrap(field_type)
    if unwrapped is None:
        return None
    value_type, nullable, null_first = unwrapped
    if isinstance(value_type, dict):
        kind = value_type.get("type")
        if kind == "enum":  # its index, an int (the block's schema says "int")
            return FieldSize(name, "int", 0, nullable, null_first)
        if kind == "fixed" and isinstance(value_type.get("size"), int):
            return FieldSize(name, "fixed", value_type["size"], nullable, null_first)
        if not isinstance(kind, str) or kind not in _PRIMITIVE_SIZES:
            return None
        value_type = kind
    if not isinstance(value_type, str) or value_type not in _PRIMITIVE_SIZES:
        return None
    kind, size = _PRIMITIVE_SIZES[value_type]
    return FieldSize(name, kind, size, nullable, null_first)


def _as_index(field_type: Any) -> Any:
    """An enum type as the int of its index (the native reader mis-reads nullable enums)."""
    if isinstance(field_type, list):
        return [_as_index(t) for t in field_type]
    return "int" if _enum_symbols(field_type) is not None else field_type


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """Everything needed to decode a batch of bodies written with one (stripped) writer schema."""

    header: bytes
    sync: bytes
    sizes: tuple[FieldSize, ...]
    specs: tuple[FieldSpec, ...]
    """The fields converted into columns."""
    symbols: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Enum fields and their symbols, read as indexes."""


def plan_for(
    reader: RecordReader, kept: tuple[FieldSpec, ...] | None = None
) -> BlockPlan | None:
    """A block plan for the reader's schema, or None if it holds a type the plan cannot size
    (records, arrays, maps, unions of several types, a type named by reference). ``kept``: the
    fields to convert into columns, each as it reads into its column (default: every field as
    declared); the others are dropped after decoding."""
    sizes: list[FieldSize] = []
    symbols: list[tuple[str, tuple[str, ...]]] = []
    schema = json.loads(reader.plain)
    for spec, field in zip(reader.specs, schema["fields"], strict=True):
        size = _field_size(spec.name, spec.value_type)
        if size is None:
            return None
        sizes.append(size)
        unwrapped = _unwrap(spec.value_type)
        enum = _enum_symbols(unwrapped[0]) if unwrapped else None
        if enum is not None:
            symbols.append((spec.name, enum))
            field["type"] = _as_index(field["type"])
    sync = os.urandom(16)
    return BlockPlan(
        header=container_header(json.dumps(schema), sync),
        sync=sync,
        sizes=tuple(sizes),
        specs=reader.specs if kept is None else kept,
        symbols=tuple(symbols),
    )


def unplanned(reader: RecordReader) -> list[str]:
    """The fields that keep a schema off the columnar path (for the log line that says so)."""
    return [s.name for s in reader.specs if _field_size(s.name, s.value_type) is None]


def _varint_sizes(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    signed = values.astype(np.int64, copy=False)
    zigzag = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    sizes: np.ndarray[Any, Any] = np.searchsorted(_VARINT_LIMITS, zigzag, side="right") + 1
    return sizes


def _size_inputs(frame: pl.DataFrame, plan: BlockPlan) -> dict[str, np.ndarray[Any, Any]]:
    """In one pass over the frame: per field, whether it is present (nullable ones) and the
    integer its size is computed from (a varint's value, a string's or bytes' length)."""
    exprs: list[pl.Expr] = []
    for size in plan.sizes:
        value = pl.col(size.name)
        if size.nullable:
            exprs.append(value.is_not_null().alias(f"present:{size.name}"))
        if size.kind in ("varint", "int"):
            exprs.append(value.cast(pl.Int64).fill_null(0).alias(f"value:{size.name}"))
        elif size.kind == "string":
            exprs.append(value.str.len_bytes().cast(pl.Int64).fill_null(0)
                         .alias(f"value:{size.name}"))
        elif size.kind == "bytes":
            exprs.append(value.bin.size().cast(pl.Int64).fill_null(0)
                         .alias(f"value:{size.name}"))
    if not exprs:
        return {}
    return {c.name: c.to_numpy() for c in frame.select(exprs).get_columns()}


def _value_sizes(
    size: FieldSize, inputs: dict[str, np.ndarray[Any, Any]], height: int
) -> np.ndarray[Any, Any]:
    """Encoded size of each row's value of one field, without a union's branch byte."""
    if size.kind == "fixed":
        return np.full(height, size.fixed, dtype=np.int64)
    if size.kind == "boolean":
        return np.ones(height, dtype=np.int64)
    value = inputs[f"value:{size.name}"]
    if size.kind in ("varint", "int"):
        return _varint_sizes(value)
    sizes: np.ndarray[Any, Any] = _varint_sizes(value) + value  # a length, then the bytes
    return sizes


def _exact_rows(
    frame: pl.DataFrame, plan: BlockPlan, payload: bytes, lengths: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any] | None:
    """None if a record's canonical size differs from its message's; else, per row, whether the
    bytes the native reader is lenient about hold what fastavro would accept and read the same."""
    data = np.frombuffer(payload, dtype=np.uint8)
    height = frame.height
    position = np.cumsum(lengths) - lengths  # where each record starts
    total = np.zeros(height, dtype=np.int64)
    exact = np.ones(height, dtype=bool)
    inputs = _size_inputs(frame, plan)
    always = np.ones(height, dtype=bool)
    fields: list[tuple[FieldSize, np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    for size in plan.sizes:
        present = inputs[f"present:{size.name}"] if size.nullable else always
        value = _value_sizes(size, inputs, height)
        fields.append((size, present, value))
        total += np.where(present, value, 0) + (1 if size.nullable else 0)
    if not np.array_equal(total, lengths):
        return None
    last = max(len(data) - 1, 0)
    for size, present, value in fields:  # every record lies exactly in its message: read bytes
        if size.nullable:
            branch = data[position] if height else np.zeros(0, dtype=np.uint8)
            expected = np.where(present, 2, 0) if size.null_first else np.where(present, 0, 2)
            exact &= branch == expected
            position = position + 1
        if size.kind == "boolean":  # fastavro reads any byte but 0 as true
            exact &= ~present | (data[np.where(present, position, 0)] <= 1)
        elif size.kind == "int":  # a fifth byte above 0x0f: beyond 32 bits, which polars wraps
            fifth = data[np.minimum(np.where(present & (value == 5), position + 4, 0), last)]
            exact &= ~present | (value < 5) | (fifth <= 0x0F)
        elif size.kind == "varint":
            exact &= ~present | (value < 10)  # 10 bytes: beyond 62 bits, one by one
        position = position + np.where(present, value, 0)
    return exact


def _unscaled_decimals(
    column: pl.Series, scale: int
) -> tuple[pl.Series, np.ndarray[Any, Any]]:
    """Two's-complement big-endian bytes as Decimal(38, scale), and where that is exact (at
    most 16 bytes: an int128)."""
    arrow = column.cast(pl.Binary).to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    array = arrow.cast(pa.large_binary())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + n + 1]
    raw = array.buffers()[2]
    data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    fits = lengths <= 16
    used = np.where(fits, lengths, 0)
    starts = offsets[:-1]
    out = np.zeros((n, 16), dtype=np.uint8)
    if n and data.size:
        first = data[np.minimum(np.where(used > 0, starts, 0), data.size - 1)]
        out[(used > 0) & (first >= 0x80)] = 0xFF  # sign extension
        rows = np.repeat(np.arange(n), used)
        within = np.arange(int(used.sum())) - np.repeat(np.cumsum(used) - used, used)
        target = np.repeat(used, used) - 1 - within  # little-endian position of each byte
        out[rows, target] = data[np.repeat(starts, used) + within]
    decimals = pa.Array.from_buffers(
        pa.decimal128(38, scale), n, [None, pa.py_buffer(out.tobytes())]
    )
    decimals = pa.compute.if_else(array.is_null(), pa.scalar(None, decimals.type), decimals)
    series = pl.Series(column.name, pl.from_arrow(decimals), dtype=pl.Decimal(38, scale))
    return series, fits | column.is_null().to_numpy()


def convert(
    frame: pl.DataFrame, plan: BlockPlan
) -> tuple[pl.DataFrame, np.ndarray[Any, Any]]:
    """The decoded columns as column values (``values.frame_type``): timestamps and times in
    microseconds, decimals from their bytes, enums as text; and per row whether every
    conversion was exact (a row that is not is decoded one by one). Casts, scaling and enum
    symbols run as one ``select``; decimals go through their bytes (``_unscaled_decimals``)."""
    exact = np.ones(frame.height, dtype=bool)
    enums = dict(plan.symbols)
    exprs: list[pl.Expr] = []
    checks: list[pl.Expr] = []
    decimals: list[FieldSpec] = []
    for spec in plan.specs:
        value = pl.col(spec.name)
        target = frame_type(spec.column)
        if spec.name in enums:
            symbols = enums[spec.name]
            index = value.cast(pl.Int64)
            checks.append(index.is_between(0, len(symbols) - 1).fill_null(True))
            mapping = pl.Series(symbols, dtype=pl.String)
            exprs.append(index.replace_strict(
                list(range(len(symbols))), mapping, default=None, return_dtype=pl.String
            ).alias(spec.name))
        elif spec.reading in ("decimal", "big_decimal"):
            decimals.append(spec)
            exprs.append(value)
        elif spec.multiply != 1 or spec.divide != 1:
            scaled = value.cast(pl.Int64)
            if spec.multiply != 1:
                limit = _INT64_MAX // spec.multiply
                checks.append(scaled.abs().fill_null(0) <= limit)
                scaled = scaled.clip(-limit, limit) * spec.multiply
            if spec.divide != 1:
                scaled = scaled // spec.divide
            exprs.append(scaled.cast(target).alias(spec.name))
        else:
            exprs.append(value.cast(target))
    if checks:
        exprs.append(pl.all_horizontal(checks).alias(EXACT))
    converted = frame.select(exprs)
    if checks:
        exact &= converted.get_column(EXACT).to_numpy()
        converted = converted.drop(EXACT)
    for spec in decimals:
        column = converted.get_column(spec.name)
        if spec.reading == "decimal":
            column, fits = _unscaled_decimals(column, spec.scale)
            exact &= fits
        else:
            column = pl.Series(spec.name, [
                None if v is None else
                str(decimal.Decimal(int.from_bytes(v, "big", signed=True)).scaleb(-spec.scale))
                for v in column.cast(pl.Binary).to_list()
            ], dtype=pl.String)
        converted = converted.with_columns(column)
    return converted, exact


def _without_headers(
    joined: bytes, lengths: np.ndarray, skip: int
) -> tuple[bytes, np.ndarray]:
    """The bodies joined without the first ``skip`` bytes of each, in one pass over the bytes
    (no Python object per message), and their new lengths."""
    data = np.frombuffer(joined, dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    keep = np.ones(data.size, dtype=bool)
    for k in range(skip):
        keep[starts + k] = False
    return data[keep].tobytes(), lengths - skip


def decode_block(
    plan: BlockPlan, bodies: Sequence[bytes | memoryview], skip: int = 0
) -> pl.DataFrame | None:
    """Decode ``bodies`` (one schemaless Avro record each, after its first ``skip`` bytes: a
    wire-format header) into one frame, row i from body i, values converted (``convert``),
    plus the ``EXACT`` column; None when the batch must be decoded one by one."""
    if not bodies:
        return None
    lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
    payload = b"".join(bodies)
    if skip:  # every body is longer than its header (the caller checked)
        payload, lengths = _without_headers(payload, lengths, skip)
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
    try:
        converted, convertible = convert(frame, plan)
    except pl.exceptions.PolarsError:
        return None  # a value polars cannot convert (invalid UTF-8 text, ...): one by one
    return converted.with_columns(pl.Series(EXACT, exact & convertible, dtype=pl.Boolean))
