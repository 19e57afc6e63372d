"""Columnar batch decoding (``Decoder.decode_batch``) against the one-by-one decoder, its oracle.

For every message of a batch, the batch path must give exactly what ``decode`` gives alone: the
same row for a valid event, the same error class for a bad one — whatever the neighbours are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decode.columnar import plan_for
from consumer.decode.decoder import (
    INDEX,
    SPLIT_BELOW,
    WIRE_HEADER,
    ConfluentAvroDecoder,
    PlainAvroDecoder,
    RegistryUnavailable,
)
from schemas.columns import KEY
from schemas.errors import InvalidEvent
from tests.decode.test_decoding import (
    AUDIT,
    AUDIT_ID,
    DATE,
    MILLIS,
    MILLIS_ID,
    REGISTRY,
    SAMPLES,
    T0,
    Fetcher,
    mutated,
    plain,
    record,
    variant,
    wire,
)

Outcome = tuple[Any, ...] | str
Batch = tuple[list[bytes | None], list[bytes | None]]
Decoders = PlainAvroDecoder | ConfluentAvroDecoder


def one_by_one(decoder: Decoders, value: bytes | None, key: bytes | None) -> Outcome:
    try:
        event = decoder.decode(value, key)
    except InvalidEvent as err:
        return err.error_class
    assert event.shape is not None
    row = dict(zip(event.shape.columns, event.row, strict=True))
    return (event.key, event.op_type, event.op_time, _present(row))


def _present(row: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The non-null values of a row by column name (a column of the batch that the event's
    schema lacks is null in its row)."""
    return tuple(sorted((k, v) for k, v in row.items() if v is not None))


def batched(
    decoder: Decoders, values: Sequence[bytes | None], keys: Sequence[bytes | None]
) -> tuple[list[Outcome], tuple[int, ...]]:
    """Outcome per message through ``decode_batch`` (and ``decode`` for the singles it names)."""
    result = decoder.decode_batch(values, keys)
    assert result.stop == len(values)
    assert result.error is None
    out: list[Outcome | None] = [None] * len(values)
    for row in result.rows.iter_rows(named=True):
        index = row[INDEX]
        assert out[index] is None, "a message decoded twice"
        business = {k: v for k, v in row.items() if k not in (INDEX, "op_type", "op_time")}
        out[index] = (row[KEY], row["op_type"], row["op_time"], _present(business))
    for index in result.singles:
        assert out[index] is None, "a single that also has a row"
        out[index] = one_by_one(decoder, values[index], keys[index])
    assert all(o is not None for o in out), "a message with no outcome"
    return [o for o in out if o is not None], result.singles


def assert_same_as_one_by_one(
    decoder: Decoders, values: Sequence[bytes | None], keys: Sequence[bytes | None]
) -> tuple[int, ...]:
    got, singles = batched(decoder, values, keys)
    assert got == [one_by_one(decoder, v, k) for v, k in zip(values, keys, strict=True)]
    return singles


def valid(i: int) -> dict[str, Any]:
    return record(
        kyc_profile_id=i, goldtier_id=f"GT-{i}", cid=None if i % 3 else f"C{i}",
        op_type=("INSERT", "UPDATE", "DELETE")[i % 3], op_time=T0 + i,
    )


def valid_millis(i: int) -> dict[str, Any]:
    """``valid(i)`` for the MILLIS schema: its timestamps in milliseconds."""
    return valid(i) | {"op_time": T0 // 1000 + i, "created_date": T0 // 1000}


# --------------------------------------------------------------------------- examples


def test_valid_batch_is_decoded_in_columns() -> None:
    decoder = PlainAvroDecoder(AUDIT)
    values = [plain(valid(i)) for i in range(500)]
    keys = [str(i).encode() if i % 2 else None for i in range(500)]
    assert assert_same_as_one_by_one(decoder, values, keys) == ()


def test_bad_messages_are_isolated_not_the_whole_batch() -> None:
    decoder = PlainAvroDecoder(AUDIT)
    values: list[bytes | None] = [plain(valid(i)) for i in range(1000)]
    values[10] = plain(valid(10))[:-2]  # truncated
    values[500] = (values[500] or b"") + b"\x00"  # trailing byte
    values[900] = None  # empty
    keys = [str(i).encode() for i in range(1000)]
    keys[700] = b"1"  # key mismatch
    singles = assert_same_as_one_by_one(decoder, values, keys)
    assert {10, 500, 700, 900} <= set(singles)
    assert len(singles) <= 4 * SPLIT_BELOW


def test_too_long_then_too_short_neighbours_are_not_merged() -> None:
    """One byte moved from the end of one message to the start of the next: the concatenation is
    a valid pair of records, but neither message is valid alone."""
    decoder = PlainAvroDecoder(AUDIT)
    first, second = plain(valid(1)), plain(valid(2))
    values: list[bytes | None] = [first + second[:1], second[1:]]
    values *= 8
    singles = assert_same_as_one_by_one(decoder, values, [None] * len(values))
    assert set(singles) == set(range(len(values)))


def test_non_canonical_varint_is_decoded_one_by_one() -> None:
    """A padded varint decodes to the same value with one byte more: the length check cannot
    vouch for it, so it takes the one-by-one path, which accepts it."""
    decoder = PlainAvroDecoder(AUDIT)
    body = plain(valid(42))
    assert body[0] == 84  # zigzag(42), one byte
    padded = bytes([84 | 0x80, 0]) + body[1:]
    values: list[bytes | None] = [plain(valid(i)) for i in range(20)]
    values.append(padded)
    singles = assert_same_as_one_by_one(decoder, values, [None] * len(values))
    assert 20 in singles
    assert one_by_one(decoder, padded, None) == one_by_one(decoder, body, None)


def test_other_timestamp_units_are_scaled_like_one_by_one() -> None:
    for schema, rec, singles in (
        (MILLIS, valid_millis(5), ()),
        (DATE, valid(6) | {"created_date": 19_000}, ()),
    ):
        decoder = PlainAvroDecoder(schema)
        values: list[bytes | None] = [plain(rec, schema)] * 3
        assert assert_same_as_one_by_one(decoder, values, [None] * 3) == singles


def test_schema_the_plan_cannot_size_is_decoded_one_by_one() -> None:
    schema = variant({})
    schema["fields"].append({"name": "tags", "type": {"type": "array", "items": "string"},
                             "default": []})
    decoder = PlainAvroDecoder(schema)
    assert plan_for(decoder.reader) is None
    values: list[bytes | None] = [plain(valid(1) | {"tags": ["a"]}, schema)] * 4
    assert assert_same_as_one_by_one(decoder, values, [None] * 4) == (0, 1, 2, 3)


def test_extra_fields_of_fixed_size_types_are_sized() -> None:
    schema = variant({})
    schema["fields"] += [
        {"name": "score", "type": "double"}, {"name": "flag", "type": ["null", "double"]},
        {"name": "blob", "type": "bytes"}, {"name": "ratio", "type": "float"},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
    ]
    decoder = PlainAvroDecoder(schema)
    extra = {"score": 1.5, "flag": None, "blob": b"\x00\x01", "ratio": 0.25, "fx": b"abcd"}
    values: list[bytes | None] = [plain(valid(i) | extra, schema) for i in range(10)]
    assert assert_same_as_one_by_one(decoder, values, [None] * 10) == ()


def test_confluent_mixed_schema_ids_and_unknown_id() -> None:
    decoder = ConfluentAvroDecoder(Fetcher(REGISTRY))
    values: list[bytes | None] = [
        wire(valid(1)), wire(valid_millis(2), MILLIS_ID),
        WIRE_HEADER.pack(0, 99) + plain(valid(3)), wire(valid(4)), b"\x01bad", b"\x00\x00",
    ]
    assert assert_same_as_one_by_one(decoder, values, [None] * len(values)) == (2, 4, 5)


def test_confluent_registry_down_stops_at_the_first_message_it_needs() -> None:
    fetcher = Fetcher(REGISTRY)
    decoder = ConfluentAvroDecoder(fetcher)
    decoder.decode(wire(valid(1)), None)  # schema 1 cached
    fetcher.down = True
    values: list[bytes | None] = [
        wire(valid(1)), b"", wire(valid(2), MILLIS_ID), wire(valid(3)), wire(valid(4), MILLIS_ID),
    ]
    result = decoder.decode_batch(values, [None] * len(values))
    assert result.stop == 2
    assert result.error is not None
    assert result.rows.get_column(INDEX).to_list() == [0]
    assert result.singles == (1,)


# --------------------------------------------------------------------------- property


@st.composite
def messages(draw: st.DrawFn, wire_format: bool) -> Batch:
    count = draw(st.integers(0, 40))
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for _ in range(count):
        i = draw(st.integers(0, 10**12))
        kind = draw(st.sampled_from(("valid", "valid", "valid", "mutated", "sample", "none")))
        if kind == "valid":
            rec = valid(i)
            values.append(wire(rec) if wire_format else plain(rec))
        elif kind == "mutated":
            values.append(draw(mutated()))
        elif kind == "sample":
            values.append(draw(st.sampled_from(SAMPLES)))
        else:
            values.append(draw(st.sampled_from((None, b""))))
        keys.append(draw(st.sampled_from((None, str(i).encode(), b"0" + str(i).encode(), b"x"))))
    return values, keys


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(messages(wire_format=False))
def test_plain_batches_match_one_by_one(batch: Batch) -> None:
    assert_same_as_one_by_one(PlainAvroDecoder(AUDIT), *batch)


CONFLUENT = ConfluentAvroDecoder(Fetcher(REGISTRY))


@PROPERTY
@given(messages(wire_format=True))
def test_wire_batches_match_one_by_one(batch: Batch) -> None:
    assert_same_as_one_by_one(CONFLUENT, *batch)


def test_audit_id_is_the_default_wire_schema() -> None:
    assert WIRE_HEADER.unpack_from(wire(valid(1)))[1] == AUDIT_ID


# --------------------------------------------------------------------------- lenient bytes


def test_union_branch_index_out_of_range_goes_one_by_one() -> None:
    """goldtier_id is ["null", "string"]: branch byte 4 (index 2) does not exist. The native
    reader would take it as a string; fastavro rejects the event, and so must the batch."""
    decoder = PlainAvroDecoder(AUDIT)
    body = plain(valid(1))
    assert body[1] == 2  # kyc_profile_id 1 is one byte, then goldtier_id's branch index 1
    bad = body[:1] + b"\x04" + body[2:]
    values: list[bytes | None] = [plain(valid(i)) for i in range(10)]
    values.append(bad)
    assert 10 in assert_same_as_one_by_one(decoder, values, [None] * len(values))
    assert one_by_one(decoder, bad, None) == "decode"


def test_null_last_unions_are_checked_too() -> None:
    schema = variant({"goldtier_id": ["string", "null"], "cid": ["string", "null"]})
    decoder = PlainAvroDecoder(schema)
    values: list[bytes | None] = [plain(valid(i), schema) for i in range(12)]
    assert assert_same_as_one_by_one(decoder, values, [None] * 12) == ()


def test_int_and_boolean_fields_are_decoded_in_columns_and_checked_in_place() -> None:
    """An int wider than 32 bits (fastavro reads it, the native reader wraps it) and a boolean
    byte other than 0 or 1 (fastavro reads it as true) go one by one, which decides them."""
    for extra, good, bad in (
        ({"name": "n", "type": "int"}, b"\x02", b"\x80\x80\x80\x80\x10"),
        ({"name": "b", "type": "boolean"}, b"\x01", b"\x02"),
    ):
        schema = variant({})
        schema["fields"].append(extra)
        decoder = PlainAvroDecoder(schema)
        assert plan_for(decoder.reader) is not None
        body = plain(valid(1) | {extra["name"]: 1 if extra["type"] == "int" else True}, schema)
        assert body.endswith(good)
        values: list[bytes | None] = [*([body] * 9), body[: -len(good)] + bad]
        assert assert_same_as_one_by_one(decoder, values, [None] * 10) == (9,)


def test_scaled_timestamp_beyond_int64_is_a_validation_error() -> None:
    decoder = PlainAvroDecoder(MILLIS)
    huge = plain(valid_millis(3) | {"op_time": 2**62}, MILLIS)
    values: list[bytes | None] = [plain(valid_millis(i), MILLIS) for i in range(9)]
    values.append(huge)
    assert 9 in assert_same_as_one_by_one(decoder, values, [None] * len(values))
    assert one_by_one(decoder, huge, None) == "validation"


def test_a_field_of_another_type_than_its_column_is_a_schema_error() -> None:
    schema = variant({"goldtier_id": ["null", "long"]})
    decoder = PlainAvroDecoder(schema)
    body = plain(valid(4) | {"goldtier_id": 7}, schema)
    values: list[bytes | None] = [body]
    assert assert_same_as_one_by_one(decoder, values, [None]) == (0,)
    assert one_by_one(decoder, body, None) == "schema"


def test_a_message_too_short_for_the_batch_can_still_meet_the_registry_down() -> None:
    """A 5-byte message is left to the one-by-one path, which is the first to need its schema."""
    fetcher = Fetcher(REGISTRY)
    decoder = ConfluentAvroDecoder(fetcher)
    decoder.decode(wire(valid(1)), None)
    fetcher.down = True
    result = decoder.decode_batch([wire(valid(1)), WIRE_HEADER.pack(0, MILLIS_ID)], [None, None])
    assert (result.stop, result.singles) == (2, (1,))
    try:
        decoder.decode(WIRE_HEADER.pack(0, MILLIS_ID), None)
    except RegistryUnavailable:
        pass
    else:
        raise AssertionError("the one-by-one path must report the registry")


@st.composite
def one_header_messages(draw: st.DrawFn) -> Batch:
    """Every value under the same wire-format header (the common case, decoded without a
    Python object per message), some bodies corrupt."""
    count = draw(st.integers(1, 40))
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for _ in range(count):
        i = draw(st.integers(0, 10**12))
        body = wire(valid(i))
        if draw(st.booleans()):
            body = body[:5] + draw(mutated())
        values.append(body)
        keys.append(draw(st.sampled_from((None, str(i).encode(), b"x"))))
    return values, keys


@PROPERTY
@given(one_header_messages())
def test_wire_batches_under_one_header_match_one_by_one(batch: Batch) -> None:
    assert_same_as_one_by_one(CONFLUENT, *batch)
