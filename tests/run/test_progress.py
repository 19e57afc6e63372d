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
    """A consumer answering the progress check's questions, recording which it was asked."""

    def __init__(self, ends: dict[int, int], committed: dict[int, int], cached: dict[int, int],
                 error: KafkaError | None = None) -> None:
        self.ends, self.group, self.cached, self.error = ends, committed, cached, error
        self.asked: list[tuple[str, list[int]]] = []

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        meta = SimpleNamespace(partitions=dict.fromkeys(self.ends), error=None)
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        assert cached, "a partition's watermarks are never asked one by one"
        return (0, self.cached[tp.partition]) if tp.partition in self.cached else (-1001, -1001)

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float
                          ) -> list[SimpleNamespace]:
        self.asked.append(("earliest" if tps[0].offset == -2 else "end",
                           [tp.partition for tp in tps]))
        return [SimpleNamespace(partition=tp.partition, error=self.error,
                                offset=0 if tp.offset == -2 else self.ends[tp.partition])
                for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.group.get(tp.partition, -1001))
                for tp in tps]


def test_owned_partitions_use_their_fetched_watermarks_the_rest_one_request_per_bound() -> None:
    fake = _Recording(ends={0: 5, 1: 7, 2: 9, 3: 0}, committed={0: 5, 1: 7}, cached={0: 5, 1: 7})

    found = GroupProgress("t").behind(cast(Consumer, fake), owned={0, 1})

    assert found == [Behind(2, None, 9)]
    assert fake.asked == [("earliest", [2, 3]), ("end", [2, 3])]


def test_an_owned_partition_without_fetched_watermarks_is_asked() -> None:
    fake = _Recording(ends={0: 5, 1: 7}, committed={0: 5, 1: 7}, cached={0: 5})

    assert GroupProgress("t").behind(cast(Consumer, fake), owned={0, 1}) == []
    assert fake.asked == [("earliest", [1]), ("end", [1])]


def test_a_partition_the_broker_cannot_answer_for_raises() -> None:
    fake = _Recording(ends={0: 5}, committed={}, cached={},
                      error=KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))

    with pytest.raises(KafkaException):
        GroupProgress("t").behind(cast(Consumer, fake))


def test_progress_on_the_broker_matches_its_watermarks(kafka_bootstrap: str,
                                                       topic_name: str) -> None:
    """On the real broker: ends asked in one request per bound are the partitions' watermarks,
    while this consumer long-polls its own partition at its end."""
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in ((0, 4), (1, 6)):
        for i in range(count):
            producer.produce(topic_name, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0
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

        found = progress.behind(consumer, owned={0})

        assert found == [Behind(1, None, 6)]  # 2 is empty: nothing to read
        assert progress.targets == {0: 4, 1: 6, 2: 0}
        consumer.commit(offsets=[TopicPartition(topic_name, 1, 6)], asynchronous=False)
        assert progress.behind(consumer, owned={0}) == []
    finally:
        consumer.close()
