"""Schema evolution end to end, against the oracle in ``tests/oracles/evolution.py``.

Hypothesis draws a sequence of writer-schema versions (each adds a field, widens one, reorders
the fields or removes one), events written with any of them (old producers keep running), a
random split into consume batches, random flushes and a replayed range; the run loop's own
ingest and flush put them through the real decoder (Confluent wire format, columnar), reducer,
staging and DuckDB writer (ALTER + MERGE). The state table must equal the oracle: per key the
winning event's values, null where its schema lacked the field, the columns widened where a
schema widened them. With profile history on (and with or without a column policy: one field
hashed, one excluded), the history table must equal ``tests/oracles/history.py``'s intervals of
every event, each version holding its own event's values under the policy, its columns of the
state table's types; ``widening_case`` pins a widening across flushes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batcher.window import FlushReason, WindowPolicy
from consumer.decode.contract import Contract
from consumer.decode.decoder import WIRE_HEADER, ConfluentAvroDecoder
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.values import hash_text
from consumer.run.loop import LoopOptions, SyncLoop
from schemas import audit_schema
from schemas.columns import KEY, REQUIRED_FIELDS
from schemas.evolution import ColumnPolicy
from tests.oracles.evolution import SentEvent, expected_rows
from tests.oracles.history import build_history
from tests.run.fakes import FakeMessage, memory_tables
from warehouse import history_sql
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.tables import state_columns

TOPIC = "kyc_profile_audit"
T0 = 1_704_067_200_000_000  # 2024-01-01 in microseconds
EPOCH = dt.datetime(1970, 1, 1)

# Types a new field may take: Avro type, how to draw a value, how the table returns it.
TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "string": ("string", st.text(max_size=5)),
    "int": ("int", st.integers(-(2**31), 2**31 - 1)),
    "long": ("long", st.integers(-(2**63), 2**63 - 1)),
    "float": ("float", st.integers(-1000, 1000).map(lambda k: k / 4)),
    "double": ("double", st.integers(-10**6, 10**6).map(lambda k: k / 8)),
    "boolean": ("boolean", st.booleans()),
    "date": ({"type": "int", "logicalType": "date"}, st.integers(-700_000, 2_900_000)),
    "decimal": (
        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        st.integers(-(10**9) + 1, 10**9 - 1).map(lambda n: decimal.Decimal(n).scaleb(-2)),
    ),
    "millis": (
        {"type": "long", "logicalType": "timestamp-millis"},
        st.integers(-62_135_596_800_000, 253_402_300_799_999),
    ),
}
WIDER = {"int": "long", "float": "double"}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str
    nullable: bool

    def avro(self) -> dict[str, Any]:
        base = TYPES[self.kind][0]
        return {"name": self.name, "type": ["null", base] if self.nullable else base}


BASE_FIELDS: tuple[dict[str, Any], ...] = tuple(audit_schema()["fields"])
BASE_VALUES = {
    "goldtier_id": st.none() | st.text(max_size=4),
    "cid": st.none() | st.text(max_size=4),
    "party_id": st.none() | st.text(max_size=4),
    "created_date": st.none() | st.integers(0, 2 * T0),
    "updated_date": st.none() | st.integers(0, 2 * T0),
}


@st.composite
def versions(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Writer schemas, each one change away from the one before."""
    current: list[dict[str, Any]] = list(BASE_FIELDS)
    extra: dict[str, Field] = {}
    out = [list(current)]
    for n in range(draw(st.integers(1, 5))):
        change = draw(st.sampled_from(("add", "add", "widen", "reorder", "remove")))
        if change == "add":
            new = Field(f"x{n}", draw(st.sampled_from(sorted(TYPES))), draw(st.booleans()))
            extra[new.name] = new
            current.append(new.avro())
        elif change == "widen":
            narrow = [f for f in extra.values() if f.kind in WIDER and
                      any(c["name"] == f.name for c in current)]
            if not narrow:
                continue
            field = draw(st.sampled_from(narrow))
            wide = Field(field.name, WIDER[field.kind], field.nullable)
            extra[field.name] = wide
            current = [wide.avro() if c["name"] == field.name else c for c in current]
        elif change == "reorder":
            current = list(draw(st.permutations(current)))
        else:
            removable = [c for c in current if c["name"] not in REQUIRED_FIELDS]
            if not removable:
                continue
            gone = draw(st.sampled_from(removable))["name"]
            current = [c for c in current if c["name"] != gone]
        out.append(list(current))
    return out


def schema_of(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": "KycProfileAudit", "namespace": "com.kyc.audit",
            "fields": fields}


def value_strategy(field: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    name = field["name"]
    if name in BASE_VALUES:
        return BASE_VALUES[name]
    declared = field["type"]
    nullable = isinstance(declared, list)
    base = declared[1] if nullable else declared
    kind = next(k for k, (t, _) in TYPES.items() if t == base)
    values = TYPES[kind][1]
    return st.none() | values if nullable else values


@dataclass(frozen=True, slots=True)
class Case:
    schemas: list[dict[str, Any]]
    events: list[tuple[int, dict[str, Any], int]]
    """(schema index, record, partition)"""
    splits: list[int]
    flushes: list[bool]
    replay: tuple[int, int]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    fields = draw(versions())
    schemas = [schema_of(f) for f in fields]
    events = []
    for _ in range(draw(st.integers(1, 40))):
        index = draw(st.integers(0, len(schemas) - 1))
        record: dict[str, Any] = {
            KEY: draw(st.integers(0, 6)),
            "op_type": draw(st.sampled_from(("INSERT", "UPDATE", "DELETE"))),
            "op_time": T0 + draw(st.integers(0, 20)),
        }
        for field in fields[index]:
            if field["name"] not in record:
                record[field["name"]] = draw(value_strategy(field))
        events.append((index, record, draw(st.integers(0, 2))))
    splits = draw(st.lists(st.integers(1, 12), min_size=1, max_size=10))
    flushes = draw(st.lists(st.booleans(), min_size=len(splits), max_size=len(splits)))
    start = draw(st.integers(0, len(events) - 1))
    return Case(schemas, events, splits, flushes, (start, draw(st.integers(start, len(events)))))


class Registry:
    def __init__(self, schemas: list[dict[str, Any]]) -> None:
        self.schemas = schemas

    def schema(self, schema_id: int) -> Mapping[str, Any]:
        return self.schemas[schema_id - 1]

    def versions(self, schema_id: int) -> str:
        return f"kyc_profile_audit-value v{schema_id}"


def encoded(case: Case) -> tuple[list[FakeMessage], list[SentEvent]]:
    offsets = [0, 0, 0]
    messages: list[FakeMessage] = []
    sent: list[SentEvent] = []
    encoders = [AuditEncoder(s, i + 1) for i, s in enumerate(case.schemas)]
    for index, record, partition in case.events:
        avro_record = dict(record)
        op_time_field = next(f for f in case.schemas[index]["fields"] if f["name"] == "op_time")
        assert op_time_field["type"]["logicalType"] == "timestamp-micros"
        for name in ("created_date", "updated_date"):
            if avro_record.get(name) is not None:
                avro_record[name] = EPOCH.replace(tzinfo=dt.UTC) + dt.timedelta(
                    microseconds=avro_record[name])
        avro_record["op_time"] = EPOCH.replace(tzinfo=dt.UTC) + dt.timedelta(
            microseconds=record["op_time"])
        value = encoders[index].encode(avro_record)
        assert WIRE_HEADER.unpack_from(value)[1] == index + 1
        offset = offsets[partition]
        offsets[partition] += 1
        messages.append(FakeMessage(TOPIC, partition, offset, message_key(record[KEY]), value))
        sent.append(SentEvent(
            record[KEY], record["op_type"], record["op_time"], partition, offset,
            {k: v for k, v in record.items() if k not in REQUIRED_FIELDS},
        ))
    return messages, sent


def normalized(value: Any, column_type: str) -> Any:
    """A value read from DuckDB as the oracle holds it."""
    if value is None:
        return None
    if column_type == "timestamp":
        return (value - EPOCH) // dt.timedelta(microseconds=1)  # exact: no float
    if column_type == "date":
        return (value - dt.date(1970, 1, 1)).days
    return value


def sent_value(value: Any, field: Mapping[str, Any] | None) -> Any:
    """A value as sent, in the column's unit (milliseconds become microseconds)."""
    if value is None or field is None:
        return value
    declared = field["type"]
    base = declared[1] if isinstance(declared, list) else declared
    if isinstance(base, dict) and base.get("logicalType") == "timestamp-millis":
        return value * 1000
    return value


HASH_KEY = b"property-test-hash-key"
POLICIES = (ColumnPolicy(), ColumnPolicy(exclude=frozenset({"party_id"}),
                                         hash=frozenset({"cid"})))


def stored(values: Mapping[str, Any], policy: ColumnPolicy) -> dict[str, Any]:
    """An event's values as the table stores them under the column policy: excluded fields
    dropped, hashed ones as HMAC-SHA256 hex."""
    return {k: hash_text(HASH_KEY, v) if k in policy.hash else v
            for k, v in values.items() if k not in policy.exclude}


def run(case: Case, history: bool = False, policy: ColumnPolicy = POLICIES[0]) -> None:
    messages, sent = encoded(case)
    sent = [replace(e, values=stored(e.values, policy)) for e in sent]
    warehouse = DuckDBWarehouse(":memory:", memory_tables(history), policy=policy)
    decoder = ConfluentAvroDecoder(Registry(case.schemas),
                                   Contract(columns=policy, hash_key=HASH_KEY))
    loop = SyncLoop(
        LoopOptions(topic=TOPIC, group_id="g", history=history),
        lambda **_: None,  # type: ignore[arg-type]
        decoder, warehouse, None, WindowPolicy(), clock=time.monotonic,
    )
    warehouse.open()
    decoder.contract.start(warehouse.table_state())
    position = 0
    replay = messages[case.replay[0]:case.replay[1]]
    chunks = []
    for size in case.splits:
        chunks.append(messages[position:position + size])
        position += size
    chunks.append(messages[position:])
    chunks.append(replay)  # a replayed range: the guard makes it harmless
    flushes = [*case.flushes, True, True]
    for chunk, flush in zip(chunks, flushes, strict=True):
        if chunk:
            loop.ingest(chunk)  # type: ignore[arg-type]  # the fakes stand in for Message
        if flush:
            loop.flush(FlushReason.EVENTS)

    schema = warehouse.table_state().schema
    names = [c.name for c in schema.columns if c.name != KEY]
    used = [case.schemas[i] for i in sorted({index for index, _, _ in case.events})]
    fields = {f["name"]: f for s in used for f in s["fields"]}
    types = {c.name: c.type for c in schema.columns}

    def got(row: Sequence[Any]) -> dict[str, Any]:
        return {n: normalized(v, types[n]) for n, v in zip(names, row, strict=True)}

    def want(values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: sent_value(v, fields.get(k)) for k, v in values.items()}

    selected = ", ".join(f'"{n}"' for n in names)
    rows = warehouse.fetch(f"SELECT kyc_profile_id, op_type, {selected} "
                           "FROM main.kyc_profile_state ORDER BY kyc_profile_id")
    assert {row[0]: {"op_type": row[1], **got(row[2:])} for row in rows} == {
        key: {"op_type": row.pop("op_type"), **want(row)}
        for key, row in expected_rows(sent, names).items()
    }
    base_names = {f["name"] for f in BASE_FIELDS}
    columns_of_sent = {f["name"] for s in used for f in s["fields"]} | base_names
    assert set(names) == columns_of_sent - set(REQUIRED_FIELDS) - policy.exclude
    for name in names:  # the widest type any decoded schema gave the field
        declared = {
            str(f["type"][1] if isinstance(f["type"], list) else f["type"])
            for s in used for f in s["fields"] if f["name"] == name
        }
        if "long" in declared and name not in policy.hash:
            assert types[name] == "bigint", (name, types[name])
        if "double" in declared:
            assert types[name] == "double", (name, types[name])
    if history:
        check_history(warehouse, sent, names, got, want)
    warehouse.close()


def check_history(
    warehouse: DuckDBWarehouse, sent: Sequence[SentEvent], names: Sequence[str],
    got: Callable[[Sequence[Any]], dict[str, Any]],
    want: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> None:
    """The history table equals the oracle's intervals, each version holding its own event's
    values (null where its writer schema lacked the field), in columns of the state table's
    types; the checks of ``kyc-sync check`` find nothing."""
    selected = ", ".join(f'"{n}"' for n in names)
    rows = warehouse.fetch(
        f"SELECT kyc_profile_id, epoch_us(op_time), src_partition, src_offset, op_type, "
        f"epoch_us(valid_to), is_current, {selected} FROM main.kyc_profile_history "
        "ORDER BY kyc_profile_id, op_time, src_partition, src_offset")
    built = build_history((e.key, e.op_time, e.partition, e.offset, e.op_type, e.values)
                          for e in sent)
    assert [(*row[:7], got(row[7:])) for row in rows] == [
        (i.key, i.op_time, i.partition, i.offset, i.op_type, i.valid_to, i.is_current,
         want({n: i.payload.get(n) for n in names}))
        for intervals in built.values() for i in intervals
    ]
    sql = ("SELECT column_name, data_type FROM information_schema.columns "
           "WHERE table_name = ? AND column_name NOT IN ('valid_from', 'valid_to', 'is_current') "
           "ORDER BY column_name")
    assert warehouse.fetch(sql, ["kyc_profile_history"]) == warehouse.fetch(
        sql, ["kyc_profile_state"])
    history, state = QualifiedName.of("main", "kyc_profile_history"), memory_tables().state
    columns = state_columns(warehouse.table_state().schema)
    for query in (history_sql.intervals_sql(history, "duckdb"),
                  history_sql.current_rows_sql(history, state, "duckdb"),
                  history_sql.state_agreement_sql(history, state, "duckdb", columns)):
        assert warehouse.fetch(query) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(cases())
def test_evolving_schemas_converge_to_the_oracle(case: Case) -> None:
    run(case)


def widening_case() -> Case:
    """A field added as int, then widened to long in a later flush, with a value only the
    wider column holds: the history table must be widened with the state table."""
    narrow, wide = Field("x0", "int", True), Field("x0", "long", True)
    fields = [list(BASE_FIELDS), [*BASE_FIELDS, narrow.avro()], [*BASE_FIELDS, wide.avro()]]
    base = {f["name"]: None for f in BASE_FIELDS}
    events = [
        (1, {**base, KEY: 1, "op_type": "INSERT", "op_time": T0, "cid": "c1", "x0": 5}, 0),
        (2, {**base, KEY: 1, "op_type": "UPDATE", "op_time": T0 + 1, "x0": 2**40}, 0),
        (0, {**base, KEY: 2, "op_type": "INSERT", "op_time": T0 + 2, "party_id": "p"}, 1),
    ]
    return Case([schema_of(f) for f in fields], events, [1, 1], [True, True], (0, 3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(cases(), st.sampled_from(POLICIES))
@example(widening_case(), POLICIES[0])
@example(widening_case(), POLICIES[1])
def test_history_follows_evolving_schemas_under_the_column_policy(
    case: Case, policy: ColumnPolicy
) -> None:
    """The same cases with profile history on, with and without a column policy: the state
    table as above, and the history table equal to the oracle's intervals of every event."""
    run(case, history=True, policy=policy)
