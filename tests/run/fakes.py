"""In-memory stand-ins for what ``SyncLoop`` uses of confluent-kafka, the warehouse and the
dead-letter producer. They share one ``Journal``, so a test can check the order of what happened
(the warehouse applied, then the offsets were committed).

``FakeConsumer`` plays the broker and the group coordinator for one member: one log per
partition, a position per assigned partition, pause/resume, seek, commit, partition-EOF events,
and a script of steps that run inside ``consume()``, where librdkafka serves rebalance callbacks.
It checks what the real client enforces: no ``consume()`` nested in a callback (librdkafka aborts
the process), no seek of a partition it does not own, nothing used after ``close()``. It also
refuses a commit of a partition the member does not own, which a group coordinator rejects.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.decode.contract import Contract
from consumer.decode.decoder import Decoded, DecodedBatch, Decoder, RegistryUnavailable
from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from schemas.evolution import TableState
from tests.integration.harness import Event, Produced
from warehouse.base import ApplyResult, Batch
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.tables import TableNames

Callback = Callable[[Any, list[TopicPartition]], None]


class ContractViolation(AssertionError):
    """The loop used the client in a way the real one refuses (or aborts on)."""


class ScriptHung(AssertionError):
    """The loop kept polling long after the script ended without anything to read."""


@dataclass
class Journal:
    """What the fakes did, in order: ``(kind, detail)``."""

    entries: list[tuple[str, object]] = field(default_factory=list)

    def add(self, kind: str, detail: object = None) -> None:
        self.entries.append((kind, detail))

    def kinds(self, *only: str) -> list[str]:
        return [k for k, _ in self.entries if not only or k in only]


# -- messages -------------------------------------------------------------------------------


class FakeMessage:
    """What ``consume()`` returns: a record of a partition, or an event (``error()`` set)."""

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None, error: KafkaError | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._headers = headers
        self._error = error
        self._timestamp_ms = timestamp_ms

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)  # TIMESTAMP_CREATE_TIME

    def __repr__(self) -> str:
        kind = "EOF" if self._error is not None else "msg"
        return f"<{kind} {self._topic}[{self._partition}]@{self._offset}>"


def partition_eof(topic: str, partition: int, offset: int) -> FakeMessage:
    """The event librdkafka emits when a partition has been read to its end."""
    return FakeMessage(
        topic, partition, offset, None, None, error=KafkaError(KafkaError._PARTITION_EOF)
    )


# -- the script -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign:
    """The group assigns these partitions: ``on_assign`` runs, reading starts at the committed
    offset (the beginning without one)."""

    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Revoke:
    """The group takes these partitions back: ``on_revoke`` runs while they are still owned."""

    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Lose:
    """The member lost these partitions (session timed out): ``on_lost`` runs, they are gone."""

    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``fn`` inside ``consume()``: request a stop, move the clock, take a snapshot."""

    fn: Callable[[], object]


@dataclass(frozen=True, slots=True)
class Deliver:
    """End this ``consume()`` call, returning up to ``limit`` records (all available by default)
    of the owned, unpaused partitions (of ``partitions`` only, if given), in partition order,
    each partition followed by its EOF event when read to its end."""

    limit: int | None = None
    partitions: frozenset[int] | None = None


IDLE = Deliver(limit=0)
"""End this ``consume()`` call with nothing."""

Step = Assign | Revoke | Lose | Call | Deliver


def deliver(*partitions: int, limit: int | None = None) -> Deliver:
    return Deliver(limit, frozenset(partitions) if partitions else None)


# -- the consumer ---------------------------------------------------------------------------


class FakeConsumer:
    """Each ``consume()`` runs the script's steps up to and including the next ``Deliver``;
    once the script is done, every call delivers what there is to read."""

    def __init__(self, topic: str, journal: Journal, idle_limit_s: float = 5.0) -> None:
        self.topic = topic
        self.journal = journal
        self.idle_limit_s = idle_limit_s
        self.logs: defaultdict[int, list[FakeMessage]] = defaultdict(list)
        self.script: deque[Step] = deque()
        self.config: dict[str, Any] = {}
        self.on_assign: Callback | None = None
        self.on_revoke: Callback | None = None
        self.on_lost: Callback | None = None
        self.assigned: set[int] = set()
        self.ever_assigned: set[int] = set()
        self.partition_count: int | None = None
        """Partitions of the topic; None: every partition with a log or ever assigned."""
        self.paused: set[int] = set()
        self.positions: dict[int, int] = {}
        self.eof_at: dict[int, int] = {}
        self.group_offsets: dict[int, int] = {}
        """The group's committed offsets."""
        self.commits: list[dict[int, int]] = []
        self.failing_commits = 0
        """How many of the next commits fail, as during a rebalance (ILLEGAL_GENERATION)."""
        self.seeks: list[tuple[int, int]] = []
        self.callback_s: list[tuple[str, float]] = []
        """How long each rebalance callback took: ``(kind, seconds)``."""
        self.polls = 0
        self.paused_polls = 0
        self.closed = False
        self._consuming = False
        self._idle_since: float | None = None

    # -- set-up by the test

    def new_consumer(self, **config: Any) -> FakeConsumer:
        """The loop's consumer factory."""
        self.config = config
        return self

    def append(self, partition: int, key: bytes | None, value: bytes | None) -> int:
        """Add a record to a partition's log; returns its offset."""
        log = self.logs[partition]
        log.append(FakeMessage(self.topic, partition, len(log), key, value))
        return len(log) - 1

    def append_error(self, partition: int, error: KafkaError) -> int:
        """A position of the log the client cannot deliver (a corrupt message set): reading it
        returns an error event carrying the partition and offset. Returns the offset."""
        log = self.logs[partition]
        log.append(FakeMessage(self.topic, partition, len(log), None, None, error=error))
        return len(log) - 1

    def produce(self, events: Iterable[Event], sink: Produced | None = None) -> Produced:
        """Append audit events (plain Avro, keyed by profile) to their partitions."""
        out = sink or Produced()
        encoder = AuditEncoder(audit_schema())
        for event in events:
            value = encoder.encode(event.record())
            offset = self.append(event.partition, message_key(event.kyc_profile_id), value)
            out.events.append((event, event.partition, offset))
        return out

    def play(self, *steps: Step) -> None:
        self.script.extend(steps)

    # -- what SyncLoop uses of confluent_kafka.Consumer

    def subscribe(
        self, topics: list[str], on_assign: Callback | None = None,
        on_revoke: Callback | None = None, on_lost: Callback | None = None,
    ) -> None:
        self._open()
        if list(topics) != [self.topic]:
            raise ContractViolation(f"subscribed to {topics}, the fake serves {self.topic}")
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    def assign(self, partitions: list[TopicPartition]) -> None:
        """A manual assignment at explicit offsets: no group, no rebalance callbacks."""
        self._open()
        if any(tp.topic != self.topic or tp.offset < 0 for tp in partitions):
            raise ContractViolation(f"assign() needs explicit offsets of {self.topic}")
        self.journal.add("assign", [(tp.partition, tp.offset) for tp in partitions])
        for tp in partitions:
            self.assigned.add(tp.partition)
            self.positions[tp.partition] = tp.offset
            self.eof_at.pop(tp.partition, None)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self._open()
        if self._consuming:
            raise ContractViolation("consume() called inside a rebalance callback")
        self._consuming = True
        try:
            self.polls += 1
            if self.paused:
                self.paused_polls += 1
            while self.script:
                step = self.script.popleft()
                if isinstance(step, Deliver):
                    return self._deliver(num_messages, step)
                self._run(step)
            return self._after_script(num_messages, timeout)
        finally:
            self._consuming = False

    def assignment(self) -> list[TopicPartition]:
        self._open()
        return [TopicPartition(self.topic, p) for p in sorted(self.assigned)]

    def topic_partitions(self) -> list[int]:
        if self.partition_count is not None:
            return list(range(self.partition_count))
        return sorted(set(self.logs) | self.ever_assigned)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        """Cluster metadata, as far as the loop reads it: the topic's partitions."""
        self._open()
        meta = SimpleNamespace(
            partitions={p: SimpleNamespace(id=p) for p in self.topic_partitions()}, error=None)
        return SimpleNamespace(topics={self.topic: meta})

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        self._open()
        return 0, len(self.logs.get(partition.partition, []))

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        """The earliest (-2) or end (-1) offset of each partition; timestamps are not kept."""
        self._open()
        found = []
        for tp in partitions:
            assert tp.offset in (-1, -2), "the fake answers the bounds only"
            end = len(self.logs.get(tp.partition, []))
            found.append(TopicPartition(self.topic, tp.partition, 0 if tp.offset == -2 else end))
        return found

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        """The group's committed offsets, of any partition (-1001: none)."""
        self._open()
        return [
            TopicPartition(self.topic, tp.partition, self.group_offsets.get(tp.partition, -1001))
            for tp in partitions
        ]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._open()
        parts = {tp.partition for tp in partitions}
        self.journal.add("pause", sorted(parts))
        self.paused |= parts & self.assigned

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._open()
        parts = {tp.partition for tp in partitions}
        self.journal.add("resume", sorted(parts))
        self.paused -= parts

    def seek(self, partition: TopicPartition) -> None:
        self._open()
        if partition.topic != self.topic or partition.partition not in self.assigned:
            raise KafkaException(KafkaError(
                KafkaError._UNKNOWN_PARTITION, f"partition {partition.partition} not assigned"
            ))
        self.positions[partition.partition] = partition.offset
        self.eof_at.pop(partition.partition, None)
        self.seeks.append((partition.partition, partition.offset))
        self.journal.add("seek", (partition.partition, partition.offset))

    def commit(
        self, message: Any = None, offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> None:
        self._open()
        if message is not None or offsets is None:
            raise ContractViolation("the loop commits explicit offsets only")
        if asynchronous:
            raise ContractViolation("an asynchronous commit may be lost: commit synchronously")
        done = {tp.partition: tp.offset for tp in offsets}
        if self.failing_commits:
            self.failing_commits -= 1
            self.journal.add("commit failed", done)
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "generation changed"))
        unowned = sorted(set(done) - self.assigned)
        if unowned or any(tp.topic != self.topic for tp in offsets):
            raise ContractViolation(f"commit of partitions not owned: {unowned} in {done}")
        self.group_offsets.update(done)
        self.commits.append(done)
        self.journal.add("commit", done)

    def close(self) -> None:
        """Leaving the group revokes what is owned, as ``rd_kafka_consumer_close`` does."""
        self._open()
        if self.assigned:
            self._run(Revoke(tuple(sorted(self.assigned))))
        self.closed = True
        self.journal.add("close")

    # -- internals

    def _open(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")

    def _run(self, step: Step) -> None:
        if isinstance(step, Call):
            step.fn()
            return
        if isinstance(step, Deliver):
            raise TypeError("Deliver ends a consume() call")
        parts = step.partitions
        tps = [TopicPartition(self.topic, p) for p in parts]
        if isinstance(step, Assign):
            self.journal.add("assign", list(parts))
            if self.on_assign is not None:
                self.on_assign(self, tps)
            for p in parts:
                self.assigned.add(p)
                self.ever_assigned.add(p)
                self.positions[p] = self.group_offsets.get(p, 0)
                self.eof_at.pop(p, None)
            return
        if isinstance(step, Revoke):
            callback, before, after = self.on_revoke, "revoking", "revoked"
        else:  # without on_lost, the client calls on_revoke
            callback, before, after = self.on_lost or self.on_revoke, "losing", "lost"
        self.journal.add(before, list(parts))
        if callback is not None:
            started = time.monotonic()
            callback(self, tps)
            self.callback_s.append((after, time.monotonic() - started))
        self.journal.add(after, list(parts))
        for p in parts:
            self.assigned.discard(p)
            self.paused.discard(p)
            self.positions.pop(p, None)
            self.eof_at.pop(p, None)

    def _deliver(self, num_messages: int, step: Deliver) -> list[FakeMessage]:
        budget = num_messages if step.limit is None else min(num_messages, step.limit)
        out: list[FakeMessage] = []
        if budget <= 0:
            return out
        taken = 0
        for p in sorted(self.assigned - self.paused):
            if step.partitions is not None and p not in step.partitions:
                continue
            log, position = self.logs[p], self.positions[p]
            while position < len(log) and taken < budget:
                out.append(log[position])
                position += 1
                taken += 1
            self.positions[p] = position
            if position >= len(log) and self.eof_at.get(p) != position:
                self.eof_at[p] = position
                out.append(partition_eof(self.topic, p, position))
        return out

    def _after_script(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        batch = self._deliver(num_messages, Deliver())
        if batch:
            self._idle_since = None
            return batch
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since > self.idle_limit_s:
            raise ScriptHung(
                f"nothing to read for {self.idle_limit_s}s after the script ended "
                f"(assigned {sorted(self.assigned)}, paused {sorted(self.paused)})"
            )
        time.sleep(min(max(timeout, 0.0), 0.005))
        return batch


# -- the warehouse --------------------------------------------------------------------------


def memory_tables(history: bool = False) -> TableNames:
    """The default table names (``consumer.app.table_names``) in DuckDB's ``main`` schema."""
    return TableNames(
        state=QualifiedName.of("main", "kyc_profile_state"),
        current=QualifiedName.of("main", "kyc_profile_current"),
        ledger=QualifiedName.of("main", "kyc_sync_ledger"),
        columns=QualifiedName.of("main", "kyc_sync_columns"),
        history=QualifiedName.of("main", "kyc_profile_history") if history else None,
    )


class RecordingWarehouse:
    """A real in-memory ``DuckDBWarehouse``, journaled, that can be made to fail.

    ``failures`` are raised by the next applies, one each; ``fail_with`` by every apply while
    set. ``gate``, while set to an event, holds each apply until the event is set (a write in
    flight); ``delay_s`` slows each apply down. ``most_active`` is the most applies ever running
    at once. ``close()`` is recorded but keeps the in-memory database, so the test can read it.
    """

    def __init__(
        self, journal: Journal, failures: Iterable[Exception] = (), history: bool = False
    ) -> None:
        self.journal = journal
        self.inner = DuckDBWarehouse(":memory:", memory_tables(history))
        self.failures: deque[Exception] = deque(failures)
        self.fail_with: Exception | None = None
        self.attempts = 0
        self.applied: list[Batch] = []
        self.closed = 0
        self.gate: threading.Event | None = None
        self.delay_s = 0.0
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self.inner.open()

    def table_state(self) -> TableState:
        return self.inner.table_state()

    def apply(self, batch: Batch) -> ApplyResult:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            return self._apply(batch)
        finally:
            with self._lock:
                self.active -= 1

    def _apply(self, batch: Batch) -> ApplyResult:
        self.attempts += 1
        self.journal.add("apply", batch.batch_id)
        if self.gate is not None and not self.gate.wait(10.0):
            raise AssertionError("the write gate was never opened")
        time.sleep(self.delay_s)
        if self.failures:
            raise self.failures.popleft()
        if self.fail_with is not None:
            raise self.fail_with
        result = self.inner.apply(batch)
        self.applied.append(batch)
        self.journal.add("applied", {r.partition: r.next_offset for r in batch.ranges})
        return result

    def close(self) -> None:
        self.closed += 1
        self.journal.add("warehouse closed")

    def current(self) -> dict[int, tuple[str, int]]:
        """The live profiles: key -> (goldtier_id, op_time in microseconds), as the oracle."""
        rows = self.inner.fetch(
            "SELECT kyc_profile_id, goldtier_id, epoch_us(op_time) "
            f"FROM {self.inner.names.current.sql()}"
        )
        return {int(k): (str(g), int(t)) for k, g, t in rows}

    def history(self) -> dict[int, list[tuple[int, str, int | None]]]:
        """The history table: key -> its rows (op_time, goldtier_id, valid_to) by version."""
        assert self.inner.names.history is not None
        rows = self.inner.fetch(
            "SELECT kyc_profile_id, epoch_us(op_time), goldtier_id, epoch_us(valid_to) "
            f"FROM {self.inner.names.history.sql()} "
            "ORDER BY kyc_profile_id, op_time, src_partition, src_offset"
        )
        out: dict[int, list[tuple[int, str, int | None]]] = {}
        for key, t, goldtier, valid_to in rows:
            out.setdefault(int(key), []).append((int(t), str(goldtier), valid_to))
        return out

    def dispose(self) -> None:
        self.inner.close()


# -- the dead-letter producer ---------------------------------------------------------------


class FakeProducer:
    """What ``DeadLetters`` uses of ``confluent_kafka.Producer``.

    ``mode``: "ack" acknowledges every copy on ``flush``; "refuse" reports each as failed;
    "timeout" leaves them unacknowledged (``flush`` returns how many remain).
    """

    def __init__(self, journal: Journal, mode: str = "ack") -> None:
        self.journal = journal
        self.mode = mode
        self.pending: list[tuple[Callable[[KafkaError | None, Any], None], dict[str, Any]]] = []
        self.acknowledged: list[dict[str, Any]] = []

    def produce(
        self, topic: str, key: bytes | None = None, value: bytes | None = None,
        headers: Any = None, on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
    ) -> None:
        assert on_delivery is not None
        record = {"topic": topic, "key": key, "value": value, "headers": list(headers or [])}
        self.pending.append((on_delivery, record))
        self.journal.add("dead-letter sent", record["headers"])

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.journal.add("dead-letter flush", self.mode)
        if self.mode == "timeout":
            return len(self.pending)
        pending, self.pending = self.pending, []
        for on_delivery, record in pending:
            if self.mode == "refuse":
                on_delivery(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), record)
            else:
                on_delivery(None, record)
                self.acknowledged.append(record)
        return 0


# -- decoders -------------------------------------------------------------------------------


class RegistryOutage:
    """A decoder whose ``decode_batch`` finds the registry down at message ``stops[n]`` of its
    n-th call (as ``ConfluentAvroDecoder`` does); later calls decode normally."""

    def __init__(
        self, inner: Decoder, stops: Sequence[int], on_outage: Callable[[], object] | None = None
    ) -> None:
        self.inner = inner
        self.contract = inner.contract
        self.stops = deque(stops)
        self.on_outage = on_outage
        self.outages = 0

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        return self.inner.decode(value, key)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        if not self.stops:
            return self.inner.decode_batch(values, keys)
        stop = self.stops.popleft()
        head = self.inner.decode_batch(values[:stop], keys[:stop])
        self.outages += 1
        if self.on_outage is not None:
            self.on_outage()
        return DecodedBatch(head.rows, head.singles, stop, RegistryUnavailable("registry down"))


class GatedDecoder:
    """A decoder whose ``decode_batch`` signals ``entered`` and then waits for ``gate``; it
    records the threads it ran on and the batches' sizes."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner
        self.contract: Contract = inner.contract
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: list[str] = []
        self.sizes: list[int] = []
        """The size of each batch decoded."""

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        return self.inner.decode(value, key)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None]
    ) -> DecodedBatch:
        self.threads.append(threading.current_thread().name)
        self.sizes.append(len(values))
        self.entered.set()
        if not self.gate.wait(10.0):
            raise AssertionError("the decode gate was never opened")
        return self.inner.decode_batch(values, keys)


# -- time -----------------------------------------------------------------------------------


class FakeClock:
    """The window's clock, moved by the test."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, now: float) -> Call:
        """A script step that sets the clock."""
        return Call(lambda: setattr(self, "now", now))


class ShutdownTimers:
    """Stands in for ``threading`` in the loop module: ``Timer`` records the shutdown deadline
    and never fires (the real one would ``os._exit`` the test process)."""

    def __init__(self) -> None:
        self.started: list[float] = []

    def Timer(self, interval: float, function: Callable[[], object]) -> _Timer:
        return _Timer(self, interval)


class _Timer:
    def __init__(self, timers: ShutdownTimers, interval: float) -> None:
        self.timers = timers
        self.interval = interval
        self.daemon = False

    def start(self) -> None:
        self.timers.started.append(self.interval)

    def cancel(self) -> None:
        pass
