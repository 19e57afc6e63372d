"""The Avro type mapping and the evolution rules (pure): what each writer schema does to the
table's columns under each policy."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import audit_schema
from schemas.avro_types import field_spec, version_problem
from schemas.columns import BASE_SCHEMA, Column, ColumnChange, TableSchema
from schemas.evolution import ColumnPolicy, Policy, Resolution, compare, resolve, writer_specs

MAPPING: list[tuple[Any, str, str]] = [
    # Avro type, column type, reading
    ("boolean", "bool", "value"),
    ("int", "int", "value"),
    ("long", "bigint", "value"),
    ("float", "float", "value"),
    ("double", "double", "value"),
    ("string", "text", "value"),
    ("bytes", "binary", "value"),
    ({"type": "fixed", "name": "F", "size": 4}, "binary", "value"),
    ({"type": "fixed", "name": "D", "size": 12, "logicalType": "duration"}, "binary", "value"),
    ({"type": "enum", "name": "E", "symbols": ["A"]}, "text", "enum"),
    ({"type": "string", "logicalType": "uuid"}, "uuid", "value"),
    ({"type": "int", "logicalType": "date"}, "date", "value"),
    ({"type": "int", "logicalType": "time-millis"}, "time", "value"),
    ({"type": "long", "logicalType": "time-micros"}, "time", "value"),
    ({"type": "long", "logicalType": "timestamp-millis"}, "timestamp", "value"),
    ({"type": "long", "logicalType": "timestamp-micros"}, "timestamp", "value"),
    ({"type": "long", "logicalType": "timestamp-nanos"}, "timestamp", "value"),
    ({"type": "long", "logicalType": "local-timestamp-millis"}, "timestamp", "value"),
    ({"type": "long", "logicalType": "local-timestamp-micros"}, "timestamp", "value"),
    ({"type": "long", "logicalType": "local-timestamp-nanos"}, "timestamp", "value"),
    ({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
     "decimal(10,2)", "decimal"),
    ({"type": "fixed", "name": "G", "size": 16, "logicalType": "decimal", "precision": 38,
      "scale": 0}, "decimal(38,0)", "decimal"),
    ({"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 2},
     "text", "big_decimal"),
    ({"type": "bytes", "logicalType": "big-decimal"}, "binary", "value"),
    ({"type": "long", "logicalType": "something-new"}, "bigint", "value"),
    ({"type": "record", "name": "R", "fields": []}, "json", "json"),
    ({"type": "array", "items": "long"}, "json", "json"),
    ({"type": "map", "values": "long"}, "json", "json"),
    (["null", "string", "long"], "json", "json"),
    ("null", "json", "json"),
]


@pytest.mark.parametrize(("avro", "column", "reading"), MAPPING, ids=[repr(m[0]) for m in MAPPING])
def test_every_avro_type_maps_to_a_column_type(avro: Any, column: str, reading: str) -> None:
    forms: tuple[tuple[Any, bool], ...] = (
        ((avro, True),) if isinstance(avro, list) or avro == "null"
        else ((avro, False), (["null", avro], True), ([avro, "null"], True))
    )
    for declared, nullable in forms:
        spec = field_spec({"name": "f", "type": declared})
        assert (spec.column.describe(), spec.reading) == (column, reading)
        assert spec.nullable == nullable


def test_time_units_scale_to_microseconds_and_nanos_round_down() -> None:
    units = {
        "timestamp-millis": (1000, 1), "timestamp-micros": (1, 1), "timestamp-nanos": (1, 1000),
        "local-timestamp-nanos": (1, 1000), "time-millis": (1000, 1), "date": (1, 1),
    }
    for logical, scale in units.items():
        base = "int" if logical in ("time-millis", "date") else "long"
        spec = field_spec({"name": "t", "type": {"type": base, "logicalType": logical}})
        assert (spec.multiply, spec.divide) == scale


@pytest.mark.parametrize(("op_time", "ok"), [
    ({"type": "long", "logicalType": "timestamp-nanos"}, True),
    ({"type": "long", "logicalType": "local-timestamp-nanos"}, True),
    ({"type": "long", "logicalType": "timestamp-millis"}, True),
    ("long", True),
    ({"type": "int", "logicalType": "date"}, True),
    ({"type": "long", "logicalType": "time-micros"}, False),
    ({"type": "long", "logicalType": "nanos-since-boot"}, False),
    ({"type": "string", "logicalType": "uuid"}, False),
    ("string", False),
    ("double", False),
])
def test_a_version_field_must_be_readable_as_a_time(op_time: Any, ok: bool) -> None:
    problem = version_problem(field_spec({"name": "op_time", "type": op_time}))
    assert (problem is None) == ok
    if not ok:
        assert problem is not None
        assert "op_time must be a time" in problem


def schema_with(*extra: dict[str, Any], drop: tuple[str, ...] = (),
                retype: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = audit_schema()
    fields = [f | ({"type": retype[f["name"]]} if retype and f["name"] in retype else {})
              for f in schema["fields"] if f["name"] not in drop]
    return schema | {"fields": [*fields, *extra]}


def resolved(schema: dict[str, Any], policy: Policy = "evolve",
             table: TableSchema = BASE_SCHEMA, columns: ColumnPolicy | None = None) -> Resolution:
    return resolve(writer_specs(schema), table, policy, columns or ColumnPolicy(),
                   "registry id 5", 5)


RISK = {"name": "risk_rating", "type": ["null", "string"], "default": None}
SCORE = {"name": "score", "type": "int", "default": 0}


def test_evolve_adds_nullable_columns_in_field_order() -> None:
    r = resolved(schema_with(RISK, SCORE))
    assert r.rejected is None
    assert r.changes == (
        ColumnChange(Column("risk_rating", "text"), "add", "registry id 5", 5),
        ColumnChange(Column("score", "int"), "add", "registry id 5", 5),
    )
    assert r.table.names == (*BASE_SCHEMA.names, "risk_rating", "score")
    assert all(c.nullable for c in r.table.columns[len(BASE_SCHEMA.columns):])


def test_freeze_refuses_a_schema_that_adds_fields_naming_them() -> None:
    r = resolved(schema_with(RISK, SCORE), "freeze")
    assert r.rejected is not None
    assert "adds field(s) risk_rating, score" in r.rejected
    assert "freeze" in r.rejected
    assert r.table == BASE_SCHEMA


def test_discard_drops_the_extra_fields_and_keeps_the_table() -> None:
    r = resolved(schema_with(RISK, SCORE), "discard")
    assert r.rejected is None
    assert r.discarded == ("risk_rating", "score")
    assert r.table == BASE_SCHEMA
    assert "risk_rating" not in {s.name for s in r.kept}


def test_the_same_schema_twice_changes_nothing_the_second_time() -> None:
    first = resolved(schema_with(RISK))
    again = resolved(schema_with(RISK), table=first.table)
    assert again.changes == ()
    assert again.table.names == first.table.names


@pytest.mark.parametrize(("narrow", "wide", "column"), [
    ("int", "long", "bigint"),
    ("float", "double", "double"),
    ({"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
     {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}, "decimal(9,2)"),
])
def test_widening_is_applied_and_narrower_writers_still_fit(
    narrow: Any, wide: Any, column: str
) -> None:
    v1 = resolved(schema_with({"name": "n", "type": narrow}))
    v2 = resolved(schema_with({"name": "n", "type": ["null", wide]}), table=v1.table)
    assert v2.rejected is None
    assert [(c.change, c.column.describe()) for c in v2.changes] == [("widen", column)]
    old_producer = resolved(schema_with({"name": "n", "type": narrow}), table=v2.table)
    assert old_producer.rejected is None  # an old producer still running: its values fit
    assert old_producer.changes == ()
    frozen = resolved(schema_with({"name": "n", "type": wide}), "freeze", table=v1.table)
    assert frozen.rejected is not None
    assert "widens n" in frozen.rejected


@pytest.mark.parametrize(("before", "after"), [
    ("string", "long"),
    ("long", "string"),
    ("long", "double"),
    ("boolean", "int"),
    ({"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
     {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}),
    ({"type": "int", "logicalType": "date"}, "string"),
    ({"type": "long", "logicalType": "timestamp-micros"}, "long"),
])
def test_an_incompatible_type_change_is_refused_with_the_reason(before: Any, after: Any) -> None:
    v1 = resolved(schema_with({"name": "n", "type": before}))
    v2 = resolved(schema_with({"name": "n", "type": after}), table=v1.table)
    assert v2.rejected is not None
    assert "incompatible type change: n is" in v2.rejected
    assert v2.table == v1.table


def test_a_removed_field_keeps_its_column_and_a_reorder_changes_nothing() -> None:
    v1 = resolved(schema_with(RISK))
    removed = resolved(schema_with(drop=("risk_rating", "cid")), table=v1.table)
    assert removed.rejected is None
    assert removed.changes == ()
    assert removed.table == v1.table
    schema = schema_with(RISK)
    reordered = resolved(schema | {"fields": schema["fields"][::-1]}, table=v1.table)
    assert reordered.changes == ()


@pytest.mark.parametrize(("schema", "reason"), [
    (schema_with(drop=("kyc_profile_id",)), "lacks field(s) kyc_profile_id"),
    (schema_with(drop=("op_time",)), "lacks field(s) op_time"),
    (schema_with(retype={"kyc_profile_id": "string"}), "kyc_profile_id must be an Avro int"),
    (schema_with(retype={"op_type": "long"}), "op_type must be an Avro enum or string"),
    (schema_with(retype={"op_time": "string"}), "op_time must be a time"),
    (schema_with(retype={"cid": "long"}), "incompatible type change: cid"),
    (schema_with({"name": "is_deleted", "type": "boolean"}), "column kyc-sync writes itself"),
    (schema_with({"name": "CID", "type": "string"}), "differ only in case"),
    (schema_with({"name": "Risk", "type": "string"}, {"name": "risk", "type": "string"}),
     "differ only in case"),
])
def test_key_version_and_reserved_fields_are_never_dropped_or_retyped(
    schema: dict[str, Any], reason: str
) -> None:
    r = resolved(schema)
    assert r.rejected is not None
    assert reason in r.rejected
    assert r.rejected.startswith("registry id 5: ")


def test_column_policy_excludes_and_hashes() -> None:
    policy = ColumnPolicy(exclude=frozenset({"party_id", "risk_rating"}),
                          hash=frozenset({"cid", "created_date"}))
    table = policy.initial_schema()
    assert "party_id" not in table.names
    assert table.column("created_date") == Column("created_date", "text")
    r = resolved(schema_with(RISK), table=table, columns=policy)
    assert r.rejected is None
    assert r.excluded == ("party_id", "risk_rating")
    assert r.hashed == frozenset({"cid", "created_date"})
    assert r.changes == ()


@pytest.mark.parametrize("field", ["kyc_profile_id", "op_type", "op_time"])
def test_key_and_version_fields_cannot_be_excluded_or_hashed(field: str) -> None:
    with pytest.raises(ValueError, match="cannot be excluded or hashed"):
        ColumnPolicy(exclude=frozenset({field}))
    with pytest.raises(ValueError, match="cannot be excluded or hashed"):
        ColumnPolicy(hash=frozenset({field}))


def test_compare_is_the_widening_order() -> None:
    def c(kind: str, p: int = 0, s: int = 0) -> Column:
        return Column("x", kind, True, p, s)  # type: ignore[arg-type]

    assert compare(c("bigint"), c("int")) == "widen"
    assert compare(c("int"), c("bigint")) == "fits"
    assert compare(c("date"), c("timestamp")) == "fits"
    assert compare(c("uuid"), c("text")) == "fits"
    assert compare(c("text"), c("uuid")) is None
    assert compare(c("timestamp"), c("date")) is None
    assert compare(c("decimal", 12, 2), c("decimal", 10, 2)) == "widen"
    assert compare(c("decimal", 12, 3), c("decimal", 10, 2)) is None
