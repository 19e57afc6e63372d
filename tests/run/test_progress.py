"""Which partitions the group has not read to their end (``consumer.run.progress.behind``)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer.run.progress import Behind, GroupProgress, behind, describe
from tools.localkafka import create_topic


def test_committed_at_the_end_is_done() -> None:
    assert behind({0: 10, 1: 5}, {0: 0, 1: 0}, {0: 10, 1: 5}) == []


def test_no_commit_on_a_partition_with_messages_is_behind() -> None:
    found = behind({0: 10, 1: None}, {0: 0, 1: 0}, {0: 10, 1: 7})

    assert found == [Behind(1, None, 7)]
    assert describe(found) == "1 (committed none, end 7)"


def test_empty_or_expired_partitions_need_no_commit() -> None:
    # 1 never held a message; every message of 2 was removed by retention.
    assert behind({0: 3}, {0: 0, 1: 0, 2: 40}, {0: 3, 1: 0, 2: 40}) == []


def test_a_commit_below_the_earliest_offset_reads_from_there() -> None:
    assert behind({0: 2}, {0: 40}, {0: 40}) == []
    assert behind({0: 2}, {0: 40}, {0: 41}) == [Behind(0, 2, 41)]


# --------------------------------------------------------------------------- GroupProgress


class _Recording:
    """A consumer answering the progress check's questions, recording which it was asked.
    ``unanswered``: partitions whose offsets come back as asked (no offset, no error)."""

    def __init__(self, ends: dict[int, int], committed: dict[int, int],
                 error: KafkaError | None = None, unanswered: frozenset[int] = frozenset()
                 ) -> None:
        self.ends, self.group, self.error, self.unanswered = ends, committed, error, unanswered
        self.asked: list[tuple[str, list[int]]] = []

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        meta = SimpleNamespace(partitions=dict.fromkeys(self.ends), error=None)
        return SimpleNamespace(topics={topic: meta})

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float
                          ) -> list[SimpleNamespace]:
        self.asked.append(("earliest" if tps[0].offset == -2 else "end",
                           [tp.partition for tp in tps]))
        return [SimpleNamespace(
            partition=tp.partition, error=self.error,
            offset=tp.offset if tp.partition in self.unanswered
            else 0 if tp.offset == -2 else self.ends[tp.partition])
            for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.group.get(tp.partition, -1001))
                for tp in tps]


def test_offsets_are_asked_in_one_request_per_bound_and_each_end_once() -> None:
    fake = _Recording(ends={0: 5, 1: 7, 2: 9, 3: 0}, committed={0: 5, 1: 7})
    progress = GroupProgress("t")

    assert progress.behind(cast(Consumer, fake)) == [Behind(2, None, 9)]
    fake.ends[2] = 12  # written after the first look: for the next run
    fake.group[2] = 9
    assert progress.behind(cast(Consumer, fake)) == []

    assert fake.asked == [("earliest", [0, 1, 2, 3]), ("end", [0, 1, 2, 3]),
                          ("earliest", [0, 1, 2, 3])]


def test_a_partition_the_broker_cannot_answer_for_raises() -> None:
    fake = _Recording(ends={0: 5}, committed={},
                      error=KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))

    with pytest.raises(KafkaException):
        GroupProgress("t").behind(cast(Consumer, fake))


def test_a_partition_left_without_an_offset_raises_and_sets_no_target() -> None:
    fake = _Recording(ends={0: 5, 1: 7}, committed={0: 5}, unanswered=frozenset({1}))
    progress = GroupProgress("t")

    with pytest.raises(LookupError, match=r"partition\(s\) \[1\]"):
        progress.behind(cast(Consumer, fake))
    assert progress.targets == {}


def test_progress_on_the_broker_stops_at_what_a_reader_can_read(kafka_bootstrap: str,
                                                                topic_name: str) -> None:
    """On the real broker, while this consumer long-polls its own partition at its end: the
    ends are the offsets a ``read_committed`` reader reaches, short of an open transaction."""
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in ((0, 4), (1, 6)):
        for i in range(count):
            producer.produce(topic_name, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0
    open_transaction = Producer({"bootstrap.servers": kafka_bootstrap,
                                 "transactional.id": topic_name})
    open_transaction.init_transactions(30)
    open_transaction.begin_transaction()
    for i in range(3):
        open_transaction.produce(topic_name, value=b"t%d" % i, partition=0)
    assert open_transaction.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic_name,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic_name, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            eof = [m for m in consumer.consume(100, 0.5) if m.error() is not None]
            if eof:
                break
        consumer.commit(offsets=[TopicPartition(topic_name, 0, 4)], asynchronous=False)
        progress = GroupProgress(topic_name)

        found = progress.behind(consumer)

        assert found == [Behind(1, None, 6)]  # 2 is empty: nothing to read
        assert progress.targets == {0: 4, 1: 6, 2: 0}  # 0: not the 3 uncommitted messages
        consumer.commit(offsets=[TopicPartition(topic_name, 1, 6)], asynchronous=False)
        assert progress.behind(consumer) == []
    finally:
        consumer.close()
        open_transaction.abort_transaction(30)
