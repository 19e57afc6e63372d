"""The mapping of Avro types to column types: which column each field of a writer schema fills.

| Avro (field type, or ``["null", T]``)             | column type         |
|----------------------------------------------------|---------------------|
| boolean                                            | bool                |
| int                                                | int                 |
| long                                               | bigint              |
| float / double                                     | float / double      |
| string, enum                                       | text                |
| bytes, fixed (duration included)                   | binary              |
| string with logicalType uuid                       | uuid                |
| int date                                           | date                |
| int time-millis, long time-micros                  | time (microseconds) |
| long timestamp-millis/-micros/-nanos, local-*      | timestamp (micros)  |
| bytes/fixed decimal(p, s), p <= 38                 | decimal(p, s)       |
| bytes/fixed decimal(p, s), p > 38                  | text (exact digits) |
| record, array, map, union of several types, null   | json (JSON text)    |

Timestamps are kept at microseconds: nanoseconds are rounded down (toward the past). Other
logical types (``duration``, ``big-decimal``, unknown ones) are ignored, as the Avro specification
asks: the field maps by its underlying type.
The version fields are the exception (``version_problem``): ``op_time`` must be readable as a
time, or the schema is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas.columns import KEY, Column, ColumnType

Reading = Literal["value", "json", "decimal", "big_decimal", "enum"]
"""How a decoded value becomes the column's: as it is (after ``unit``), JSON text, a decimal
from its two's-complement bytes, an exact decimal as text, an enum symbol."""

MAX_DECIMAL_PRECISION = 38

_TIME_UNITS: dict[str, tuple[str, ColumnType, int, int]] = {
    # logical type: (underlying Avro type, column type, multiply by, divide by) to microseconds
    "timestamp-millis": ("long", "timestamp", 1000, 1),
    "timestamp-micros": ("long", "timestamp", 1, 1),
    "timestamp-nanos": ("long", "timestamp", 1, 1000),
    "local-timestamp-millis": ("long", "timestamp", 1000, 1),
    "local-timestamp-micros": ("long", "timestamp", 1, 1),
    "local-timestamp-nanos": ("long", "timestamp", 1, 1000),
    "time-millis": ("int", "time", 1000, 1),
    "time-micros": ("long", "time", 1, 1),
    "date": ("int", "date", 1, 1),
}

_PRIMITIVES: dict[str, ColumnType] = {
    "boolean": "bool",
    "int": "int",
    "long": "bigint",
    "float": "float",
    "double": "double",
    "string": "text",
    "bytes": "binary",
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a writer schema and the column it fills."""

    name: str
    column: Column
    """The field's column (always nullable: any evolved column is)."""
    avro: str
    """How the writer declares it, for messages: ``long``, ``["null", long (timestamp-nanos)]``."""
    nullable: bool
    """The writer's type is a union with null."""
    reading: Reading = "value"
    multiply: int = 1
    """Timestamps and times: value * multiply // divide is in microseconds (divide rounds down)."""
    divide: int = 1
    value_type: Any = None
    """The field's type without its top-level logical type (what a reader decodes)."""
    logical: str | None = None
    """The top-level logical type the writer declares, known or not."""
    scale: int = 0
    """Decimals: digits after the point of the unscaled integer the bytes hold."""


def _describe(avro_type: Any) -> str:
    if isinstance(avro_type, str):
        return avro_type
    if isinstance(avro_type, list):
        return "[" + ", ".join(_describe(t) for t in avro_type) + "]"
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        logical = avro_type.get("logicalType")
        if kind in ("record", "enum", "fixed") and "name" in avro_type:
            base = f"{kind} {avro_type['name']}"
        else:
            base = kind if isinstance(kind, str) else json.dumps(kind)
        return f"{base} ({logical})" if logical else base
    return json.dumps(avro_type)


def _plain(avro_type: Any) -> Any:
    """A type without its top-level logical type (nested ones are left as they are)."""
    if isinstance(avro_type, dict) and "logicalType" in avro_type:
        plain = {k: v for k, v in avro_type.items()
                 if k not in ("logicalType", "precision", "scale")}
        return plain["type"] if set(plain) == {"type"} else plain
    return avro_type


def _value_spec(
    name: str, avro_type: Any, nullable: bool, described: str, null_first: bool = True
) -> FieldSpec:
    """The spec of a non-union type (``avro_type``) that may be wrapped in ``["null", T]`` (or
    ``[T, "null"]``: ``null_first`` false)."""
    plain = _plain(avro_type)
    declared = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
    logical = str(declared) if declared is not None else None

    def spec(kind: ColumnType, reading: Reading = "value", multiply: int = 1, divide: int = 1,
             precision: int = 0, scale: int = 0) -> FieldSpec:
        column = Column(name, kind, True, precision, scale if kind == "decimal" else 0)
        value_type: Any = plain
        if nullable and plain != "null":
            value_type = ["null", plain] if null_first else [plain, "null"]
        return FieldSpec(
            name, column, described, nullable, reading, multiply, divide, value_type, logical,
            scale,
        )

    if not isinstance(avro_type, dict):
        primitive = _PRIMITIVES.get(avro_type) if isinstance(avro_type, str) else None
        # "null" alone, a named type's reference: JSON of the value
        return spec(primitive) if primitive else spec("json", "json")
    kind = avro_type.get("type")
    if (logical in _TIME_UNITS and _TIME_UNITS[logical][0] == kind) or (
        logical == "uuid" and kind == "string"
    ):
        _, column_type, multiply, divide = _TIME_UNITS.get(
            str(logical), ("string", "uuid", 1, 1)
        )
        return spec(column_type, multiply=multiply, divide=divide)
    decimal = _decimal_spec(avro_type)
    if decimal is not None:
        precision, scale = decimal
        if precision <= MAX_DECIMAL_PRECISION:
            return spec("decimal", "decimal", precision=precision, scale=scale)
        return spec("text", "big_decimal", scale=scale)
    if isinstance(kind, (dict, list)):
        return _value_spec(name, kind, nullable, described, null_first)
    return spec(*_NAMED.get(str(kind), (_PRIMITIVES.get(str(kind), "json"), "value")))


_NAMED: dict[str, tuple[ColumnType, Reading]] = {
    "record": ("json", "json"), "array": ("json", "json"), "map": ("json", "json"),
    "enum": ("text", "enum"), "fixed": ("binary", "value"),
}


def _decimal_spec(avro_type: Mapping[str, Any]) -> tuple[int, int] | None:
    """Precision and scale of a valid decimal logical type; None for anything else."""
    if avro_type.get("logicalType") != "decimal" or avro_type.get("type") not in ("bytes",
                                                                                 "fixed"):
        return None
    precision, scale = avro_type.get("precision"), avro_type.get("scale", 0)
    if isinstance(precision, int) and isinstance(scale, int) and 0 <= scale <= precision:
        return (precision, scale) if precision > 0 else None
    return None


def named_types(schema: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type (record, enum, fixed) defined in ``schema``, by short and full name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed") and isinstance(schema.get("name"), str):
            name = schema["name"]
            found[name.rsplit(".", 1)[-1]] = schema
            namespace = schema.get("namespace")
            found[f"{namespace}.{name}" if namespace and "." not in name else name] = schema
        for field in schema.get("fields", []) if kind == "record" else []:
            if isinstance(field, dict):
                named_types(field.get("type"), found)
        for key in ("items", "values"):
            named_types(schema.get(key), found)
        if isinstance(kind, (dict, list)):
            named_types(kind, found)
    return found


def field_spec(field: Mapping[str, Any], named: Mapping[str, Any] | None = None) -> FieldSpec:
    """The column a writer schema's field fills (see the module doc for the mapping);
    ``named``: the schema's named types, to map a field that refers to one by name."""
    name = str(field["name"])
    avro_type = field["type"]
    described = _describe(avro_type)

    def resolved(t: Any) -> Any:
        return (named or {}).get(t, t) if isinstance(t, str) and t not in _PRIMITIVES else t

    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(avro_type) == 2 and len(branches) == 1 and not isinstance(branches[0], list):
            spec = _value_spec(
                name, resolved(branches[0]), True, described, avro_type[0] == "null"
            )
            return spec if branches[0] is resolved(branches[0]) else _referring(spec, avro_type)
        column = Column(name, "json")
        return FieldSpec(name, column, described, "null" in avro_type, "json", value_type=avro_type)
    spec = _value_spec(name, resolved(avro_type), avro_type == "null", described)
    return spec if avro_type is resolved(avro_type) else _referring(spec, avro_type)


def _referring(spec: FieldSpec, avro_type: Any) -> FieldSpec:
    """A field that names a type defined earlier: read with the reference, not a second copy."""
    return FieldSpec(
        spec.name, spec.column, spec.avro, spec.nullable, spec.reading, spec.multiply,
        spec.divide, avro_type, spec.logical, spec.scale,
    )


def version_problem(spec: FieldSpec) -> str | None:
    """Why a writer's key or version field cannot order events; None when it can."""
    if spec.name == KEY and spec.column.type not in ("int", "bigint"):
        return f"{KEY} must be an Avro int or long, not {spec.avro}"
    if spec.name == "op_type" and (spec.column.type != "text" or spec.reading == "big_decimal"):
        return f"op_type must be an Avro enum or string, not {spec.avro}"
    times = ("date", *(t for t in _TIME_UNITS if "timestamp" in t))
    readable = spec.logical in times if spec.logical is not None else spec.column.type == "bigint"
    if spec.name == "op_time" and not readable:
        return (
            f"op_time must be a time: a long with logicalType timestamp-millis/-micros/-nanos "
            f"(or local-timestamp-*), a plain long of microseconds, or an int date; not "
            f"{spec.avro}"
        )
    return None


DAY_MICROS = 86_400_000_000


def read_as(spec: FieldSpec, column: Column) -> FieldSpec:
    """``spec`` reading into ``column``, a type its values fit (``evolution.compare``): a date
    into a timestamp column becomes its midnight in microseconds; other fits need nothing."""
    if spec.column.type == "date" and column.type == "timestamp":
        return FieldSpec(
            spec.name, Column(spec.name, "timestamp", spec.column.nullable), spec.avro,
            spec.nullable, spec.reading, DAY_MICROS, 1, spec.value_type, spec.logical, spec.scale,
        )
    return spec
