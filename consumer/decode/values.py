"""Column values of decoded fields, and the checks that keep a warehouse able to store them.

Both decode paths end here: ``column_value`` converts one value read by fastavro (one event at a
time) and says what is wrong with it; ``valid_rows`` checks a whole decoded column at once (the
columnar path) with the same rules, and the rows it rejects are decoded one at a time, which
words the reason. The rules:

- timestamps (``op_time`` included) between 0001-01-01 and 9999-12-31 23:59:59.999999 (what both
  DuckDB and Snowflake can hold), dates in the same years, times within one day;
- an Avro ``int`` within 32 bits (fastavro reads wider varints without complaint), a ``long``
  within 64;
- a decimal with at most its declared precision, a uuid in its canonical text form.

Hashed columns (``hash_column``) hold HMAC-SHA256 hex of the value: text as UTF-8, bytes as they
are, anything else as the text of its column value (decimal digits of an integer or timestamp).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import json
import re
import uuid
from typing import Any

import numpy as np
import polars as pl

from schemas.avro_types import FieldSpec
from schemas.columns import Column
from schemas.errors import InvalidEvent

MIN_MICROS = -62_135_596_800_000_000
"""0001-01-01T00:00:00 in microseconds since the epoch."""
MAX_MICROS = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999."""
MIN_DAYS, MAX_DAYS = -719_162, 2_932_896
DAY_MICROS = 86_400_000_000
INT32 = range(-(2**31), 2**31)
INT64 = range(-(2**63), 2**63)
UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

_FRAME_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(), "bigint": pl.Int64(), "time": pl.Int64(), "timestamp": pl.Int64(),
    "date": pl.Int32(), "float": pl.Float64(), "double": pl.Float64(), "bool": pl.Boolean(),
    "binary": pl.Binary(), "text": pl.String(), "uuid": pl.String(), "json": pl.String(),
}


def frame_type(column: Column) -> pl.DataType:
    """The polars type a column's values have between decode and staging: every integer is
    64-bit (an ``int`` field widened to ``long`` keeps its frame type), decimals carry 38
    digits and their scale."""
    if column.type == "decimal":
        return pl.Decimal(38, column.scale)
    return _FRAME_TYPES[column.type]


def _timestamp_text(micros: int) -> str:
    """ISO text of a 64-bit microsecond timestamp (numpy's calendar reaches past year 9999);
    the number itself beyond 64 bits."""
    if micros not in INT64:
        return f"{micros} microseconds from 1970"
    return str(np.datetime64(micros, "us"))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro's JSON encoding of bytes
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default, ensure_ascii=False)


def _wrong(spec: FieldSpec, what: str) -> InvalidEvent:
    return InvalidEvent("validation", f"{spec.name}: {what}")


def micros(spec: FieldSpec, value: int) -> int:
    """A timestamp or time value in microseconds (nanoseconds rounded down)."""
    return value * spec.multiply // spec.divide if spec.multiply != 1 or spec.divide != 1 else value


def column_value(spec: FieldSpec, value: Any) -> Any:
    """The column value of one decoded field value (``None`` stays ``None``); raises
    ``InvalidEvent("validation", ...)`` naming the field when the warehouse could not hold it."""
    if value is None:
        return None
    if spec.reading == "json":
        return json_text(value)
    if spec.reading in ("decimal", "big_decimal"):
        return _decimal(spec, value)
    kind = spec.column.type
    if kind in ("text", "uuid"):
        return _text(spec, value)
    if kind in ("bool", "float", "double", "binary"):
        return {"bool": bool, "float": float, "double": float, "binary": bytes}[kind](value)
    return _integer(spec, value)


def _decimal(spec: FieldSpec, value: Any) -> Any:
    unscaled = int.from_bytes(value, "big", signed=True)
    if spec.reading == "big_decimal":
        return str(decimal.Decimal(unscaled).scaleb(-spec.scale))
    if abs(unscaled) >= 10**spec.column.precision:
        raise _wrong(spec, f"a decimal with more than {spec.column.precision} digits")
    return decimal.Decimal(unscaled).scaleb(-spec.scale)


def _text(spec: FieldSpec, value: Any) -> str:
    if type(value) is not str:
        raise _wrong(spec, f"{type(value).__name__} where text is expected")
    if spec.column.type == "uuid" and not UUID_TEXT.fullmatch(value):
        raise _wrong(spec, f"{value[:40]!r} is not a uuid")
    return value


def _integer(spec: FieldSpec, value: Any) -> int:
    """Integers, dates, times and timestamps (the last two in microseconds)."""
    kind = spec.column.type
    if type(value) is not int:
        raise _wrong(spec, f"{type(value).__name__} where an integer is expected")
    if kind == "int" and value not in INT32:
        raise _wrong(spec, f"{value} is outside 32-bit integers")
    if value not in INT64:
        raise _wrong(spec, f"{value} is outside 64-bit integers")
    if kind == "date" and not MIN_DAYS <= value <= MAX_DAYS:
        raise _wrong(spec, f"date {value} days from 1970 is outside years 1 to 9999")
    if kind not in ("time", "timestamp"):
        return value
    scaled = micros(spec, value)
    if kind == "time" and not 0 <= scaled < DAY_MICROS:
        raise _wrong(spec, f"time {scaled} microseconds is not within one day")
    if kind == "timestamp" and not MIN_MICROS <= scaled <= MAX_MICROS:
        raise _wrong(
            spec, f"timestamp {_timestamp_text(scaled)} is outside years 1 to 9999, which "
            "no warehouse can hold",
        )
    return scaled


def valid_rows(frame: pl.DataFrame, specs: tuple[FieldSpec, ...]) -> pl.Expr:
    """True for the rows whose values ``column_value`` accepts (columns of a columnar decode,
    already converted: timestamps and times in microseconds)."""
    ok = pl.lit(True)
    for spec in specs:
        if spec.name not in frame.columns:
            continue
        value = pl.col(spec.name)
        kind = spec.column.type
        if kind == "timestamp":
            check = value.is_between(MIN_MICROS, MAX_MICROS)
        elif kind == "date":
            check = value.is_between(MIN_DAYS, MAX_DAYS)
        elif kind == "time":
            check = value.is_between(0, DAY_MICROS - 1)
        elif kind == "uuid":
            check = value.str.contains(f"^{UUID_TEXT.pattern}$")
        elif kind == "decimal" and spec.reading == "decimal":
            limit = decimal.Decimal(10**spec.column.precision - 1).scaleb(-spec.scale)
            check = value.abs() <= pl.lit(limit, pl.Decimal(38, spec.scale))
        else:
            continue
        ok = ok & (value.is_null() | check.fill_null(False))
    return ok


def hash_text(key: bytes, value: Any) -> str | None:
    """HMAC-SHA256 hex of one column value (see the module doc); None stays None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bool):
        data = b"true" if value else b"false"
    else:
        data = str(value).encode("ascii")
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def hash_column(series: pl.Series, key: bytes) -> pl.Series:
    """The column as HMAC-SHA256 hex text."""
    values = series.to_list()
    return pl.Series(series.name, [hash_text(key, v) for v in values], dtype=pl.String)
