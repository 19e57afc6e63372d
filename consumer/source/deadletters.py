"""The dead-letter topic: invalid events, with the original key, value and headers, plus why.

An invalid event's offset counts as processed only after its dead-letter copy is acknowledged:
the run loop calls ``flush`` before it commits offsets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.errors import TerminalError, TransientError


class DeadLetterError(TerminalError):
    """Dead-letter copies were refused; offsets must not be committed. Terminal."""


class DeadLetterTimeout(TransientError):
    """Dead-letter copies are not acknowledged yet (broker unreachable?); worth retrying."""


class DeadLetterSink(Protocol):
    """Where the run loop sends invalid events; ``flush`` before offsets are committed."""

    def send(self, msg: Message, error_class: str, reason: str) -> None: ...

    def flush(self) -> None: ...


@dataclass
class CountedDeadLetters:
    """A sink that only counts, per class: a read-only pass over the topic (``verify``)
    judges invalid events as a rebuild would (they yield no row) without producing copies."""

    counts: dict[str, int] = field(default_factory=dict)

    def send(self, msg: Message, error_class: str, reason: str) -> None:
        self.counts[error_class] = self.counts.get(error_class, 0) + 1

    def flush(self) -> None:
        """Nothing to wait for."""


@dataclass
class DeadLetters:
    producer: Producer
    topic: str
    flush_timeout_s: float = 30.0
    sent: int = 0
    failed: list[str] = field(default_factory=list)

    def send(self, msg: Message, error_class: str, reason: str) -> None:
        original = msg.headers() or []
        headers: list[tuple[str, str | bytes | None]] = (
            list(original.items()) if isinstance(original, dict) else list(original)
        )
        headers += [
            ("kyc_sync.error_class", error_class),
            ("kyc_sync.reason", reason[:1000]),
            ("kyc_sync.source_topic", msg.topic() or ""),
            ("kyc_sync.source_partition", str(msg.partition())),
            ("kyc_sync.source_offset", str(msg.offset())),
            ("kyc_sync.failed_at_ms", str(int(time.time() * 1000))),
        ]
        self._produce(msg.key(), msg.value(), headers)
        self.sent += 1

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def _produce(self, key: bytes | None, value: bytes | None, headers: Any) -> None:
        while True:
            try:
                self.producer.produce(
                    self.topic, key=key, value=value, headers=headers,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as err:
                raise DeadLetterError(f"dead-letter produce failed: {err}") from err

    def flush(self) -> None:
        """Wait for every copy to be acknowledged; raise if any failed or timed out."""
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining:
            raise DeadLetterTimeout(
                f"{remaining} dead-letter message(s) not acknowledged within "
                f"{self.flush_timeout_s:.0f}s"
            )
        if self.failed:
            failures, self.failed = self.failed, []
            raise DeadLetterError(f"dead-letter delivery failed: {failures[0]}")
