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
from collections.abc import Callable, Collection, Mapping
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

    def behind(self, consumer: Consumer, owned: Collection[int] = ()) -> list[Behind]:
        """The partitions not read to their target; raises ``KafkaException`` when the broker
        does not answer (the caller asks again later). ``owned``: the partitions this
        instance reads, whose watermarks its own fetches keep."""
        meta = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise LookupError(f"no metadata for topic {self.topic!r}")
        partitions = sorted(meta.partitions)
        marks = self._watermarks(consumer, partitions, owned)
        for partition in partitions:
            self.targets.setdefault(partition, marks[partition][1])
        answer = consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=self.timeout_s)
        committed = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer}
        if any((c or 0) > (self.committed.get(p) or 0) for p, c in committed.items()):
            self.moved_at = self.clock()
        self.committed = committed
        low = {p: mark[0] for p, mark in marks.items()}
        return behind(committed, low, self.targets)

    def _watermarks(
        self, consumer: Consumer, partitions: list[int], owned: Collection[int]
    ) -> dict[int, tuple[int, int]]:
        """(earliest, end) of each partition. Those this instance reads come from its fetches;
        the others are asked in one request per bound for all of them: each request waits
        behind the consumer's own long-polling fetch on the broker connection (up to
        ``fetch.wait.max.ms``), so one request per partition made this check take seconds."""
        marks: dict[int, tuple[int, int]] = {}
        for partition in set(owned) & set(partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True)
            if low >= 0 and high >= 0:
                marks[partition] = (int(low), int(high))
        asked = [p for p in partitions if p not in marks]
        if asked:
            lows = self._offsets(consumer, asked, OFFSET_BEGINNING)
            highs = self._offsets(consumer, asked, OFFSET_END)
            marks.update((p, (lows[p], highs[p])) for p in asked)
        return marks

    def _offsets(self, consumer: Consumer, partitions: list[int], bound: int) -> dict[int, int]:
        """The earliest (``OFFSET_BEGINNING``) or end (``OFFSET_END``) offset of each
        partition, in one ListOffsets round trip per leader."""
        answer = consumer.offsets_for_times(
            [TopicPartition(self.topic, p, bound) for p in partitions], timeout=self.timeout_s)
        found: dict[int, int] = {}
        for tp in answer:
            if tp.error is not None:
                raise KafkaException(tp.error)
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
