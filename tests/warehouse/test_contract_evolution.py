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
from dataclasses import replace
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
from tests.oracles.history import build_history
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
    history_problems,
    live_as_of,
    open_harness,
)
from warehouse.base import Batch
from warehouse.schema_changes import physical_columns_sql
from warehouse.swap import rebuild_names
from warehouse.tables import NOT_BUSINESS, col, view_columns

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
    schema: TableSchema, events: Sequence[tuple[int, int, int, str, Row]], history: bool = False
) -> Batch:
    """A batch of (op_time, partition, offset, op_type, payload) events of ``schema``; with
    ``history``, carrying the distinct versions too."""
    reducer: ReferenceReducer[Row] = ReferenceReducer(keep_versions=history)
    for op_time, partition, offset, op_type, payload in events:
        reducer.add(payload[0], op_time, partition, offset, op_type, payload)
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    return Batch(
        batch_id=batch_id, topic=TOPIC, consumer_group=GROUP,
        rows=build_staged(reduced.winners, batch_id, SYNCED_AT_US, schema),
        ranges=reduced.ranges, events_in=reduced.events, invalid_events=reduced.invalid,
        started_at=STARTED_AT, schema=schema,
        history=build_staged(reduced.versions, batch_id, SYNCED_AT_US, schema)
        if history else None,
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


# -- profile history under column changes --------------------------------------------------------


@pytest.fixture(params=WRITERS)
def history_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = open_harness(request, tmp_path, history=True)
    try:
        yield h
    finally:
        h.writer.close()


Sent = tuple[TableSchema, int, int, int, str, dict[str, Any]]
"""An event as a writer schema carried it: (schema, op_time, partition, offset, op_type,
values by field, the key among them)."""


def apply_sent(writer: Any, events: Sequence[Sent]) -> None:
    """One batch (with its versions) per writer schema, in the order the schemas come."""
    by_schema: dict[TableSchema, list[tuple[int, int, int, str, Row]]] = {}
    for schema, op_time, partition, offset, op_type, values in events:
        by_schema.setdefault(schema, []).append((op_time, partition, offset, op_type, event_row(
            schema, values[KEY], **{k: v for k, v in values.items() if k != KEY})))
    for schema, rows in by_schema.items():
        writer.apply(batch_of(schema, rows, history=True))


def expected_versions(events: Sequence[Sent], names: Sequence[str]) -> list[dict[str, Any]]:
    """The oracle's history rows over ``names`` (NULL where the event's schema lacked the
    field), by key and version."""
    built = build_history(
        (values[KEY], op_time, partition, offset, op_type, (schema, values))
        for schema, op_time, partition, offset, op_type, values in events)
    rows = []
    for intervals in built.values():
        for i in intervals:
            schema, values = i.payload
            rows.append({
                **{n: values.get(n) if schema.column(n) is not None else None for n in names},
                "op_type": i.op_type, "valid_from": T0_TS + dt.timedelta(microseconds=i.op_time
                                                                          - T0),
                "valid_to": None if i.valid_to is None
                else T0_TS + dt.timedelta(microseconds=i.valid_to - T0),
                "is_current": i.is_current,
            })
    return rows


T0_TS = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=T0)


def versions(h: Harness, table: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """The history rows over ``names`` and the interval, by key and version; values normalized
    as the contract compares them (decimals as ``Decimal``)."""
    shown = [*names, "op_type", "valid_from", "valid_to", "is_current"]
    exprs = [e for n in shown for e in (col(n, h.dialect), f"{col(n, h.dialect)} IS NULL")]
    order = ", ".join(col(c, h.dialect) for c in (KEY, "op_time", "src_partition", "src_offset"))
    out = []
    for row in h.writer.fetch(f"SELECT {', '.join(exprs)} FROM {table.sql()} ORDER BY {order}"):
        values = {n: None if row[2 * i + 1] else row[2 * i] for i, n in enumerate(shown)}
        out.append({n: decimal.Decimal(str(v)) if isinstance(v, decimal.Decimal | float)
                    and n == "amount" else v for n, v in values.items()})
    return out


def column_types(h: Harness, table: Any) -> dict[str, tuple[Any, ...]]:
    """Each column of ``table`` as its SQL type reads back: name -> (type, precision, scale)."""
    sql, params = physical_columns_sql(table, h.dialect)
    return {str(r[0]).lower(): tuple(r[1:]) for r in h.writer.fetch(sql, params)}


def business_types(h: Harness, table: Any) -> dict[str, tuple[Any, ...]]:
    return {n: t for n, t in column_types(h, table).items() if n not in NOT_BUSINESS}


AMOUNT = Column("amount", "decimal", True, 6, 2)
RATIO = Column("ratio", "float")


def test_history_gets_added_and_widened_columns_with_the_state_table(
    history_harness: Harness,
) -> None:
    """A schema adding columns, then one widening them: the history table gets each column
    and each wider type in the flush that needs it (values beyond the narrow type fit), the
    same SQL types as the state table; older versions hold NULL where their schema lacked the
    field, also a version of an older schema written last."""
    h = history_harness
    names = h.writer.names
    assert names.history is not None
    v2 = added(V1, SCORE, RATIO, AMOUNT, RISK)
    v3 = widened(widened(widened(v2, Column("score", "bigint")), Column("ratio", "double")),
                 Column("amount", "decimal", True, 12, 2))
    events: list[Sent] = [
        (V1, T0, 0, 0, "INSERT", {KEY: 1, "goldtier_id": "a"}),
        (v2, T0 + 1, 0, 1, "UPDATE", {KEY: 1, "score": 2**31 - 1, "ratio": 0.5,
                                      "amount": decimal.Decimal("1234.56"), "risk_rating": "low"}),
        (v3, T0 + 2, 0, 2, "UPDATE", {KEY: 1, "score": 2**40, "ratio": 0.25,
                                      "amount": decimal.Decimal("1234567890.12")}),
        (v3, T0 + 2, 0, 3, "INSERT", {KEY: 2, "risk_rating": "high"}),
        (V1, T0 + 3, 0, 4, "UPDATE", {KEY: 1, "cid": "c"}),  # an old producer, still running
    ]
    apply_sent(h.writer, events)

    shown = [KEY, "goldtier_id", "cid", "score", "ratio", "amount", "risk_rating"]
    assert versions(h, names.history, shown) == expected_versions(events, shown)
    assert business_types(h, names.history) == business_types(h, names.state)
    assert history_problems(h) == [[], [], []]
    assert live_as_of(h, T0 + 2) == {1: T0 + 2, 2: T0 + 2}


def test_every_column_type_round_trips_into_history(history_harness: Harness) -> None:
    h = history_harness
    names = h.writer.names
    assert names.history is not None
    v2 = added(V1, *ALL_TYPES)
    h.writer.apply(batch_of(v2, [(T0, 0, 0, "INSERT", event_row(v2, 1, **VALUES))],
                            history=True))
    cols = [c.name for c in ALL_TYPES]
    got = read(h, names.history, [KEY, *cols])[1]
    state = read(h, names.state, [KEY, *cols])[1]
    assert {n: normalized(n, got[n]) for n in cols} == {n: normalized(n, state[n]) for n in cols}
    assert business_types(h, names.history) == business_types(h, names.state)
    assert history_problems(h) == [[], [], []]


def test_history_follows_a_column_another_instance_added(history_harness: Harness) -> None:
    """An instance with history off adds a column to the state table; this instance, still
    writing batches of the old schema, brings the history table level with the state table
    before its next flush; when it opens again the version it missed becomes current."""
    h = history_harness
    names = h.writer.names
    assert names.history is not None
    h.writer.apply(batch_of(V1, [(T0, 0, 0, "INSERT", event_row(V1, 1))], history=True))
    other = h.new_writer(replace(names, history=None))
    other.open()
    v2 = added(V1, RISK)
    other.apply(batch_of(v2, [(T0 + 1, 0, 1, "UPDATE", event_row(v2, 1, risk_rating="x"))]))
    other.close()

    h.writer.apply(batch_of(V1, [(T0 + 2, 0, 2, "INSERT", event_row(V1, 2))], history=True))
    assert "risk_rating" in column_types(h, names.history)
    h.writer.close()
    h.writer.open()
    rows = versions(h, names.history, [KEY, "risk_rating"])
    assert [(r[KEY], r["risk_rating"], r["is_current"]) for r in rows] == [
        (1, None, False), (1, "x", True), (2, None, True)]
    assert history_problems(h) == [[], [], []]


def test_a_full_refresh_rebuilds_history_with_the_evolved_columns(
    history_harness: Harness,
) -> None:
    """The rebuild read a schema adding ``score``; the live tables hold a schema adding
    ``risk_rating`` (after the plan) and a write that raced the swap adds ``tier``. Both
    swapped-in tables hold all three columns, history every version with its values."""
    h = history_harness
    names = h.writer.names
    assert names.history is not None
    built = (PartitionRange(0, 0, 5),)
    v2, v3, v4 = added(V1, RISK), added(V1, SCORE), added(V1, Column("tier", "text"))
    live: list[Sent] = [(v2, T0 + 9, 0, 10, "INSERT", {KEY: 9, "risk_rating": "x"}),
                        (v2, T0 + 9, 0, 11, "UPDATE", {KEY: 1, "risk_rating": "y"})]
    apply_sent(h.writer, live)
    h.writer.prepare()
    rebuild = rebuild_names(names)
    builder = h.new_writer(rebuild)
    builder.open()
    rebuilt: list[Sent] = [(v3, T0, 0, 0, "INSERT", {KEY: 1, "score": 3}),
                           (v3, T0 + 1, 0, 1, "INSERT", {KEY: 2, "score": 4})]
    apply_sent(builder, rebuilt)
    builder.close()

    h.writer.level(built, into_live=False)
    raced: list[Sent] = [(v4, T0 + 20, 0, 12, "UPDATE", {KEY: 2, "tier": "gold"})]
    apply_sent(h.writer, raced)
    h.writer.swap_in(built)
    h.writer.level(built, into_live=True)
    h.writer.finish()

    shown = [KEY, "score", "risk_rating", "tier"]
    assert {"score", "risk_rating", "tier"} <= set(business_types(h, names.state))
    assert business_types(h, names.history) == business_types(h, names.state)
    assert versions(h, names.history, shown) == expected_versions(
        [*rebuilt, *live, *raced], shown)
    assert read(h, names.current, shown) == {
        1: {KEY: 1, "score": None, "risk_rating": "y", "tier": None},
        2: {KEY: 2, "score": None, "risk_rating": None, "tier": "gold"},
        9: {KEY: 9, "score": None, "risk_rating": "x", "tier": None},
    }
    assert history_problems(h) == [[], [], []]


PII = ColumnPolicy(exclude=frozenset({"cid"}), hash=frozenset({"created_date"}))


def test_the_column_policy_shapes_history_like_the_state_table(
    history_harness: Harness,
) -> None:
    """A new table under a column policy: the history table has no excluded column and a
    hashed one as text, as the state table; history turned on later for it too."""
    h = history_harness
    names = rebuild_names(h.writer.names, "_pii")
    assert names.history is not None
    writer = h.new_writer(names, policy=PII)
    try:
        writer.open()
        types = business_types(h, names.history)
        assert "cid" not in types
        assert types == business_types(h, names.state)
        assert types["created_date"] == business_types(h, names.state)["created_date"]
        assert writer.table_state().schema == PII.initial_schema()
    finally:
        writer.close()


def test_a_refresh_that_applies_a_new_policy_drops_excluded_columns_from_history(
    history_harness: Harness,
) -> None:
    """Live tables without a policy; a full refresh under one that excludes ``cid``: neither
    swapped-in table has the column, although leveling adds every other live column (here
    ``risk_rating``) to the rebuild."""
    h = history_harness
    names = h.writer.names
    assert names.history is not None
    built = (PartitionRange(0, 0, 5),)
    v2 = added(V1, RISK)
    h.writer.apply(batch_of(v2, [(T0, 0, 0, "INSERT", event_row(v2, 1, cid="secret",
                                                                 risk_rating="r"))],
                            history=True))
    policy = ColumnPolicy(exclude=frozenset({"cid"}))
    refresher = h.new_writer(names, policy=policy)
    try:
        refresher.prepare()
        builder = h.new_writer(rebuild_names(names), policy=policy)
        builder.open()
        schema = policy.initial_schema()
        builder.apply(batch_of(schema, [(T0, 0, 0, "INSERT", event_row(schema, 1))],
                               history=True))
        builder.close()
        assert refresher.outside_rows(built) == 0
        refresher.level(built, into_live=False)
        refresher.swap_in(built)
        refresher.level(built, into_live=True)
        refresher.finish()
        for table in (names.state, names.history):
            assert "cid" not in column_types(h, table)
            assert "risk_rating" in column_types(h, table)
        assert refresher.table_state().policy == policy
    finally:
        refresher.close()
    assert history_problems(h) == [[], [], []]


def test_outside_rows_counts_history_versions(history_harness: Harness) -> None:
    """A profile whose latest version lies inside the rebuilt ranges and an older one outside
    them (dropped by retention): leveling would copy that version into the rebuilt history,
    so a refresh that changes the column policy must count it."""
    h = history_harness
    h.writer.apply(batch_of(V1, [(T0, 0, 0, "INSERT", event_row(V1, 1, cid="old")),
                                 (T0 + 1, 0, 1, "UPDATE", event_row(V1, 1, cid="new"))],
                            history=True))
    assert h.writer.outside_rows((PartitionRange(0, 1, 2),)) == 1
    assert h.writer.outside_rows((PartitionRange(0, 0, 2),)) == 0
