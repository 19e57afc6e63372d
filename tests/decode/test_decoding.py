"""Unit tests of event decoding: plain Avro and the Confluent wire format (with an in-memory
schema fetcher), every kind of bad input mapped to ``InvalidEvent``, and a fuzz test."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decode.avro import AvroSchemaError
from consumer.decode.decoder import (
    ROW_FIELDS,
    WIRE_HEADER,
    ConfluentAvroDecoder,
    Decoded,
    PlainAvroDecoder,
    RegistryUnavailable,
    UnknownSchemaId,
)
from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from schemas.columns import OP_TYPES
from schemas.errors import InvalidEvent

Schema = dict[str, Any]

T0 = 1_700_000_000_123_456  # microseconds
AUDIT: Schema = audit_schema()


def variant(changes: Mapping[str, Any], drop: tuple[str, ...] = ()) -> Schema:
    """The audit schema with some field types replaced and some fields removed."""
    schema = copy.deepcopy(AUDIT)
    fields = []
    for field in schema["fields"]:
        if field["name"] in drop:
            continue
        name = field["name"]
        fields.append({"name": name, "type": changes[name]} if name in changes else field)
    schema["fields"] = fields
    return schema


def ts(logical: str, base: str = "long") -> dict[str, str]:
    return {"type": base, "logicalType": logical}


MILLIS = variant({
    "created_date": ["null", ts("timestamp-millis")],
    "updated_date": ["null", ts("local-timestamp-millis")],
    "op_time": ts("timestamp-millis"),
})
DATE = variant({"created_date": ["null", ts("date", "int")]})
NO_OP_TIME = variant({}, drop=("op_time",))
EXTRA_ENUM = variant({
    "op_type": {
        "type": "enum", "name": "OpType", "symbols": ["INSERT", "UPDATE", "DELETE", "TRUNCATE"],
    }
})
NULLABLE = variant({
    "kyc_profile_id": ["null", "long"],
    "op_time": ["null", ts("timestamp-micros")],
})
UNRESOLVABLE = variant({"goldtier_id": "com.nowhere.Missing"})

AUDIT_ID, MILLIS_ID, NO_OP_TIME_ID, EXTRA_ENUM_ID, NULLABLE_ID, UNRESOLVABLE_ID = 1, 2, 3, 4, 5, 6
UNKNOWN_ID = 99
REGISTRY: dict[int, Schema] = {
    AUDIT_ID: AUDIT,
    MILLIS_ID: MILLIS,
    NO_OP_TIME_ID: NO_OP_TIME,
    EXTRA_ENUM_ID: EXTRA_ENUM,
    NULLABLE_ID: NULLABLE,
    UNRESOLVABLE_ID: UNRESOLVABLE,
}


class Fetcher:
    """A pure schema fetcher backed by a dict; counts calls per id."""

    def __init__(self, schemas: Mapping[int, Schema], down: bool = False) -> None:
        self.schemas = schemas
        self.down = down
        self.calls: dict[int, int] = {}

    def versions(self, schema_id: int) -> str:
        return ""

    def schema(self, schema_id: int) -> Mapping[str, Any]:
        self.calls[schema_id] = self.calls.get(schema_id, 0) + 1
        if self.down:
            raise RegistryUnavailable("registry down")
        if schema_id not in self.schemas:
            raise UnknownSchemaId(schema_id)
        return self.schemas[schema_id]


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kyc_profile_id": 42,
        "goldtier_id": "GT-1",
        "cid": None,
        "party_id": "P-9",
        "created_date": T0 - 1_000_000,
        "updated_date": None,
        "op_type": "UPDATE",
        "op_time": T0,
    }
    base.update(changes)
    return base


def plain(rec: Mapping[str, Any], schema: Schema = AUDIT) -> bytes:
    return AuditEncoder(schema).encode(rec)


def wire(rec: Mapping[str, Any], schema_id: int = AUDIT_ID) -> bytes:
    return AuditEncoder(REGISTRY[schema_id], schema_id).encode(rec)


def confluent() -> ConfluentAvroDecoder:
    return ConfluentAvroDecoder(Fetcher(REGISTRY))


# --------------------------------------------------------------------------- valid events


@pytest.mark.parametrize("op_type", sorted(OP_TYPES))
@pytest.mark.parametrize("key", [None, b"42"], ids=["no-key", "matching-key"])
def test_plain_decodes_valid_event(op_type: str, key: bytes | None) -> None:
    rec = record(op_type=op_type)
    decoded = PlainAvroDecoder(AUDIT).decode(plain(rec), key)
    assert decoded == Decoded(42, op_type, T0, tuple(rec[f] for f in ROW_FIELDS))
    assert ROW_FIELDS == (
        "kyc_profile_id", "goldtier_id", "cid", "party_id", "created_date", "updated_date",
    )


@pytest.mark.parametrize("op_type", sorted(OP_TYPES))
def test_confluent_decodes_valid_event(op_type: str) -> None:
    rec = record(op_type=op_type, cid="C-1", updated_date=T0)
    decoded = confluent().decode(wire(rec), message_key(42))
    assert decoded == Decoded(42, op_type, T0, (42, "GT-1", "C-1", "P-9", T0 - 1_000_000, T0))


def test_confluent_fetches_each_schema_once() -> None:
    fetch = Fetcher(REGISTRY)
    decoder = ConfluentAvroDecoder(fetch)
    for i in range(5):
        decoder.decode(wire(record(kyc_profile_id=i)), None)
        millis = record(kyc_profile_id=i, op_time=T0 // 1000, created_date=T0 // 1000)
        decoder.decode(wire(millis, MILLIS_ID), None)
    assert fetch.calls == {AUDIT_ID: 1, MILLIS_ID: 1}


def test_millis_writer_schema_scaled_to_micros() -> None:
    ms = T0 // 1000
    rec = record(op_time=ms, created_date=ms - 5, updated_date=ms + 7)
    expected = Decoded(42, "UPDATE", ms * 1000, (42, "GT-1", None, "P-9", (ms - 5) * 1000,
                                                 (ms + 7) * 1000))
    assert confluent().decode(wire(rec, MILLIS_ID), None) == expected
    assert PlainAvroDecoder(MILLIS).decode(plain(rec, MILLIS), None) == expected


def test_millis_null_timestamps_stay_null() -> None:
    rec = record(op_time=T0 // 1000, created_date=None, updated_date=None)
    decoded = confluent().decode(wire(rec, MILLIS_ID), None)
    assert decoded.row[4:] == (None, None)
    assert decoded.op_time == (T0 // 1000) * 1000


def test_date_writer_schema_scaled_to_micros() -> None:
    days = 19_675  # 2023-11-14
    decoded = PlainAvroDecoder(DATE).decode(plain(record(created_date=days), DATE), None)
    assert decoded.row[4] == days * 86_400_000_000


def test_timestamps_are_plain_ints() -> None:
    decoded = PlainAvroDecoder(AUDIT).decode(plain(record(updated_date=T0)), None)
    assert type(decoded.op_time) is int
    assert all(type(v) is int for v in decoded.row[4:])


def test_extra_enum_symbol_schema_accepts_known_symbols() -> None:
    decoded = confluent().decode(wire(record(op_type="DELETE"), EXTRA_ENUM_ID), None)
    assert decoded.op_type == "DELETE"


# --------------------------------------------------------------------------- invalid events

VALID_PLAIN = plain(record())
VALID_WIRE = wire(record())

Case = Callable[[], tuple[PlainAvroDecoder | ConfluentAvroDecoder, bytes | None, bytes | None]]


def _plain(value: bytes | None, key: bytes | None = None) -> Case:
    return lambda: (PlainAvroDecoder(AUDIT), value, key)


def _wire(value: bytes | None, key: bytes | None = None) -> Case:
    return lambda: (confluent(), value, key)


INVALID_CASES = [
    # bytes that are not an audit record
    pytest.param(_plain(b"\xff" * 11), "decode", id="plain-random-bytes"),
    pytest.param(_plain(bytes(range(250, 256)) * 4), "decode", id="plain-random-bytes-2"),
    pytest.param(_wire(WIRE_HEADER.pack(0, AUDIT_ID) + b"\xff" * 11), "decode",
                 id="wire-random-body"),
    pytest.param(_plain(VALID_PLAIN[:-1]), "decode", id="plain-truncated-last-byte"),
    pytest.param(_plain(VALID_PLAIN[: len(VALID_PLAIN) // 2]), "decode", id="plain-truncated-half"),
    pytest.param(_plain(VALID_PLAIN[:1]), "decode", id="plain-truncated-to-id"),
    pytest.param(_wire(VALID_WIRE[:-1]), "decode", id="wire-truncated-last-byte"),
    pytest.param(_wire(VALID_WIRE[: WIRE_HEADER.size]), "decode", id="wire-header-only"),
    pytest.param(_plain(VALID_PLAIN + b"\x00"), "decode", id="plain-trailing-byte"),
    pytest.param(_wire(VALID_WIRE + b"junk"), "decode", id="wire-trailing-bytes"),
    pytest.param(_plain(b""), "decode", id="plain-empty-value"),
    pytest.param(_plain(None), "decode", id="plain-null-value"),
    pytest.param(_wire(b""), "decode", id="wire-empty-value"),
    pytest.param(_wire(None), "decode", id="wire-null-value"),
    # wire format
    pytest.param(_wire(b"\x01" + VALID_WIRE[1:]), "wire_format", id="wire-magic-1"),
    pytest.param(_wire(b"\xff" + VALID_WIRE[1:]), "wire_format", id="wire-magic-ff"),
    pytest.param(_wire(VALID_PLAIN), "wire_format", id="wire-given-plain-avro"),
    pytest.param(_wire(b"\x00\x00\x00"), "wire_format", id="wire-short-header"),
    # writer schemas
    pytest.param(_wire(WIRE_HEADER.pack(0, UNKNOWN_ID) + VALID_PLAIN), "schema",
                 id="unknown-schema-id"),
    pytest.param(_wire(wire({k: v for k, v in record().items() if k != "op_time"},
                            NO_OP_TIME_ID)), "schema", id="schema-lacks-op-time"),
    pytest.param(_wire(WIRE_HEADER.pack(0, UNRESOLVABLE_ID) + VALID_PLAIN), "schema",
                 id="schema-unparseable"),
    # values
    pytest.param(_wire(wire(record(op_type="TRUNCATE"), EXTRA_ENUM_ID)), "validation",
                 id="op-type-not-insert-update-delete"),
    pytest.param(_wire(wire(record(kyc_profile_id=None), NULLABLE_ID)), "validation",
                 id="null-kyc-profile-id"),
    pytest.param(_wire(wire(record(op_time=None), NULLABLE_ID)), "validation",
                 id="null-op-time"),
    # message keys
    pytest.param(_plain(VALID_PLAIN, b"43"), "key_mismatch", id="plain-key-disagrees"),
    pytest.param(_wire(VALID_WIRE, b"4200"), "key_mismatch", id="wire-key-disagrees"),
    pytest.param(_plain(VALID_PLAIN, b"abc"), "key_mismatch", id="key-not-a-number"),
    pytest.param(_plain(VALID_PLAIN, b""), "key_mismatch", id="key-empty"),
    pytest.param(_plain(VALID_PLAIN, b"4.2e1"), "key_mismatch", id="key-float"),
    pytest.param(_plain(VALID_PLAIN, b"0x2a"), "key_mismatch", id="key-hex"),
    pytest.param(_plain(VALID_PLAIN, "٤٢".encode()), "key_mismatch", id="key-non-ascii-digits"),
    pytest.param(_plain(VALID_PLAIN, b"\xff\xfe"), "key_mismatch", id="key-binary"),
]


@pytest.mark.parametrize(("case", "error_class"), INVALID_CASES)
def test_invalid_event(case: Case, error_class: str) -> None:
    decoder, value, key = case()
    with pytest.raises(InvalidEvent) as caught:
        decoder.decode(value, key)
    assert caught.value.error_class == error_class
    assert caught.value.reason
    assert str(caught.value).startswith(f"{error_class}: ")


def test_rejected_schema_is_remembered() -> None:
    fetch = Fetcher(REGISTRY)
    decoder = ConfluentAvroDecoder(fetch)
    value = wire({k: v for k, v in record().items() if k != "op_time"}, NO_OP_TIME_ID)
    for _ in range(3):
        with pytest.raises(InvalidEvent, match="lacks field"):
            decoder.decode(value, None)
    assert fetch.calls == {NO_OP_TIME_ID: 1}


def test_unknown_schema_id_is_asked_again() -> None:
    # The id may be registered later: not cached as rejected.
    schemas: dict[int, Schema] = {}
    fetch = Fetcher(schemas)
    decoder = ConfluentAvroDecoder(fetch)
    with pytest.raises(InvalidEvent, match=f"unknown schema id {AUDIT_ID}"):
        decoder.decode(VALID_WIRE, None)
    schemas[AUDIT_ID] = AUDIT
    assert decoder.decode(VALID_WIRE, None).key == 42
    assert fetch.calls == {AUDIT_ID: 2}


def test_registry_unavailable_propagates_and_is_retried() -> None:
    fetch = Fetcher(REGISTRY, down=True)
    decoder = ConfluentAvroDecoder(fetch)
    with pytest.raises(RegistryUnavailable):
        decoder.decode(VALID_WIRE, None)
    assert not decoder.shapes
    assert not decoder.rejected
    fetch.down = False
    assert decoder.decode(VALID_WIRE, None).key == 42
    assert fetch.calls == {AUDIT_ID: 2}


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(NO_OP_TIME, id="lacks-op-time"),
        pytest.param(variant({}, drop=("kyc_profile_id",)), id="lacks-key"),
        pytest.param(variant({}, drop=("op_type",)), id="lacks-op-type"),
        pytest.param({"type": "string"}, id="not-a-record"),
        pytest.param(UNRESOLVABLE, id="unparseable"),
    ],
)
def test_plain_decoder_refuses_unusable_schema(schema: Schema) -> None:
    with pytest.raises(AvroSchemaError):
        PlainAvroDecoder(schema)


# --------------------------------------------------------------------------- fuzz

SAMPLES: list[bytes] = [
    encoded
    for rec in (
        record(),
        record(op_type="DELETE", goldtier_id=None, party_id=None, created_date=None),
        record(op_type="INSERT", kyc_profile_id=2**62, cid="x" * 40, updated_date=T0),
    )
    for encoded in (plain(rec), wire(rec))
] + [
    wire(record(op_time=T0 // 1000), MILLIS_ID),
    wire(record(op_type="TRUNCATE"), EXTRA_ENUM_ID),
    wire(record(kyc_profile_id=None), NULLABLE_ID),
]

keys = st.one_of(st.none(), st.just(b"42"), st.binary(max_size=8))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "append")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


random_values = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda schema_id, body: WIRE_HEADER.pack(0, schema_id) + body,
        st.integers(0, 8),
        st.binary(max_size=64),
    ),
)


ERROR_CLASSES = frozenset({"decode", "wire_format", "schema", "validation", "key_mismatch"})

# Shared across examples, as in the consumer: the Confluent decoder keeps its schema caches.
FUZZ_DECODERS = (PlainAvroDecoder(AUDIT), ConfluentAvroDecoder(Fetcher(REGISTRY)))


def outcome(decoder: PlainAvroDecoder | ConfluentAvroDecoder, value: bytes,
            key: bytes | None) -> Decoded | str:
    """The decoded event or the error class; any other exception propagates (a failure)."""
    try:
        return decoder.decode(value, key)
    except InvalidEvent as err:
        return err.error_class


def assert_decodes_or_invalid(value: bytes, key: bytes | None) -> None:
    for decoder in FUZZ_DECODERS:
        result = outcome(decoder, value, key)
        if isinstance(result, str):
            assert result in ERROR_CLASSES
            continue
        assert type(result.key) is int
        assert result.op_type in OP_TYPES
        assert type(result.op_time) is int
        assert len(result.row) == len(ROW_FIELDS)
        assert result.row[0] == result.key


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(random_values, keys)
def test_fuzz_random_bytes(value: bytes, key: bytes | None) -> None:
    assert_decodes_or_invalid(value, key)


@FUZZ
@given(mutated(), keys)
def test_fuzz_mutated_encodings(value: bytes, key: bytes | None) -> None:
    assert_decodes_or_invalid(value, key)
