"""Partition ownership: which partitions this instance owns, which it has read to their end, and
how it rewinds them or waits without leaving the consumer group."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas.errors import TerminalError


class RewindFailed(TerminalError):
    """A partition could not be rewound: continuing would skip events."""


def first_offsets(messages: Iterable[Message]) -> dict[int, int]:
    """The first offset per partition among real (non-error) messages."""
    first: dict[int, int] = {}
    for msg in messages:
        partition, offset = msg.partition(), msg.offset()
        if msg.error() is None and partition is not None and offset is not None:
            first[partition] = min(first.get(partition, offset), offset)
    return first


class Partitions:
    """The owned partitions of one consumer and the moves the loop makes on them.

    ``at_end`` holds the owned partitions read to their end (a partition-EOF event seen and
    nothing read after it); any rewind takes a partition out of it."""

    def __init__(self, topic: str, consume_batch: int) -> None:
        self.topic = topic
        self.consume_batch = consume_batch
        self.consumer: Consumer | None = None
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.in_callback = False
        """Inside a rebalance callback, i.e. inside ``consumer.consume()``."""
        self._rewinds: dict[int, int] | None = None
        """While ``wait`` runs: where each owned partition must be re-read from afterwards."""
        self.on_poll: Callable[[], None] = lambda: None
        """Called after each ``consume()`` of a wait: the loop is alive while it waits."""

    def assign(self, partitions: Iterable[int]) -> None:
        self.assigned |= set(partitions)

    def release(self, partitions: Iterable[int]) -> None:
        """Revoked or lost: no longer ours. A rewind pending for them belonged to the old
        assignment: a new one starts from the group's committed offset."""
        gone = set(partitions)
        self.assigned -= gone
        self.at_end -= gone
        if self._rewinds is not None:
            for partition in gone:
                self._rewinds.pop(partition, None)

    def reached_end(self, partition: int) -> None:
        if partition in self.assigned:
            self.at_end.add(partition)

    def unread(self, partitions: Iterable[int]) -> None:
        """These partitions have events to (re-)read: not at their end."""
        self.at_end.difference_update(partitions)

    def caught_up(self) -> bool:
        return bool(self.assigned) and self.assigned <= self.at_end

    def seek(self, offsets: dict[int, int]) -> None:
        """Re-read the owned partitions among ``offsets`` from the given offsets. During a
        ``wait`` the earliest rewind of each partition is also kept for the wait's end."""
        owned = {p: o for p, o in offsets.items() if p in self.assigned}
        self.unread(owned)
        if self._rewinds is not None:
            _keep_earliest(self._rewinds, owned)
        if self.consumer is None:
            return
        for partition, offset in sorted(owned.items()):
            try:
                self.consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as err:
                raise RewindFailed(
                    f"cannot rewind partition {partition} to {offset}: {err}"
                ) from err

    def wait(
        self, seconds: float, rewind: dict[int, int] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Wait ``seconds`` with every partition paused, polling so that the group keeps this
        member, then re-read the partitions of ``rewind`` from there.

        Messages delivered meanwhile (partitions assigned during the wait) are not processed:
        their partitions are rewound to them as well. A rebalance during the wait may rewind a
        partition further back (a dropped buffer) or hand it over; at the end each partition
        still owned is re-read from the earliest offset any of them asked for."""
        consumer = self.consumer
        if consumer is None or self.in_callback:
            # No consume() nested in the consume() that runs the rebalance callback: the client
            # cannot re-enter (it aborts the process). librdkafka heartbeats in the background,
            # and the callback is bounded by revoke_budget_s, far below max.poll.interval.ms.
            time.sleep(seconds)
            if rewind:
                self.seek(rewind)
            return
        self._rewinds = {p: o for p, o in (rewind or {}).items() if p in self.assigned}
        ended: set[int] = set()
        _pause(consumer, consumer.assignment())
        try:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not stop():
                polled = consumer.consume(self.consume_batch, min(left, 0.5))
                self.on_poll()
                ended |= _ends(polled)
                delivered = [m for m in polled if m.error() is None]
                if delivered:
                    _keep_earliest(self._rewinds, first_offsets(delivered))
                    ended -= {m.partition() for m in delivered}
                    _pause(consumer, consumer.assignment())
        finally:
            rewinds, self._rewinds = self._rewinds, None
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)
            self.seek(rewinds)
            for partition in ended - rewinds.keys():
                self.reached_end(partition)


def _keep_earliest(into: dict[int, int], offsets: dict[int, int]) -> None:
    for partition, offset in offsets.items():
        into[partition] = min(into.get(partition, offset), offset)


def _ends(messages: Iterable[Message]) -> set[int]:
    """Partitions whose end-of-partition event is among ``messages``."""
    return {
        partition for msg in messages
        if (error := msg.error()) is not None and error.code() == KafkaError._PARTITION_EOF
        and (partition := msg.partition()) is not None
    }


def _pause(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    if partitions:
        consumer.pause(partitions)
