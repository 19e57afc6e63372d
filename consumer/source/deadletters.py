"""The dead-letter topic: invalid events, with the original key, value and headers, plus why.

An invalid event's offset counts as processed only after its dead-letter copy is acknowledged:
the run loop calls ``flush`` before it commits offsets.

A copy must always be producible, or the same message would stop every restart: the producer is
sized from the dead-letter topic's ``max.message.bytes``, and a copy that does not fit is sent
truncated (``fit``), its headers saying so: the original value's size and sha256. A copy the
broker still refuses as too large is re-sent with its value dropped.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import TerminalError, TransientError

Header = tuple[str, str | bytes | None]

FRAMING_BYTES = 1024
"""Room left for the record batch's and the record's framing (about 61 + 20 bytes, and a few per
header): a copy of at most ``max.message.bytes`` minus this always fits."""
MIN_PRODUCER_BYTES = 1000
"""librdkafka's smallest ``message.max.bytes``."""
TRUNCATED = "kyc_sync.truncated"
ORIGINAL_SIZE = "kyc_sync.original_value_size"
ORIGINAL_SHA256 = "kyc_sync.original_value_sha256"
ORIGINAL_KEY_SIZE = "kyc_sync.original_key_size"
HEADERS_DROPPED = "kyc_sync.original_headers_dropped"


class DeadLetterError(TerminalError):
    """Dead-letter copies were refused; offsets must not be committed. Terminal."""


class DeadLetterTimeout(TransientError):
    """Dead-letter copies are not acknowledged yet (broker unreachable?); worth retrying."""


class DeadLetterSink(Protocol):
    """Where the run loop sends invalid events; ``flush`` before offsets are committed."""

    def send(self, msg: Message, error_class: str, reason: str) -> None: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


@dataclass
class CountedDeadLetters:
    """A sink that only counts, per class: a read-only pass over the topic (``verify``)
    judges invalid events as a rebuild would (they yield no row) without producing copies."""

    counts: dict[str, int] = field(default_factory=dict)

    def send(self, msg: Message, error_class: str, reason: str) -> None:
        self.counts[error_class] = self.counts.get(error_class, 0) + 1

    def flush(self, timeout_s: float | None = None) -> None:
        """Nothing to wait for."""


def producer_max_bytes(topic_max_bytes: int) -> int:
    """The dead-letter producer's ``message.max.bytes`` for a topic accepting this much."""
    return max(MIN_PRODUCER_BYTES, topic_max_bytes)


def _size(key: bytes | None, value: bytes | None, headers: list[Header]) -> int:
    return len(key or b"") + len(value or b"") + _headers_size(headers)


def _headers_size(headers: list[Header]) -> int:
    return sum(len(name.encode()) + len(_bytes(v)) for name, v in headers)


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


class Original(NamedTuple):
    """A message to dead-letter: its key, value and headers, and the kyc_sync.* headers."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]
    ours: list[Header]


@dataclass(frozen=True, slots=True)
class Copy:
    """One dead-letter record as sent."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]
    truncated: bool = False


def fit(key: bytes | None, value: bytes | None, original: list[Header], ours: list[Header],
        *, limit: int) -> Copy:
    """The dead-letter record of a message: whole when it fits in ``limit`` bytes with its
    framing; otherwise truncated to fit, with headers naming what was cut — the value's
    original size and sha256 always, then, if still too large, the original headers are dropped
    (their count noted) and the key cut (its size noted). ``ours`` (the kyc_sync.* reason
    headers) are always kept."""
    room = limit - FRAMING_BYTES
    whole = original + ours
    if _size(key, value, whole) <= room:
        return Copy(key, value, whole)
    data = value or b""
    marks: list[Header] = [
        (TRUNCATED, "true"),
        (ORIGINAL_SIZE, str(len(data))),
        (ORIGINAL_SHA256, hashlib.sha256(data).hexdigest()),
    ]
    headers = original + ours + marks
    if _size(key, None, headers) > room:
        headers = [*ours, *marks, (HEADERS_DROPPED, str(len(original)))]
    if _size(key, None, headers) > room:
        headers = [*headers, (ORIGINAL_KEY_SIZE, str(len(key or b"")))]
        key = (key or b"")[:max(0, room - _headers_size(headers))]
    left = max(0, room - _size(key, None, headers))
    return Copy(key, data[:left], headers, truncated=True)


@dataclass
class DeadLetters:
    producer: Producer
    topic: str
    max_bytes: int = 1_000_000
    """The dead-letter topic's ``max.message.bytes`` (the producer is sized to it)."""
    flush_timeout_s: float = 30.0
    sent: int = 0
    truncated: int = 0
    failed: list[str] = field(default_factory=list)
    too_large: list[Original] = field(default_factory=list)

    def send(self, msg: Message, error_class: str, reason: str) -> None:
        original = msg.headers() or []
        headers: list[Header] = (
            list(original.items()) if isinstance(original, dict) else list(original)
        )
        ours: list[Header] = [
            ("kyc_sync.error_class", error_class),
            ("kyc_sync.reason", reason[:1000]),
            ("kyc_sync.source_topic", msg.topic() or ""),
            ("kyc_sync.source_partition", str(msg.partition())),
            ("kyc_sync.source_offset", str(msg.offset())),
            ("kyc_sync.failed_at_ms", str(int(time.time() * 1000))),
        ]
        message = Original(msg.key(), msg.value(), headers, ours)
        self._produce(message, fit(*message, limit=self.max_bytes))
        self.sent += 1

    def _on_delivery(self, original: Original, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self.too_large.append(original)
        else:
            self.failed.append(str(err))

    def _produce(self, original: Original, copy: Copy) -> None:
        if copy.truncated:
            self.truncated += 1
        while True:
            try:
                self.producer.produce(
                    self.topic, key=copy.key, value=copy.value, headers=copy.headers,
                    on_delivery=partial(self._on_delivery, original),
                )
                return
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as err:
                error = err.args[0] if err.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self.too_large.append(original)  # re-sent smaller by flush()
                    return
                raise DeadLetterError(f"dead-letter produce failed: {err}") from err

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every copy to be acknowledged (at most ``flush_timeout_s``, or
        ``timeout_s`` if shorter); raise if any failed or timed out. Copies refused as too
        large are re-sent once without their value (size and sha256 in the headers)."""
        limit = self.flush_timeout_s if timeout_s is None else min(timeout_s,
                                                                   self.flush_timeout_s)
        deadline = time.monotonic() + limit
        self._wait(limit)
        if self.too_large:
            refused, self.too_large = self.too_large, []
            for original in refused:
                smaller = fit(*original, limit=MIN_PRODUCER_BYTES + FRAMING_BYTES)
                self._produce(original, Copy(smaller.key, b"", smaller.headers, truncated=True))
            self._wait(max(0.0, deadline - time.monotonic()))
            if self.too_large:
                self.too_large = []
                self.failed.append(
                    f"the dead-letter topic {self.topic!r} refuses even a copy without its value "
                    "as too large: raise its max.message.bytes")
        if self.failed:
            failures, self.failed = self.failed, []
            raise DeadLetterError(f"dead-letter delivery failed: {failures[0]}")

    def _wait(self, timeout_s: float) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeadLetterTimeout(
                f"{remaining} dead-letter message(s) not acknowledged within {timeout_s:.0f}s")
