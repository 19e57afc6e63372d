"""Whether the consumer group has caught up with the topic, for ``run --until-caught-up``.

Reading this instance's own partitions to their end is not enough: other members (or a killed
one the coordinator still counts until ``session.timeout.ms``) may hold the others, and a batch
job that exits 0 then leaves whole partitions unread. Caught up means: the group's committed
offset of every partition of the topic has reached the end that partition had when this
instance first read its own partitions to their end (the *targets*; events written later are
for the next run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition


@dataclass(frozen=True, slots=True)
class Behind:
    """A partition whose committed offset has not reached its target yet."""

    partition: int
    committed: int | None
    target: int

    def describe(self) -> str:
        done = "none" if self.committed is None else str(self.committed)
        return f"{self.partition} (committed {done}, end {self.target})"


def behind(
    committed: Mapping[int, int | None], low: Mapping[int, int], targets: Mapping[int, int]
) -> list[Behind]:
    """The partitions of ``targets`` the group has not read to their target. Without a
    committed offset (or one below the earliest kept), the group reads from the earliest
    offset ``low``: an empty partition, or one whose every message retention removed, is done."""
    found = []
    for partition, target in sorted(targets.items()):
        done = committed.get(partition)
        position = low.get(partition, 0) if done is None or done < low.get(partition, 0) else done
        if position < target:
            found.append(Behind(partition, done, target))
    return found


def describe(partitions: list[Behind]) -> str:
    return ", ".join(p.describe() for p in partitions)


class GroupProgress:
    """Asks the broker, through the loop's consumer, how far the group is: the topic's
    partitions, the group's committed offsets, the watermarks. Keeps the targets (the first
    high watermark read per partition) and when the group last moved forward."""

    def __init__(self, topic: str, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.clock = clock
        self.targets: dict[int, int] = {}
        self.committed: dict[int, int | None] = {}
        self.moved_at = clock()
        """When the group was last seen moving forward (or waiting started)."""

    def behind(self, consumer: Consumer) -> list[Behind]:
        """The partitions not read to their target; raises ``KafkaException`` or
        ``LookupError`` when the broker does not answer (the caller asks again later).

        Offsets are asked for all partitions at once, one request per bound: each request waits
        behind the consumer's own long-polling fetch on the broker connection (up to
        ``fetch.wait.max.ms``), so a request per partition made this check take seconds. The
        broker answers them at the consumer's isolation level, as far as it can read (the last
        stable offset under ``read_committed``), not from the high watermarks its fetches
        cache."""
        meta = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise LookupError(f"no metadata for topic {self.topic!r}")
        partitions = sorted(meta.partitions)
        low = self._offsets(consumer, partitions, OFFSET_BEGINNING)
        new = [p for p in partitions if p not in self.targets]
        if new:  # a target is the end first seen: asked once per partition
            self.targets.update(self._offsets(consumer, new, OFFSET_END))
        answer = consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=self.timeout_s)
        committed = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer}
        if any((c or 0) > (self.committed.get(p) or 0) for p, c in committed.items()):
            self.moved_at = self.clock()
        self.committed = committed
        return behind(committed, low, self.targets)

    def _offsets(self, consumer: Consumer, partitions: list[int], bound: int) -> dict[int, int]:
        """The earliest (``OFFSET_BEGINNING``) or end (``OFFSET_END``) offset of each
        partition, in one ListOffsets round trip per leader. A partition the answer leaves
        without an offset (still the bound asked) raises ``LookupError``."""
        answer = consumer.offsets_for_times(
            [TopicPartition(self.topic, p, bound) for p in partitions], timeout=self.timeout_s)
        found: dict[int, int] = {}
        for tp in answer:
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset >= 0:
                found[tp.partition] = int(tp.offset)
        missing = set(partitions) - set(found)
        if missing:
            raise LookupError(f"no offsets for partition(s) {sorted(missing)} of {self.topic!r}")
        return found

    def stalled_s(self) -> float:
        """Seconds since the group last moved forward."""
        return self.clock() - self.moved_at

    def restart_wait(self) -> None:
        """This instance has work again: the wait for the others starts over."""
        self.moved_at = self.clock()
