"""Dead-letter copies always fit the dead-letter topic: ``fit`` truncates what does not, its
headers saying so; copies the broker still refuses as too large are re-sent without their
value. The producer here is in memory; tests/integration/test_reliability.py sends the same
copies to a real broker."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer
from hypothesis import given
from hypothesis import strategies as st

from consumer.source.deadletters import (
    FRAMING_BYTES,
    HEADERS_DROPPED,
    ORIGINAL_KEY_SIZE,
    ORIGINAL_SHA256,
    ORIGINAL_SIZE,
    TRUNCATED,
    DeadLetters,
    Header,
    fit,
)

OURS: list[Header] = [("kyc_sync.error_class", "decode"), ("kyc_sync.reason", "bad bytes")]


def size(key: bytes | None, value: bytes | None, headers: list[Header]) -> int:
    def raw(v: str | bytes | None) -> bytes:
        return b"" if v is None else v.encode() if isinstance(v, str) else v

    return (len(key or b"") + len(value or b"")
            + sum(len(name.encode()) + len(raw(v)) for name, v in headers))


def test_a_copy_that_fits_is_whole() -> None:
    copy = fit(b"7", b"x" * 100, [("trace", b"1")], OURS, limit=10_000)

    assert (copy.key, copy.value, copy.truncated) == (b"7", b"x" * 100, False)
    assert copy.headers == [("trace", b"1"), *OURS]


def test_a_value_too_large_is_cut_and_described() -> None:
    value = bytes(range(256)) * 4100  # 1,049,600 bytes

    copy = fit(b"7", value, [], OURS, limit=1_048_588)

    assert copy.truncated
    headers = dict(copy.headers)
    assert headers[TRUNCATED] == "true"
    assert headers[ORIGINAL_SIZE] == str(len(value))
    assert headers[ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest()
    assert value.startswith(copy.value or b"")
    assert size(copy.key, copy.value, copy.headers) == 1_048_588 - FRAMING_BYTES


@given(
    key=st.one_of(st.none(), st.binary(max_size=3000)),
    value=st.one_of(st.none(), st.binary(max_size=6000)),
    original=st.lists(st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=800)),
                      max_size=5),
    limit=st.integers(min_value=2000, max_value=9000),
)
def test_every_copy_fits_and_keeps_the_reason(
    key: bytes | None, value: bytes | None, original: list[tuple[str, bytes]], limit: int
) -> None:
    headers = cast("list[Header]", original)

    copy = fit(key, value, headers, OURS, limit=limit)

    assert size(copy.key, copy.value, copy.headers) <= limit - FRAMING_BYTES
    assert all(h in copy.headers for h in OURS)
    if not copy.truncated:
        assert (copy.key, copy.value, copy.headers) == (key, value, [*headers, *OURS])
        return
    found = dict(copy.headers)
    assert found[ORIGINAL_SIZE] == str(len(value or b""))
    assert found[ORIGINAL_SHA256] == hashlib.sha256(value or b"").hexdigest()
    assert (value or b"").startswith(copy.value or b"")
    if HEADERS_DROPPED in found:
        assert found[HEADERS_DROPPED] == str(len(headers))
    if ORIGINAL_KEY_SIZE in found:
        assert (key or b"").startswith(copy.key or b"")


class SizeLimitedProducer:
    """Acknowledges copies of at most ``accepts`` value bytes, refuses larger ones as the
    broker does (MSG_SIZE_TOO_LARGE in the delivery report)."""

    def __init__(self, accepts: int) -> None:
        self.accepts = accepts
        self.pending: list[tuple[Any, dict[str, Any]]] = []
        self.delivered: list[dict[str, Any]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                headers: Any = None, on_delivery: Any = None) -> None:
        self.pending.append((on_delivery, {"key": key, "value": value, "headers": headers}))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        pending, self.pending = self.pending, []
        for on_delivery, record in pending:
            if len(record["value"] or b"") > self.accepts:
                on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.delivered.append(record)
                on_delivery(None, None)
        return 0


class Msg:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def headers(self) -> None:
        return None

    def key(self) -> bytes:
        return b"7"

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "audit"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 42


def test_a_copy_the_broker_refuses_as_too_large_is_sent_without_its_value() -> None:
    producer = SizeLimitedProducer(accepts=10)
    letters = DeadLetters(cast("Producer", producer), "audit.dlq", max_bytes=1_000_000)
    value = b"v" * 5000

    letters.send(cast("Message", Msg(value)), "decode", "bad bytes")
    letters.flush()

    [record] = producer.delivered
    headers = dict(record["headers"])
    assert record["value"] == b""
    assert headers[ORIGINAL_SIZE] == "5000"
    assert headers[ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest()
    assert headers["kyc_sync.source_offset"] == "42"
