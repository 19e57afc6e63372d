"""The writer contract for column changes: ALTER + MERGE on each writer (DuckDB on a database
file, Snowflake through the real connector against fakesnow).

A batch whose ``TableSchema`` adds or widens columns gets them before its rows are merged; the
change is recorded in the column metadata (which writer schema, which batch); repeating it is
harmless; a batch of an older schema writes NULL into the columns it lacks; every column type of
the Avro mapping round-trips; the view shows the new columns.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from batcher.ranges import PartitionRange
from schemas.columns import (
    BASE_SCHEMA,
    KEY,
    Column,
    ColumnChange,
    TableSchema,
)
from schemas.evolution import ColumnPolicy
from tests.oracles.reducer import ReferenceReducer
from tests.oracles.staging import Row, build_staged
from tests.warehouse.test_contract import (
    GROUP,
    STARTED_AT,
    SYNCED_AT_US,
    T0,
    TOPIC,
    WRITERS,
    Harness,
    open_harness,
)
from warehouse.base import Batch
from warehouse.swap import rebuild_names
from warehouse.tables import col, view_columns

V1 = BASE_SCHEMA


@pytest.fixture(params=WRITERS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = open_harness(request, tmp_path, history=False)
    try:
        yield h
    finally:
        h.writer.close()


def added(schema: TableSchema, *columns: Column, source: str = "registry id 7") -> TableSchema:
    return schema.evolved(ColumnChange(c, "add", source, 7) for c in columns)


def widened(schema: TableSchema, column: Column, source: str = "registry id 8") -> TableSchema:
    return schema.evolved([ColumnChange(column, "widen", source, 8)])


def event_row(schema: TableSchema, key: int, **values: Any) -> Row:
    """A payload in ``schema``'s column order: key, then the given values (None elsewhere)."""
    return tuple(key if c.name == KEY else values.get(c.name) for c in schema.columns)


def batch_of(
    schema: TableSchema, events: Sequence[tuple[int, int, int, str, Row]]
) -> Batch:
    """A batch of (op_time, partition, offset, op_type, payload) events of ``schema``."""
    reducer: ReferenceReducer[Row] = ReferenceReducer()
    for op_time, partition, offset, op_type, payload in events:
        reducer.add(payload[0], op_time, partition, offset, op_type, payload)
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    return Batch(
        batch_id=batch_id, topic=TOPIC, consumer_group=GROUP,
        rows=build_staged(reduced.winners, batch_id, SYNCED_AT_US, schema),
        ranges=reduced.ranges, events_in=reduced.events, invalid_events=reduced.invalid,
        started_at=STARTED_AT, schema=schema,
    )


def read(h: Harness, table: Any, names: Sequence[str]) -> dict[int, dict[str, Any]]:
    """Rows by key; every value with an IS NULL flag (fakesnow renders some NULLs as zero)."""
    exprs = [e for n in names for e in (col(n, h.dialect), f"{col(n, h.dialect)} IS NULL")]
    rows = h.writer.fetch(
        f"SELECT {', '.join(exprs)} FROM {table.sql()} ORDER BY {col(KEY, h.dialect)}"
    )
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        values: dict[str, Any] = {
            n: None if row[2 * i + 1] else row[2 * i] for i, n in enumerate(names)
        }
        out[int(values[KEY])] = values
    return out


def metadata(h: Harness) -> list[tuple[Any, ...]]:
    names = h.writer.names
    assert names.columns is not None
    cols = ", ".join(col(c, h.dialect) for c in
                     ("column_name", "change", "column_type", "source_schema", "batch_id"))
    return sorted(
        (tuple(r) for r in h.writer.fetch(f"SELECT {cols} FROM {names.columns.sql()}")),
        key=repr,
    )


RISK = Column("risk_rating", "text")
SCORE = Column("score", "int")


def test_added_columns_appear_before_the_batch_carrying_them(harness: Harness) -> None:
    h = harness
    h.writer.apply(batch_of(V1, [(T0, 0, 0, "INSERT", event_row(V1, 1, goldtier_id="a"))]))
    v2 = added(V1, RISK, SCORE)
    batch = batch_of(v2, [(T0 + 1, 0, 1, "INSERT", event_row(v2, 2, risk_rating="high",
                                                              score=7))])

    h.writer.apply(batch)

    state = read(h, h.writer.names.state, ["kyc_profile_id", "risk_rating", "score"])
    assert state == {
        1: {"kyc_profile_id": 1, "risk_rating": None, "score": None},
        2: {"kyc_profile_id": 2, "risk_rating": "high", "score": 7},
    }
    view = read(h, h.writer.names.current, list(view_columns(v2)))
    assert view[2]["risk_rating"] == "high"
    assert view[1]["risk_rating"] is None
    recorded = [r for r in metadata(h) if r[1] == "add"]
    assert [r[:4] for r in recorded] == [
        ("risk_rating", "add", "text", "registry id 7"),
        ("score", "add", "int", "registry id 7"),
    ]
    assert {r[4] for r in recorded} == {batch.batch_id}
    assert h.writer.table_state().schema.names == v2.names

    # the same changes again (a retry, a second instance): nothing more, nothing fails
    h.writer.apply(batch_of(v2, [(T0 + 2, 0, 2, "UPDATE", event_row(v2, 2, score=8))]))
    assert len([r for r in metadata(h) if r[1] == "add"]) == 2
    assert read(h, h.writer.names.state, ["kyc_profile_id", "score"])[2]["score"] == 8


def test_a_batch_of_an_older_schema_writes_null_into_the_columns_it_lacks(
    harness: Harness,
) -> None:
    """A field removed upstream, or another instance ahead of this one: the row a newer event
    of the old schema wins carries NULL, never the value of the event it replaced."""
    h = harness
    v2 = added(V1, RISK)
    h.writer.apply(batch_of(v2, [(T0, 0, 0, "INSERT", event_row(v2, 1, risk_rating="low"))]))
    h.writer.apply(batch_of(V1, [(T0 + 1, 0, 1, "UPDATE", event_row(V1, 1, cid="c"))]))
    assert read(h, h.writer.names.state, ["kyc_profile_id", "cid", "risk_rating"]) == {
        1: {"kyc_profile_id": 1, "cid": "c", "risk_rating": None},
    }
    # and an older event of the new schema stays stale: the guard holds across schemas
    h.writer.apply(batch_of(v2, [(T0, 0, 0, "INSERT", event_row(v2, 1, risk_rating="low"))]))
    assert read(h, h.writer.names.state, ["kyc_profile_id", "risk_rating"])[1][
        "risk_rating"] is None


def test_widening_keeps_the_values_and_takes_wider_ones(harness: Harness) -> None:
    h = harness
    v2 = added(V1, SCORE, Column("ratio", "float"), Column("amount", "decimal", True, 6, 2))
    h.writer.apply(batch_of(v2, [(T0, 0, 0, "INSERT", event_row(
        v2, 1, score=2**31 - 1, ratio=0.5, amount=decimal.Decimal("1234.56")))]))
    v3 = widened(widened(widened(v2, Column("score", "bigint")), Column("ratio", "double")),
                 Column("amount", "decimal", True, 12, 2))
    h.writer.apply(batch_of(v3, [(T0 + 1, 0, 1, "INSERT", event_row(
        v3, 2, score=2**40, ratio=0.1, amount=decimal.Decimal("1234567890.12")))]))

    state = read(h, h.writer.names.state, ["kyc_profile_id", "score", "ratio", "amount"])
    assert state[1]["score"] == 2**31 - 1
    assert state[2]["score"] == 2**40
    assert state[2]["ratio"] == pytest.approx(0.1)
    assert decimal.Decimal(str(state[1]["amount"])) == decimal.Decimal("1234.56")
    assert decimal.Decimal(str(state[2]["amount"])) == decimal.Decimal("1234567890.12")
    widen = [r[:3] for r in metadata(h) if r[1] == "widen"]
    assert ("score", "widen", "bigint") in widen
    assert ("amount", "widen", "decimal(12,2)") in widen
    assert h.writer.table_state().schema.column("score") == Column("score", "bigint")


ALL_TYPES = (
    Column("f_bool", "bool"), Column("f_int", "int"), Column("f_long", "bigint"),
    Column("f_float", "float"), Column("f_double", "double"),
    Column("f_decimal", "decimal", True, 10, 3), Column("f_text", "text"),
    Column("f_binary", "binary"), Column("f_date", "date"), Column("f_time", "time"),
    Column("f_timestamp", "timestamp"), Column("f_uuid", "uuid"), Column("f_json", "json"),
)
TIME_US = (13 * 3600 + 14 * 60 + 15) * 1_000_000 + 123_456
UUID = "0b2f6f0e-3f0a-4c39-9d4e-5f7c8e0a1b2c"
VALUES: dict[str, Any] = {
    "f_bool": True, "f_int": -(2**31), "f_long": 2**62, "f_float": 1.5, "f_double": -2.25,
    "f_decimal": decimal.Decimal("-1234567.891"), "f_text": "é'\"\\N", "f_binary": b"\x00\xff",
    "f_date": 19_723, "f_time": TIME_US, "f_timestamp": T0 + 7, "f_uuid": UUID,
    "f_json": '{"a":[1,2],"b":"x"}',
}


def normalized(name: str, value: Any) -> Any:
    """A value read back as the contract compares it (drivers differ in the Python types)."""
    if value is None:
        return None
    if name == "f_decimal":
        return decimal.Decimal(str(value))
    if name == "f_binary":
        return bytes(value)
    if name == "f_date":
        return (value - dt.date(1970, 1, 1)).days
    if name == "f_time":
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + \
            value.microsecond
    if name == "f_timestamp":
        return int((value - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))
    if name == "f_uuid":
        return str(value)
    if name == "f_json":
        return json.loads(value) if isinstance(value, str) else value
    return value


def test_every_column_type_round_trips(harness: Harness) -> None:
    h = harness
    v2 = added(V1, *ALL_TYPES)
    h.writer.apply(batch_of(v2, [
        (T0, 0, 0, "INSERT", event_row(v2, 1, **VALUES)),
        (T0, 0, 1, "INSERT", event_row(v2, 2)),
    ]))
    names = [c.name for c in ALL_TYPES]
    state = read(h, h.writer.names.state, [KEY, *names])
    expected = {n: normalized(n, VALUES[n]) if n in ("f_json",) else VALUES[n] for n in names}
    expected["f_json"] = json.loads(VALUES["f_json"])
    assert {n: normalized(n, state[1][n]) for n in names} == expected
    assert all(state[2][n] is None for n in names)
    assert h.writer.table_state().schema.columns[len(V1.columns):] == ALL_TYPES


def test_the_column_policy_is_recorded_with_a_new_table(harness: Harness) -> None:
    assert harness.writer.table_state().policy == ColumnPolicy()
    state = harness.writer.table_state()
    assert state.schema == V1
    assert not state.has_rows


def test_a_full_refresh_carries_the_columns_of_both_copies(harness: Harness) -> None:
    """The rebuild saw a schema adding ``score``; the live table a schema adding
    ``risk_rating`` (events after the plan's end). Leveling gives the rebuild the live
    column; the swapped-in table has both, with every row's values; the rebuild's column
    metadata joins the live one."""
    h = harness
    built = (PartitionRange(0, 0, 5),)
    v2 = added(V1, RISK)
    h.writer.apply(batch_of(v2, [(T0 + 9, 0, 10, "INSERT", event_row(v2, 9, risk_rating="x"))]))
    h.writer.prepare()
    rebuild = rebuild_names(h.writer.names)
    builder = h.new_writer(rebuild)
    builder.open()
    v3 = added(V1, SCORE)
    builder.apply(batch_of(v3, [(T0, 0, 0, "INSERT", event_row(v3, 1, score=3))]))
    builder.close()

    h.writer.level(built, into_live=False)
    h.writer.swap_in(built)
    h.writer.level(built, into_live=True)
    h.writer.finish()

    names = h.writer.table_state().schema.names
    assert {"score", "risk_rating"} <= set(names)
    view = read(h, h.writer.names.current, [KEY, "score", "risk_rating"])
    assert view == {
        1: {KEY: 1, "score": 3, "risk_rating": None},
        9: {KEY: 9, "score": None, "risk_rating": "x"},
    }
    assert {r[0] for r in metadata(h) if r[1] == "add"} == {"score", "risk_rating"}
    assert h.writer.table_state().policy == ColumnPolicy()
