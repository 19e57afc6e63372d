"""What the run loop reports while it works, and to whom.

The loop talks to one ``Observer``; ``Observers`` fans each hook out to several (the flush log
line, Prometheus metrics, a full refresh's collector). ``Observer`` itself records nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batcher.ranges import PartitionRange
from batcher.window import FlushReason
from warehouse.base import ApplyResult

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message


@dataclass(frozen=True, slots=True)
class FlushReport:
    """One flushed window: what it held, what the warehouse did, the offsets committed."""

    batch_id: str
    reason: FlushReason
    events: int
    invalid: int
    keys: int
    result: ApplyResult | None
    ranges: tuple[PartitionRange, ...]
    decode_s: float
    total_s: float


class Observer:
    """Hooks called by ``SyncLoop``; every method is cheap and must not raise."""

    def consumed(self, messages: list[Message], decoded: int) -> None:
        """A consume() call returned ``messages`` (some may be errors or partition-EOF
        events), ``decoded`` of them valid audit events. Do not keep the list."""

    def window_closed(self) -> None:
        """The open window was drained to be written: events consumed from now on belong to
        the next window (which may be consumed while this one is written)."""

    def dead_lettered(self, error_class: str) -> None:
        """One invalid event was sent to the dead-letter topic."""

    def buffered(self, events: int, keys: int) -> None:
        """The open window now holds ``events`` events over ``keys`` distinct keys."""

    def discarded(self, field: str, events: int) -> None:
        """``events`` events carried ``field``, which the table lacks and
        ``schema_evolution=discard`` dropped."""

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

    def polled(self) -> None:
        """A ``consume()`` call returned, in the loop or while it waits to retry: the loop is
        alive (``/healthz``)."""


class Observers(Observer):
    """Every hook, passed on to each observer in order."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)

    def consumed(self, messages: list[Message], decoded: int) -> None:
        for observer in self.observers:
            observer.consumed(messages, decoded)

    def window_closed(self) -> None:
        for observer in self.observers:
            observer.window_closed()

    def dead_lettered(self, error_class: str) -> None:
        for observer in self.observers:
            observer.dead_lettered(error_class)

    def buffered(self, events: int, keys: int) -> None:
        for observer in self.observers:
            observer.buffered(events, keys)

    def discarded(self, field: str, events: int) -> None:
        for observer in self.observers:
            observer.discarded(field, events)

    def flushed(self, report: FlushReport) -> None:
        for observer in self.observers:
            observer.flushed(report)

    def timed(self, phase: str, seconds: float) -> None:
        for observer in self.observers:
            observer.timed(phase, seconds)

    def flush_failed(self, error: BaseException) -> None:
        for observer in self.observers:
            observer.flush_failed(error)

    def assignment(self, partitions: frozenset[int]) -> None:
        for observer in self.observers:
            observer.assignment(partitions)

    def tick(self, consumer: Consumer) -> None:
        for observer in self.observers:
            observer.tick(consumer)

    def polled(self) -> None:
        for observer in self.observers:
            observer.polled()


class FlushCollector(Observer):
    """Keeps the report of every flush (a full refresh sums them up)."""

    def __init__(self) -> None:
        self.reports: list[FlushReport] = []

    def flushed(self, report: FlushReport) -> None:
        self.reports.append(report)
