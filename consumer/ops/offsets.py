"""The Kafka side of the operations commands: a group's members and committed offsets, the
partitions' watermarks, offsets for times, the timestamp of the message at an offset, and moving
a group's offsets.

Nothing here joins the consumer group: reads use the admin API or a probe consumer that only
``assign()``s, under its own group id, and never commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from consumer.settings import KafkaSettings
from consumer.source.client import common_config, consumer_config
from consumer.source.topics import partition_count
from schemas.errors import TerminalError

log = logging.getLogger("kyc_sync.offsets")

IDLE_STATES = frozenset({ConsumerGroupState.EMPTY.name, ConsumerGroupState.DEAD.name})
"""Group states in which no member holds partitions: offsets may be moved."""


class OffsetsError(TerminalError):
    """Kafka could not answer (topic missing, broker unreachable, request failed)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a consumer group, as ``kafka-consumer-groups --describe --members``
    shows it: its member (consumer) id, client id, host and the partitions of the topic
    assigned to it."""

    consumer_id: str
    client_id: str
    host: str
    partitions: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"consumer_id": self.consumer_id, "client_id": self.client_id,
                "host": self.host, "partitions": list(self.partitions)}


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What the group coordinator says about a consumer group."""

    group: str
    state: str
    members: tuple[str, ...] = ()
    details: tuple[Member, ...] = ()
    """The members with their ids and assignments (``members`` is ``client@host`` of each)."""

    @property
    def active(self) -> bool:
        return bool(self.members) or self.state not in IDLE_STATES

    def summary(self) -> str:
        who = ", ".join(self.members) if self.members else "none listed"
        return f"{len(self.members)} active member(s) (state {self.state}): {who}"


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition as Kafka sees it: ``low``, the earliest offset still in the log; ``high``,
    the log-end offset; and a group's committed offset (None: none yet, or not asked)."""

    partition: int
    committed: int | None
    low: int
    high: int

    @property
    def position(self) -> int:
        """Where the group would read next: the committed offset, or the earliest offset when
        there is none or retention removed it (kyc-sync uses ``auto.offset.reset=earliest``)."""
        if self.committed is None or self.committed < self.low:
            return self.low
        return min(self.committed, self.high)

    @property
    def lag(self) -> int:
        """Messages between the group's position and the end of the log."""
        return self.high - self.position


class KafkaSide(Protocol):
    """What the operations commands ask Kafka; ``KafkaOffsets`` is the real one."""

    topic: str

    def partitions(self) -> tuple[int, ...]: ...

    def watermarks(self, partitions: Iterable[int]) -> dict[int, PartitionOffsets]:
        """The partitions' low and high offsets (``committed`` None)."""
        ...

    def offsets_for_time(
        self, partitions: Iterable[int], timestamp_ms: int
    ) -> dict[int, int | None]: ...

    def committed(self, group: str, partitions: Iterable[int]) -> dict[int, int | None]: ...

    def describe_group(self, group: str) -> GroupInfo: ...

    def alter_offsets(self, group: str, offsets: Mapping[int, int]) -> None: ...

    def timestamps_at(self, offsets: Mapping[int, int]) -> dict[int, int | None]: ...

    def close(self) -> None: ...


RETRIABLE_CODES = frozenset({
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
})


def _retriable(err: KafkaException) -> bool:
    error = err.args[0] if err.args else None
    return isinstance(error, KafkaError) and (
        error.retriable() or error.code() in RETRIABLE_CODES
    )


def _admin_call(
    submit: Callable[[], dict[str, Future[Any]]], key: str, timeout_s: float, what: str
) -> Any:
    """Submit an admin request and wait for ``key``'s answer, re-submitting it while the broker
    answers with a retriable error (a coordinator still loading) for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while True:
        try:
            return submit()[key].result(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as err:
            if not _retriable(err) or time.monotonic() + pause > deadline:
                raise OffsetsError(f"{what}: {err.args[0] if err.args else err}") from None
        except TimeoutError:
            raise OffsetsError(f"{what}: no answer within {timeout_s:.0f}s") from None
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


class KafkaOffsets:
    """``KafkaSide`` on a real cluster, for one topic."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float | None = None) -> None:
        self.kafka = kafka
        self.topic = kafka.topic
        self.timeout_s = kafka.request_timeout_s if timeout_s is None else timeout_s
        self.admin = AdminClient(common_config(kafka))
        self._probe: Consumer | None = None

    @property
    def probe(self) -> Consumer:
        """A consumer that only assigns partitions; its group id is never joined or committed."""
        if self._probe is None:
            config = consumer_config(self.kafka)
            config.update({
                "group.id": f"{self.kafka.group_id}.probe",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            })
            self._probe = Consumer(config)
        return self._probe

    def _tps(self, partitions: Iterable[int], offset: int | None = None) -> list[TopicPartition]:
        if offset is None:
            return [TopicPartition(self.topic, p) for p in partitions]
        return [TopicPartition(self.topic, p, offset) for p in partitions]

    def partitions(self) -> tuple[int, ...]:
        try:
            count = partition_count(self.admin, self.topic, self.timeout_s)
        except KafkaException as err:
            raise OffsetsError(f"metadata of topic {self.topic!r}: {err}") from None
        if count is None:
            raise OffsetsError(f"topic {self.topic!r} does not exist")
        return tuple(range(count))

    def watermarks(self, partitions: Iterable[int]) -> dict[int, PartitionOffsets]:
        found: dict[int, PartitionOffsets] = {}
        for tp in self._tps(partitions):
            try:
                low, high = self.probe.get_watermark_offsets(tp, timeout=self.timeout_s)
            except KafkaException as err:
                raise OffsetsError(f"watermarks of {self.topic}[{tp.partition}]: {err}") from None
            found[tp.partition] = PartitionOffsets(tp.partition, None, int(low), int(high))
        return found

    def offsets_for_time(
        self, partitions: Iterable[int], timestamp_ms: int
    ) -> dict[int, int | None]:
        """Per partition, the earliest offset whose timestamp is >= ``timestamp_ms``; None when
        every message is older (Kafka answers -1)."""
        try:
            found = self.probe.offsets_for_times(
                self._tps(partitions, timestamp_ms), timeout=self.timeout_s
            )
        except KafkaException as err:
            raise OffsetsError(f"offsets for times of {self.topic}: {err}") from None
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def committed(self, group: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The group's committed offsets; None where it has none."""
        request = ConsumerGroupTopicPartitions(group, self._tps(partitions))
        answer = _admin_call(
            lambda: self.admin.list_consumer_group_offsets(
                [request], request_timeout=self.timeout_s),
            group, self.timeout_s, f"committed offsets of group {group!r}",
        )
        return {
            tp.partition: (tp.offset if tp.offset >= 0 else None)
            for tp in answer.topic_partitions
        }

    def describe_group(self, group: str) -> GroupInfo:
        found = _admin_call(
            lambda: self.admin.describe_consumer_groups([group], request_timeout=self.timeout_s),
            group, self.timeout_s, f"describe group {group!r}",
        )
        details = tuple(
            Member(
                str(m.member_id), str(m.client_id), str(m.host).lstrip("/"),
                tuple(sorted(
                    tp.partition for tp in (m.assignment.topic_partitions if m.assignment else [])
                    if tp.topic == self.topic
                )),
            )
            for m in found.members
        )
        members = tuple(f"{m.client_id}@{m.host}" for m in details)
        return GroupInfo(group, found.state.name, members, details)

    def alter_offsets(self, group: str, offsets: Mapping[int, int]) -> None:
        """Set the group's committed offsets. The broker refuses it for a group with members."""
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        request = ConsumerGroupTopicPartitions(group, tps)
        answer = _admin_call(
            lambda: self.admin.alter_consumer_group_offsets(
                [request], request_timeout=self.timeout_s),
            group, self.timeout_s, f"move offsets of group {group!r}",
        )
        failed = [f"[{tp.partition}]: {tp.error}" for tp in answer.topic_partitions if tp.error]
        if failed:
            raise OffsetsError(f"move offsets of group {group!r}: {'; '.join(failed)}")

    def timestamps_at(self, offsets: Mapping[int, int]) -> dict[int, int | None]:
        """Timestamp (ms) of the first message at or after each offset, None when there is
        none (the end of the log) or it carries no timestamp."""
        found: dict[int, int | None] = {}
        if not offsets:
            return found
        probe = self.probe
        probe.assign([TopicPartition(self.topic, p, o) for p, o in offsets.items()])
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(found) < len(offsets) and time.monotonic() < deadline:
                for msg in probe.consume(len(offsets), 0.5):
                    partition = msg.partition()
                    if partition is None or partition in found:
                        continue
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            found[partition] = None
                        else:
                            raise OffsetsError(f"reading {self.topic}[{partition}]: {error}")
                        continue
                    kind, stamp = msg.timestamp()
                    found[partition] = None if kind == TIMESTAMP_NOT_AVAILABLE else int(stamp)
        finally:
            probe.unassign()
        missing = sorted(set(offsets) - set(found))
        if missing:
            log.warning("no message read from %s partitions %s in %.0fs",
                        self.topic, missing, self.timeout_s)
        return found

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
