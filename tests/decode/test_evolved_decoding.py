"""Decoding evolved writer schemas: the columns they fill, the columnar path they stay on, the
values no warehouse could hold, the schemas that cannot be read, the column policy."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import hashlib
import hmac
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from consumer.decode.contract import ColumnPolicyChanged, Contract
from consumer.decode.decoder import (
    INDEX,
    SCHEMA_FILE_BEHIND,
    WIRE_HEADER,
    ConfluentAvroDecoder,
    PlainAvroDecoder,
    rows_of,
)
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.values import MAX_MICROS, MIN_MICROS
from schemas import audit_schema
from schemas.columns import BASE_SCHEMA
from schemas.errors import InvalidEvent
from schemas.evolution import ColumnPolicy, TableState
from tests.decode.test_batch_decoding import assert_same_as_one_by_one
from tests.decode.test_decoding import T0, Fetcher, variant

UTC = dt.UTC


def with_fields(*extra: dict[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    schema = copy.deepcopy(dict(base or audit_schema()))
    schema["fields"] = [*schema["fields"], *extra]
    return schema


def event(i: int, **extra: Any) -> dict[str, Any]:
    at = dt.datetime(2024, 1, 15, 10, tzinfo=UTC) + dt.timedelta(seconds=i)
    return {"kyc_profile_id": i, "goldtier_id": f"GT-{i}", "cid": f"C-{i}", "party_id": None,
            "created_date": at, "updated_date": None, "op_type": "INSERT", "op_time": at,
            **extra}


EIGHT_MORE: tuple[dict[str, Any], ...] = (
    {"name": "risk_rating", "type": ["null", "string"], "default": None},
    {"name": "score", "type": "int", "default": 0},
    {"name": "limit", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                        "precision": 12, "scale": 2}], "default": None},
    {"name": "birth_date", "type": ["null", {"type": "int", "logicalType": "date"}],
     "default": None},
    {"name": "reviewed_at", "type": ["null", {"type": "long", "logicalType": "timestamp-nanos"}],
     "default": None},
    {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}, "default": ""},
    {"name": "pep", "type": "boolean", "default": False},
    {"name": "tier", "type": ["null", {"type": "enum", "name": "Tier",
                                       "symbols": ["GOLD", "SILVER"]}], "default": None},
)
"""Eight more fields: primitives, nullable primitives and logical types (16 in all)."""


def sixteen(i: int) -> dict[str, Any]:
    return event(
        i, risk_rating=None if i % 2 else "high", score=i, limit=decimal.Decimal("1234.50"),
        birth_date=dt.date(1990, 1, 1 + i % 28), reviewed_at=T0 * 1000 + 999,
        ref=str(uuid.UUID(int=i)), pep=bool(i % 2), tier=("GOLD", "SILVER", None)[i % 3],
    )


def test_an_evolved_schema_of_primitives_and_logical_types_stays_columnar(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schema = with_fields(*EIGHT_MORE)
    decoder = PlainAvroDecoder(schema)
    with caplog.at_level(logging.WARNING):
        assert decoder.plan is not None
    assert "one at a time" not in caplog.text
    encoder = AuditEncoder(schema)
    values: list[bytes | None] = [encoder.encode(sixteen(i)) for i in range(200)]
    assert assert_same_as_one_by_one(decoder, values, [message_key(i) for i in range(200)]) == ()
    rows = decoder.decode_batch(values, [None] * 200).rows
    first = rows.filter(rows[INDEX] == 0).row(0, named=True)
    assert first["limit"] == decimal.Decimal("1234.50")
    assert first["birth_date"] == (dt.date(1990, 1, 1) - dt.date(1970, 1, 1)).days
    assert first["reviewed_at"] == T0  # nanoseconds, rounded down to microseconds
    assert first["tier"] == "GOLD"
    assert decoder.contract.table.names[-8:] == tuple(f["name"] for f in EIGHT_MORE)


def test_a_schema_with_records_or_maps_says_it_is_decoded_one_at_a_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schema = with_fields({"name": "tags", "type": {"type": "map", "values": "long"},
                          "default": {}})
    decoder = PlainAvroDecoder(schema)
    with caplog.at_level(logging.WARNING):
        assert decoder.plan is None
    assert "field(s) tags cannot be decoded in columns" in caplog.text
    value = AuditEncoder(schema).encode(event(1, tags={"b": 2, "a": 1}))
    decoded = decoder.decode(value, None)
    assert decoded.shape is not None
    assert dict(zip(decoded.shape.columns, decoded.row, strict=True))["tags"] == '{"b":2,"a":1}'


@pytest.mark.parametrize("field", ["op_time", "created_date", "updated_date"])
@pytest.mark.parametrize("micros", [MIN_MICROS - 1, MAX_MICROS + 1, 2**62])
def test_a_timestamp_no_warehouse_can_hold_is_a_validation_error_naming_the_field(
    field: str, micros: int
) -> None:
    encoder = AuditEncoder(audit_schema())
    good = [encoder.encode(event(i)) for i in range(20)]
    record = event(3)
    record[field] = micros  # an integer: fastavro writes it as it is
    bad = encoder.encode(record)
    decoder = PlainAvroDecoder(audit_schema())
    values: list[bytes | None] = [*good, bad]
    assert assert_same_as_one_by_one(decoder, values, [None] * 21) == (20,)
    with pytest.raises(InvalidEvent) as caught:
        decoder.decode(bad, None)
    assert caught.value.error_class == "validation"
    assert caught.value.reason.startswith(f"{field}: timestamp ")
    assert "outside years 1 to 9999" in caught.value.reason
    for edge_micros in (MIN_MICROS, MAX_MICROS):  # the first and last instants that fit
        edge = event(4)
        edge[field] = edge_micros
        assert decoder.decode(encoder.encode(edge), None).key == 4


def test_timestamp_nanos_are_microseconds_rounded_down_ties_to_the_kafka_position() -> None:
    schema = variant({"op_time": {"type": "long", "logicalType": "timestamp-nanos"}})
    decoder = PlainAvroDecoder(schema)
    encoder = AuditEncoder(schema)
    nanos = T0 * 1000
    a = encoder.encode(event(1) | {"op_time": nanos + 1})
    b = encoder.encode(event(1) | {"op_time": nanos + 999})
    before = encoder.encode(event(1) | {"op_time": -1})
    assert decoder.decode(a, None).op_time == T0
    assert decoder.decode(b, None).op_time == T0  # the same microsecond: a tie
    assert decoder.decode(before, None).op_time == -1  # toward the past
    assert assert_same_as_one_by_one(decoder, [a, b, before], [None] * 3) == ()


@pytest.mark.parametrize("op_time", [
    {"type": "long", "logicalType": "time-micros"},
    {"type": "long", "logicalType": "nanos-since-boot"},
    {"type": "string", "logicalType": "uuid"},
])
def test_another_logical_type_on_op_time_is_a_schema_dead_letter(op_time: Any) -> None:
    schema = variant({"op_time": op_time})
    decoder = ConfluentAvroDecoder(Fetcher({7: schema}))
    body = AuditEncoder(variant({"op_time": "long"}), 7).encode(event(1) | {"op_time": T0})
    with pytest.raises(InvalidEvent) as caught:
        decoder.decode(body, None)
    assert caught.value.error_class == "schema"
    assert "op_time must be a time" in caught.value.reason
    batch = decoder.decode_batch([body], [None])
    assert batch.singles == (0,)


@pytest.mark.parametrize("registered", ['"string"', '["null", "string"]', '{"type": "map", '
                                        '"values": "long"}'])
def test_a_registry_schema_that_is_not_a_record_is_a_schema_dead_letter(registered: str) -> None:
    import json

    decoder = ConfluentAvroDecoder(Fetcher({9: json.loads(registered)}))
    body = WIRE_HEADER.pack(0, 9) + b"\x02a"
    for _ in range(2):  # remembered: the second time, no fetch
        with pytest.raises(InvalidEvent) as caught:
            decoder.decode(body, None)
        assert caught.value.error_class == "schema"
        assert "not an Avro record" in caught.value.reason
    assert decoder.decode_batch([body, body], [None, None]).singles == (0, 1)


def test_freeze_makes_dead_letters_naming_the_fields_and_discard_counts_them() -> None:
    schema = with_fields(*EIGHT_MORE[:2])
    value = AuditEncoder(schema, 3).encode(sixteen(1))
    frozen = ConfluentAvroDecoder(Fetcher({3: schema}), Contract("freeze"))
    with pytest.raises(InvalidEvent) as caught:
        frozen.decode(value, None)
    assert caught.value.error_class == "schema"
    assert "adds field(s) risk_rating, score" in caught.value.reason
    assert frozen.contract.table == BASE_SCHEMA

    discarding = ConfluentAvroDecoder(Fetcher({3: schema}), Contract("discard"))
    batch = discarding.decode_batch([value] * 10, [None] * 10)
    assert batch.singles == ()
    assert "risk_rating" not in batch.rows.columns
    assert discarding.contract.take_discarded() == {"risk_rating": 10, "score": 10}
    assert discarding.contract.take_discarded() == {}
    assert discarding.contract.table == BASE_SCHEMA


def test_a_plain_avro_decode_error_says_the_schema_file_is_probably_behind() -> None:
    newer = with_fields(EIGHT_MORE[0])
    value = AuditEncoder(newer).encode(event(1, risk_rating="high"))
    decoder = PlainAvroDecoder(audit_schema(), schema_file=True)
    with pytest.raises(InvalidEvent) as caught:
        decoder.decode(value, None)
    assert caught.value.error_class == "decode"
    assert "trailing bytes" in caught.value.reason
    assert caught.value.reason.endswith(SCHEMA_FILE_BEHIND)
    assert "schema file (decoding.schema_file) is probably behind" in SCHEMA_FILE_BEHIND


KEY = b"k" * 32


def test_hashed_columns_hold_hmac_sha256_hex_in_both_paths_and_excluded_are_gone() -> None:
    policy = ColumnPolicy(exclude=frozenset({"party_id"}), hash=frozenset({"cid", "score"}))
    schema = with_fields(*EIGHT_MORE[:2])
    decoder = PlainAvroDecoder(schema, Contract("evolve", policy, KEY))
    decoder.contract.start(TableState(policy.initial_schema(), policy, False))
    encoder = AuditEncoder(schema)
    values: list[bytes | None] = [encoder.encode(sixteen(i)) for i in range(12)]
    batch = decoder.decode_batch(values, [None] * 12)
    assert "party_id" not in batch.rows.columns
    row = batch.rows.filter(batch.rows[INDEX] == 5).row(0, named=True)
    assert row["cid"] == hmac.new(KEY, b"C-5", hashlib.sha256).hexdigest()
    assert row["score"] == hmac.new(KEY, b"5", hashlib.sha256).hexdigest()
    single = rows_of([(5, decoder.decode(values[5], None))]).row(0, named=True)
    assert single["cid"] == row["cid"]
    assert single["score"] == row["score"]
    assert decoder.contract.table.column("score") is not None
    assert decoder.contract.table.column("score").type == "text"  # type: ignore[union-attr]


def test_a_changed_column_policy_on_a_table_with_rows_is_refused() -> None:
    before = ColumnPolicy(hash=frozenset({"cid"}))
    now = ColumnPolicy(hash=frozenset({"cid", "party_id"}))
    contract = Contract("evolve", now, KEY)
    with pytest.raises(ColumnPolicyChanged, match="full refresh"):
        contract.start(TableState(before.initial_schema(), before, True))
    with pytest.raises(ColumnPolicyChanged, match=r"hash=\[cid, party_id\]"):
        contract.start(TableState(BASE_SCHEMA, None, True))  # a table from before the policy
    contract.start(TableState(now.initial_schema(), now, True))
    Contract().start(TableState(BASE_SCHEMA, None, True))  # no policy, none recorded: fine
