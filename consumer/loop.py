"""The run loop: source -> decode -> batch/reduce -> warehouse -> commit.

The commit protocol lives in ``SyncLoop.flush``: drain the window, write it in one warehouse
transaction, then commit the Kafka offsets it covers — never before the warehouse committed.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from batcher.events import PartitionRange
from batcher.reducer import Reduced, Reducer
from batcher.window import Clock, FlushReason, Window, WindowPolicy
from consumer.deadletter import DeadLetters
from consumer.decoding import Decoder, InvalidEvent
from consumer.observer import Observer
from consumer.retry import retry_transient
from warehouse.base import ApplyResult, Batch, Warehouse
from warehouse.staging import Row, build_staged

log = logging.getLogger("kyc_sync.loop")


class StopRun(Exception):
    """A terminal condition: stop without committing what is buffered."""


@dataclass(frozen=True, slots=True)
class LoopOptions:
    topic: str
    group_id: str
    on_invalid: str = "dlq"
    until_caught_up: bool = False
    consume_batch: int = 10_000
    poll_timeout_s: float = 0.5
    retry_max_s: float = 120.0


@dataclass(frozen=True, slots=True)
class FlushReport:
    batch_id: str
    reason: FlushReason
    events: int
    invalid: int
    keys: int
    result: ApplyResult | None
    ranges: tuple[PartitionRange, ...]
    decode_s: float
    total_s: float


ConsumerFactory = Callable[..., Consumer]


class SyncLoop:
    """One consumer instance. Build it, call ``run()``; it returns the process exit code."""

    def __init__(
        self,
        options: LoopOptions,
        new_consumer: ConsumerFactory,
        decoder: Decoder,
        warehouse: Warehouse,
        dead_letters: DeadLetters | None,
        policy: WindowPolicy,
        clock: Clock = time.monotonic,
        on_flush: Callable[[FlushReport], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.options = options
        self.new_consumer = new_consumer
        self.decoder = decoder
        self.warehouse = warehouse
        self.dead_letters = dead_letters
        self.window = Window(policy, clock)
        self.reducer: Reducer[Row] = Reducer()
        self.on_flush = on_flush
        self.observer = observer or Observer()
        self.consumer: Consumer | None = None
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.stopping = False
        self.abandoned = False
        self.decode_s = 0.0
        self.flushes: list[FlushReport] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if self.stopping and signum is not None:
            log.error("second signal: exiting now without committing")
            raise SystemExit(130)
        log.info("stop requested: flushing and leaving the group")
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self) -> int:
        retry_transient(self.warehouse.open, self.options.retry_max_s, "warehouse open")
        consumer = self.new_consumer(error_cb=self._on_client_error)
        self.consumer = consumer
        consumer.subscribe(
            [self.options.topic],
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
        )
        try:
            while not self.stopping:
                messages = consumer.consume(
                    self.options.consume_batch, self.options.poll_timeout_s
                )
                if messages:
                    self.ingest(messages)
                self.observer.tick(consumer)
                reason = self.window.due(self.reducer.events, self.reducer.payload_bytes)
                if reason is not None:
                    self.flush(reason)
                if self.options.until_caught_up and self.caught_up():
                    self.flush(FlushReason.CAUGHT_UP)
                    log.info("caught up with the end of every assigned partition")
                    break
            else:
                self.flush(FlushReason.SHUTDOWN)
        except BaseException:
            # Terminal: whatever is buffered is dropped uncommitted and re-read on restart.
            self.abandon()
            raise
        finally:
            self.consumer = None
            consumer.close()
            self.warehouse.close()
        return 0

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, messages: list[Message]) -> None:
        """Decode each message and offer it to the reducer, as it arrives."""
        started = time.perf_counter()
        decode = self.decoder.decode
        add = self.reducer.add
        at_end = self.at_end
        self.window.note_event()
        before = self.reducer.events - self.reducer.invalid
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._on_message_error(msg, error)
                continue
            partition: int = msg.partition()  # type: ignore[assignment]
            offset: int = msg.offset()  # type: ignore[assignment]
            value: bytes | None = msg.value()
            size = len(value) if value else 0
            at_end.discard(partition)
            try:
                event = decode(value, msg.key())
            except InvalidEvent as invalid:
                self._invalid(msg, partition, offset, invalid, size)
                continue
            add(event.key, event.op_time, partition, offset, event.op_type, event.row, size)
        if self.reducer.events == 0:
            self.window.reset()
        self.decode_s += time.perf_counter() - started
        self.observer.consumed(messages, self.reducer.events - self.reducer.invalid - before)
        self.observer.buffered(self.reducer.events, len(self.reducer))

    def _invalid(
        self, msg: Message, partition: int, offset: int, invalid: InvalidEvent, size: int
    ) -> None:
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        if self.options.on_invalid == "fail" or self.dead_letters is None:
            raise StopRun(f"invalid event at {where}: {invalid}")
        log.warning("invalid event at %s -> dead-letter topic: %s", where, invalid)
        self.dead_letters.send(msg, invalid.error_class, invalid.reason)
        self.reducer.skip(partition, offset, size)
        self.observer.dead_lettered(invalid.error_class)

    def _on_message_error(self, msg: Message, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            partition = msg.partition()
            if partition is not None and partition in self.assigned:
                self.at_end.add(partition)
            return
        if error.fatal():
            raise StopRun(f"fatal Kafka error: {error}")
        log.warning("Kafka: %s", error)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("fatal Kafka client error: %s", error)
            self.stopping = True
        else:
            log.warning("Kafka client: %s", error)

    def caught_up(self) -> bool:
        return bool(self.assigned) and self.assigned <= self.at_end

    # -- the commit protocol -----------------------------------------------------------------

    def flush(self, reason: FlushReason) -> FlushReport | None:
        """Drain -> (already reduced) -> apply in one transaction -> commit offsets."""
        if self.reducer.events == 0 or self.abandoned:
            self.window.reset()
            return None
        started = time.perf_counter()
        reduced = self.reducer.drain()
        self.window.reset()
        decode_s, self.decode_s = self.decode_s, 0.0
        batch_id = uuid.uuid4().hex
        try:
            if self.dead_letters is not None and reduced.invalid:
                self.dead_letters.flush()
            batch = self.stage(batch_id, reduced, decode_s)
            result = self.apply(batch) if reduced.winners else None
            self.commit(reduced.ranges)
        except BaseException as err:
            self.observer.flush_failed(err)
            raise
        report = FlushReport(
            batch_id, reason, reduced.events, reduced.invalid, len(reduced.winners), result,
            reduced.ranges, decode_s, time.perf_counter() - started,
        )
        self.flushes.append(report)
        log_flush(report)
        self.observer.flushed(report)
        self.observer.buffered(0, 0)
        if self.on_flush is not None:
            self.on_flush(report)
        return report

    def stage(self, batch_id: str, reduced: Reduced[Row], decode_s: float) -> Batch:
        now = datetime.now(UTC).replace(tzinfo=None)
        synced_at_us = _utc_micros(now)
        return Batch(
            batch_id=batch_id,
            topic=self.options.topic,
            consumer_group=self.options.group_id,
            rows=build_staged(reduced.winners, batch_id, synced_at_us),
            ranges=reduced.ranges,
            events_in=reduced.events,
            invalid_events=reduced.invalid,
            started_at=now,
            decode_ms=int(decode_s * 1000),
        )

    def apply(self, batch: Batch) -> ApplyResult:
        return retry_transient(
            lambda: self.warehouse.apply(batch), self.options.retry_max_s, "warehouse apply"
        )

    def commit(self, ranges: tuple[PartitionRange, ...]) -> None:
        if self.consumer is None or not ranges:
            return
        offsets = [TopicPartition(self.options.topic, r.partition, r.next_offset) for r in ranges]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            # The batch is in the warehouse; a failed commit only means it will be re-read and
            # re-applied as a no-op by the guard (at-least-once).
            log.warning("offset commit failed, the batch will be re-read: %s", err)

    # -- rebalances --------------------------------------------------------------------------

    def abandon(self) -> None:
        """Drop the buffer; nothing more is flushed or committed by this instance."""
        self.abandoned = True
        self.reducer.clear()
        self.window.reset()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {tp.partition for tp in partitions}
        self.observer.assignment(frozenset(self.assigned))
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        if self.abandoned:
            return
        if revoked & self.reducer.partitions():
            log.info("partitions %s revoked: flushing what is buffered", sorted(revoked))
            self.flush(FlushReason.REVOKE)
        else:
            log.info("partitions %s revoked", sorted(revoked))
        self.assigned -= revoked
        self.at_end -= revoked
        self.observer.assignment(frozenset(self.assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        log.warning("partitions %s lost: dropping the buffer uncommitted", sorted(lost))
        self.reducer.clear()
        self.window.reset()
        self.assigned -= lost
        self.at_end -= lost
        self.observer.assignment(frozenset(self.assigned))


def _utc_micros(naive_utc: datetime) -> int:
    return int(naive_utc.replace(tzinfo=UTC).timestamp() * 1_000_000)


def log_flush(report: FlushReport) -> None:
    result = report.result
    offsets = ",".join(f"{r.partition}:{r.first}-{r.next_offset - 1}" for r in report.ranges)
    extra: dict[str, Any] = {
        "batch_id": report.batch_id, "reason": report.reason.value, "events": report.events,
        "invalid": report.invalid, "keys": report.keys, "offsets": offsets,
        "decode_s": round(report.decode_s, 3), "total_s": round(report.total_s, 3),
    }
    if result is not None:
        extra.update(
            inserted=result.inserted, updated=result.updated, deleted=result.deleted,
            stale=result.skipped_stale, write_s=round(result.write_s, 3),
        )
    log.info(
        "flush %s",
        " ".join(f"{k}={v}" for k, v in extra.items()),
        extra={"flush": extra},
    )
