"""What the run loop reports while it works. Metrics (Prometheus) implement this interface;
``Observer`` itself records nothing and is what the loop uses when metrics are off."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from consumer.run.loop import FlushReport


class Observer:
    """Hooks called by ``SyncLoop``; every method is cheap and must not raise."""

    def consumed(self, messages: list[Message], decoded: int) -> None:
        """A consume() call returned ``messages`` (some may be errors or partition-EOF
        events), ``decoded`` of them valid audit events. Do not keep the list."""

    def dead_lettered(self, error_class: str) -> None:
        """One invalid event was sent to the dead-letter topic."""

    def buffered(self, events: int, keys: int) -> None:
        """The open window now holds ``events`` events over ``keys`` distinct keys."""

    def flushed(self, report: FlushReport) -> None:
        """A batch was applied and its offsets committed."""

    def timed(self, phase: str, seconds: float) -> None:
        """One phase of a flush took ``seconds``. The loop reports "reduce" (draining the
        reducer) and "commit" (the Kafka offset commit); decode and write times arrive with
        ``flushed`` (``FlushReport.decode_s``, ``ApplyResult.write_s``)."""

    def flush_failed(self, error: BaseException) -> None:
        """A flush failed; nothing of it was committed."""

    def assignment(self, partitions: frozenset[int]) -> None:
        """The set of partitions this instance owns changed."""

    def tick(self, consumer: Consumer) -> None:
        """Called once per loop iteration; may query the consumer (watermarks) when due."""
