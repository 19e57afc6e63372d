"""The run loop: source -> decode -> batch/reduce -> warehouse -> commit.

The commit protocol lives in ``SyncLoop.flush``: drain the window, write it in one warehouse
transaction, then commit the Kafka offsets it covers — never before the warehouse committed.

Rules the loop keeps so that nothing is lost:
- an offset is committed only for events that are in the warehouse, or whose dead-letter copy
  was acknowledged, and only for partitions this instance still owns;
- whenever buffered events are dropped without being written (a revocation over its time budget,
  lost partitions), the partitions still owned are rewound to the first dropped offset;
- while a flush waits to retry, the partitions are paused and the consumer keeps polling, so the
  instance stays in its group; anything delivered meanwhile is rewound, not processed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from batcher.ranges import PartitionRange
from batcher.reducer import Reduced, Reducer
from batcher.window import Clock, FlushReason, Window, WindowPolicy
from consumer.decode.decoder import (
    INDEX,
    Decoded,
    Decoder,
    InvalidEvent,
    RegistryUnavailable,
    rows_of,
)
from consumer.run.observer import Observer
from consumer.run.retry import RetriesExhausted, retry_transient
from consumer.source.deadletters import DeadLetters
from warehouse.base import ApplyResult, Batch, Warehouse
from warehouse.staging import stage_frame

log = logging.getLogger("kyc_sync.loop")
T = TypeVar("T")


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
    revoke_budget_s: float = 20.0
    shutdown_timeout_s: float = 30.0


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
        self.reducer = Reducer()
        self.on_flush = on_flush
        self.observer = observer or Observer()
        self.consumer: Consumer | None = None
        self.assigned: set[int] = set()
        self.at_end: set[int] = set()
        self.stopping = False
        self.abandoned = False
        self.in_flight = False
        self.in_callback = False  # inside a rebalance callback, i.e. inside consumer.consume()
        self.fatal: str | None = None
        self.decode_s = 0.0
        self.registry_failures = 0
        self.last_warning: dict[int, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """First call: flush, commit and leave the group within the shutdown timeout.
        A second signal, or the timeout, exits at once without committing."""
        if self.stopping:
            if signum is not None:
                log.error("second signal: exiting now without committing")
                os._exit(130)
            return
        log.info("stop requested: flushing and leaving the group (at most %.0fs)",
                 self.options.shutdown_timeout_s)
        self.stopping = True
        timer = threading.Timer(self.options.shutdown_timeout_s, self._shutdown_timed_out)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _shutdown_timed_out() -> None:
        log.error("shutdown timed out: exiting now without committing")
        os._exit(1)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self) -> int:
        self.retry(self.warehouse.open, "warehouse open")
        consumer = self.new_consumer(error_cb=self._on_client_error)
        self.consumer = consumer
        consumer.subscribe(
            [self.options.topic],
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
        )
        try:
            while not self.stopping:
                self.poll()
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

    def poll(self) -> None:
        assert self.consumer is not None
        messages = self.consumer.consume(self.options.consume_batch, self.options.poll_timeout_s)
        if self.fatal is not None:
            raise StopRun(self.fatal)
        if messages:
            self.ingest(messages)
        self.observer.tick(self.consumer)

    def caught_up(self) -> bool:
        return bool(self.assigned) and self.assigned <= self.at_end

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, messages: list[Message]) -> None:
        """Decode the batch in columns and offer its rows to the reducer, as it arrives."""
        started = time.perf_counter()
        self.window.note_event()
        kept: list[Message] = []
        values: list[bytes | None] = []
        keys: list[bytes | None] = []
        partitions: list[int] = []
        offsets: list[int] = []
        at_end = self.at_end
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._on_message_error(msg, error)  # end of a partition: after its messages
                continue
            partition: int = msg.partition()  # type: ignore[assignment]
            at_end.discard(partition)
            kept.append(msg)
            values.append(msg.value())
            keys.append(msg.key())
            partitions.append(partition)
            offsets.append(msg.offset())  # type: ignore[arg-type]
        before = self.reducer.events - self.reducer.invalid
        if kept:
            self._ingest_decoded(kept, values, keys, partitions, offsets)
        if self.reducer.events == 0:
            self.window.reset()
        self.decode_s += time.perf_counter() - started
        self.observer.consumed(messages, self.reducer.events - self.reducer.invalid - before)
        self.observer.buffered(self.reducer.events, self.reducer.keys_at_most)

    def _ingest_decoded(
        self, kept: list[Message], values: list[bytes | None], keys: list[bytes | None],
        partitions: list[int], offsets: list[int],
    ) -> None:
        decoded = self.decoder.decode_batch(values, keys)
        stop = decoded.stop
        singles: list[tuple[int, Decoded]] = []
        for index in decoded.singles:
            try:
                singles.append((index, self.decoder.decode(values[index], keys[index])))
            except InvalidEvent as invalid:
                self._invalid(kept[index], partitions[index], offsets[index], invalid)
            except RegistryUnavailable as err:  # a message the batch did not need a schema for
                stop = min(stop, index)
                decoded = replace(decoded, error=err)
                break
        size = sum(len(v) for v in values[:stop] if v)
        self.reducer.track(partitions[:stop], offsets[:stop], size)
        rows = decoded.rows
        if stop < len(kept):
            rows = rows.filter(pl.col(INDEX) < stop)
            # Not at the end any more: these partitions re-read from their first unprocessed one.
            self.at_end.difference_update(partitions[stop:])
        if singles:
            rows = pl.concat([rows, rows_of(s for s in singles if s[0] < stop)], how="vertical")
        if rows.height:
            where = rows.get_column(INDEX).to_numpy()
            self.reducer.add(rows.drop(INDEX).with_columns(
                pl.Series("src_partition", np.asarray(partitions)[where], dtype=pl.Int32),
                pl.Series("src_offset", np.asarray(offsets)[where], dtype=pl.Int64),
            ))
        if decoded.error is not None and stop < len(kept):
            self._registry_down(decoded.error, kept[stop:])
        else:
            self.registry_failures = 0

    def _invalid(self, msg: Message, partition: int, offset: int, invalid: InvalidEvent) -> None:
        where = f"{msg.topic()}[{partition}]@{offset}"
        if self.options.on_invalid == "fail" or self.dead_letters is None:
            raise StopRun(f"invalid event at {where}: {invalid}")
        log.warning("invalid event at %s -> dead-letter topic: %s", where, invalid)
        self.dead_letters.send(msg, invalid.error_class, invalid.reason)
        self.reducer.reject()
        self.observer.dead_lettered(invalid.error_class)

    def _registry_down(self, err: RegistryUnavailable, unprocessed: list[Message]) -> None:
        """The events are fine, the registry is not: re-read them after a backoff."""
        self.registry_failures += 1
        wait = min(30.0, 0.5 * 2 ** min(self.registry_failures, 6))
        log.warning("%s; re-reading %d message(s) in %.1fs", err, len(unprocessed), wait)
        self.wait_in_group(wait, rewind=_first_offsets(unprocessed))

    def _on_message_error(self, msg: Message, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            partition = msg.partition()
            if partition is not None and partition in self.assigned:
                self.at_end.add(partition)
            return
        if error.fatal():
            raise StopRun(f"fatal Kafka error: {error}")
        self._warn_once(error)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._AUTHENTICATION:
            log.error("Kafka client: %s", error)
            self.fatal = f"Kafka client error: {error.str()}"
        else:
            self._warn_once(error)

    def _warn_once(self, error: KafkaError, every_s: float = 10.0) -> None:
        """Log a recurring client error (broker down, ...) at most every ``every_s`` seconds;
        librdkafka keeps reconnecting on its own."""
        now = time.monotonic()
        if now - self.last_warning.get(error.code(), -every_s) >= every_s:
            self.last_warning[error.code()] = now
            log.warning("Kafka: %s", error)

    # -- the commit protocol -----------------------------------------------------------------

    def flush(self, reason: FlushReason, budget_s: float | None = None) -> FlushReport | None:
        """Drain -> (already reduced) -> apply in one transaction -> commit offsets."""
        if self.reducer.events == 0 or self.abandoned:
            self.window.reset()
            return None
        started = time.perf_counter()
        reduced = self.reducer.drain()
        self.window.reset()
        self.observer.timed("reduce", time.perf_counter() - started)
        decode_s, self.decode_s = self.decode_s, 0.0
        batch_id = uuid.uuid4().hex
        budget = self.options.retry_max_s if budget_s is None else budget_s
        self.in_flight = True
        try:
            if self.dead_letters is not None and reduced.invalid:
                self.retry(self.dead_letters.flush, "dead-letter flush", budget)
            result = None
            keys = 0 if reduced.rows is None else reduced.rows.height
            if reduced.rows is not None:
                batch = self.stage(batch_id, reduced.rows, reduced, decode_s)
                reduced = replace(reduced, rows=None)  # the staged table is all the write needs
                result = self.retry(lambda: self.warehouse.apply(batch), "warehouse apply", budget)
            committing = time.perf_counter()
            self.commit(reduced.ranges)
            self.observer.timed("commit", time.perf_counter() - committing)
        except BaseException as err:
            self.observer.flush_failed(err)
            raise
        finally:
            self.in_flight = False
        report = FlushReport(
            batch_id, reason, reduced.events, reduced.invalid, keys, result,
            reduced.ranges, decode_s, time.perf_counter() - started,
        )
        log_flush(report)
        self.observer.flushed(report)
        self.observer.buffered(0, 0)
        if self.on_flush is not None:
            self.on_flush(report)
        return report

    def stage(
        self, batch_id: str, rows: pl.DataFrame, reduced: Reduced, decode_s: float
    ) -> Batch:
        now = datetime.now(UTC).replace(tzinfo=None)
        return Batch(
            batch_id=batch_id,
            topic=self.options.topic,
            consumer_group=self.options.group_id,
            rows=stage_frame(rows, batch_id, _utc_micros(now)),
            ranges=reduced.ranges,
            events_in=reduced.events,
            invalid_events=reduced.invalid,
            started_at=now,
            decode_ms=int(decode_s * 1000),
        )

    def retry(self, call: Callable[[], T], what: str, budget_s: float | None = None) -> T:
        budget = self.options.retry_max_s if budget_s is None else budget_s
        return retry_transient(call, budget, what, sleep=self.wait_in_group)

    def commit(self, ranges: tuple[PartitionRange, ...]) -> None:
        """Commit the next offsets of the partitions this instance still owns."""
        owned = [r for r in ranges if r.partition in self.assigned]
        if self.consumer is None or not owned:
            return
        offsets = [TopicPartition(self.options.topic, r.partition, r.next_offset) for r in owned]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            # The batch is in the warehouse; a failed commit only means it will be re-read and
            # re-applied as a no-op by the guard (at-least-once).
            log.warning("offset commit failed, the batch will be re-read: %s", err)

    # -- staying in the group while waiting --------------------------------------------------

    def wait_in_group(self, seconds: float, rewind: dict[int, int] | None = None) -> None:
        """Wait ``seconds`` with every partition paused, polling so that the group keeps this
        member. Messages delivered meanwhile (partitions assigned during the wait) are not
        processed: their partitions are rewound to them, like ``rewind``, after resuming."""
        consumer = self.consumer
        if consumer is None or self.in_callback:
            # No consume() nested in the consume() that runs the rebalance callback: the client
            # cannot re-enter (it aborts the process). librdkafka heartbeats in the background,
            # and the callback is bounded by revoke_budget_s, far below max.poll.interval.ms.
            time.sleep(seconds)
            return
        seek_to = dict(rewind or {})
        self._pause(consumer, consumer.assignment())
        try:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not self.abandoned:
                delivered = [
                    m for m in consumer.consume(self.options.consume_batch, min(left, 0.5))
                    if m.error() is None
                ]
                if delivered:
                    for partition, offset in _first_offsets(delivered).items():
                        seek_to.setdefault(partition, offset)
                        self.at_end.discard(partition)
                    self._pause(consumer, consumer.assignment())
        finally:
            self._resume_and_seek(consumer, seek_to)

    @staticmethod
    def _pause(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer.pause(partitions)

    def _resume_and_seek(self, consumer: Consumer, seek_to: dict[int, int]) -> None:
        assignment = consumer.assignment()
        if assignment:
            consumer.resume(assignment)
        self.seek(seek_to)

    def seek(self, offsets: dict[int, int]) -> None:
        """Re-read the owned partitions among ``offsets`` from the given offsets."""
        if self.consumer is None:
            return
        for partition, offset in sorted(offsets.items()):
            if partition not in self.assigned:
                continue
            try:
                self.consumer.seek(TopicPartition(self.options.topic, partition, offset))
            except KafkaException as err:
                raise StopRun(f"cannot rewind partition {partition} to {offset}: {err}") from err

    # -- rebalances --------------------------------------------------------------------------

    def abandon(self) -> None:
        """Drop the buffer; nothing more is flushed or committed by this instance."""
        self.abandoned = True
        self.reducer.clear()
        self.window.reset()

    def _drop_buffer(self, why: str, ranges: Iterable[PartitionRange]) -> None:
        """Forget buffered events without writing them; owned partitions re-read them."""
        self.reducer.clear()
        self.window.reset()
        rewind = {r.partition: r.first for r in ranges if r.partition in self.assigned}
        log.warning("%s: dropped the buffer uncommitted; re-reading %s", why, rewind or "nothing")
        self.seek(rewind)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {tp.partition for tp in partitions}
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        self.observer.assignment(frozenset(self.assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Flush what is buffered within the revocation budget, or drop it uncommitted: the
        new owner re-reads the revoked partitions, this instance re-reads the others."""
        revoked = {tp.partition for tp in partitions}
        if not self.abandoned and not self.in_flight and revoked & self.reducer.partitions():
            log.info("partitions %s revoked: flushing what is buffered", sorted(revoked))
            ranges = self.reducer.ranges()
            self.in_callback = True
            try:
                self.flush(FlushReason.REVOKE, budget_s=self.options.revoke_budget_s)
            except RetriesExhausted as err:
                self.assigned -= revoked
                self._drop_buffer(f"revocation flush over budget ({err})", ranges)
            finally:
                self.in_callback = False
        else:
            log.info("partitions %s revoked", sorted(revoked))
        self.assigned -= revoked
        self.at_end -= revoked
        self.observer.assignment(frozenset(self.assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        self.assigned -= lost
        self.at_end -= lost
        if not self.abandoned and not self.in_flight and self.reducer.events:
            self._drop_buffer(f"partitions {sorted(lost)} lost", self.reducer.ranges())
        self.observer.assignment(frozenset(self.assigned))


def _first_offsets(messages: Iterable[Message]) -> dict[int, int]:
    """The first offset per partition among real (non-error) messages."""
    first: dict[int, int] = {}
    for msg in messages:
        partition, offset = msg.partition(), msg.offset()
        if msg.error() is None and partition is not None and offset is not None:
            first[partition] = min(first.get(partition, offset), offset)
    return first


def _utc_micros(naive_utc: datetime) -> int:
    return int(naive_utc.replace(tzinfo=UTC).timestamp() * 1_000_000)


def log_flush(report: FlushReport) -> None:
    result = report.result
    offsets = ",".join(f"{r.partition}:{r.first}-{r.next_offset - 1}" for r in report.ranges)
    fields: dict[str, Any] = {
        "batch_id": report.batch_id, "reason": report.reason.value, "events": report.events,
        "invalid": report.invalid, "keys": report.keys, "offsets": offsets,
        "decode_s": round(report.decode_s, 3), "total_s": round(report.total_s, 3),
    }
    if result is not None:
        fields.update(
            inserted=result.inserted, updated=result.updated, deleted=result.deleted,
            stale=result.skipped_stale, write_s=round(result.write_s, 3),
        )
    log.info("flush %s", " ".join(f"{k}={v}" for k, v in fields.items()),
             extra={"flush": fields})
