"""The run loop: source -> decode -> batch/reduce -> warehouse -> commit.

The commit protocol lives in ``SyncLoop.flush``: drain the window, write it in one warehouse
transaction, then commit the Kafka offsets it covers — never before the warehouse committed.

Two kinds of work overlap with consuming, each in a ``Slot`` (``consumer.run.slot``): a consume()
batch is decoded and reduced while the next one is fetched, and a window is written while the
next one is consumed. At most one of each is in flight; the loop's thread takes each outcome back
before it depends on it, and alone commits, rewinds and decides.

Rules the loop keeps so that nothing is lost:
- an offset is committed only for events that are in the warehouse, or whose dead-letter copy
  was acknowledged, and only for partitions this instance still owns;
- whenever buffered events are dropped without being written (a revocation over its time budget,
  lost partitions), the partitions still owned are rewound to the first dropped offset;
- windows are committed in order, each once its write is done; a revocation, a loss of partitions
  and a shutdown first wait for the write in flight; a failed write stops the run and nothing
  consumed after it is committed;
- while a flush waits to retry, the partitions are paused and the consumer keeps polling, so the
  instance stays in its group; anything delivered meanwhile is rewound, not processed.

With ``LoopOptions.bounds`` the loop reads planned offset ranges instead (a full refresh, a
verification): it assigns each partition at the range's first offset explicitly (never through
``auto.offset.reset``), ignores messages at or past the range's end, commits nothing, and
returns once every range is read.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import FrameType
from typing import TypeVar

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
    RegistryUnavailable,
    concat_rows,
    rows_of,
)
from consumer.run.observer import FlushReport, Observer
from consumer.run.partitions import Partitions, first_offsets
from consumer.run.progress import GroupProgress, describe
from consumer.run.retry import RetriesExhausted, retry_transient
from consumer.run.slot import Slot, SlotTimeout
from consumer.source.deadletters import DeadLetterSink
from schemas.errors import InvalidEvent, TerminalError
from warehouse.base import ApplyResult, Batch, Warehouse
from warehouse.staging import stage_frame, stage_taken

log = logging.getLogger("kyc_sync.loop")
T = TypeVar("T")


class StopRun(TerminalError):
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
    lock_wait_max_s: float = 900.0
    revoke_budget_s: float = 20.0
    shutdown_timeout_s: float = 30.0
    bounds: tuple[PartitionRange, ...] | None = None
    """Read exactly these ranges (``first`` .. ``next_offset - 1``) with an assigned consumer,
    commit nothing, stop when each is read. None: join the group and consume."""
    history: bool = False
    """Keep every distinct version of the window and stage them for the history table."""
    caught_up_wait_s: float = 300.0
    """``until_caught_up``: how long the group may stay without moving forward while this
    instance waits for partitions other members hold; then it stops naming them."""
    progress_check_s: float = 1.0
    """``until_caught_up``: how often the group's offsets are asked for while waiting."""

    @property
    def stops(self) -> dict[int, int] | None:
        """The end offset of each bounded partition (None when unbounded)."""
        return None if self.bounds is None else {r.partition: r.next_offset for r in self.bounds}


@dataclass(frozen=True, slots=True)
class Drained:
    """A drained window: its offsets and counts (rows released), its staged batch (None when
    every event was dead-lettered), the time spent decoding it."""

    window: Reduced
    batch: Batch | None
    decode_s: float


@dataclass(frozen=True, slots=True)
class Taken:
    """A consume() batch sorted out on the loop's thread (partition ends, planned stops), to be
    decoded and reduced: its messages and, for those kept, their value, key and position."""

    messages: list[Message]
    kept: list[Message]
    values: list[bytes | None]
    keys: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    size: int
    scan_s: float


    own_lists: bool = False
    """The lists are this batch's own (made by ``merged``): a later merge extends them."""

    def merged(self, later: Taken) -> Taken:
        """This batch and a later one, as one batch. The first merge copies the lists and later
        ones extend them: merging n batches copies each message once, not up to n times."""
        first = self if self.own_lists else Taken(
            list(self.messages), list(self.kept), list(self.values), list(self.keys),
            list(self.partitions), list(self.offsets), self.size, self.scan_s, own_lists=True,
        )
        first.messages.extend(later.messages)
        first.kept.extend(later.kept)
        first.values.extend(later.values)
        first.keys.extend(later.keys)
        first.partitions.extend(later.partitions)
        first.offsets.extend(later.offsets)
        return replace(first, size=first.size + later.size, scan_s=first.scan_s + later.scan_s)


MERGED_BATCHES = 3
"""While the decoder is busy, consume() batches wait merged into one, up to this many: a bigger
batch decodes for less per event (each polars call has a fixed cost, several milliseconds when
the machine is loaded), so a decoder that falls behind catches up. A message held costs ~450
bytes (its ``Message`` object, key and value; 80-byte values): with 10,000-message batches, 30,000
decoding and as many waiting hold ~26 MiB (eight held ~70 MiB)."""


@dataclass(frozen=True, slots=True)
class Ingested:
    """What decoding and reducing a batch left for the loop's thread: the registry failure that
    stopped it at message ``stop`` (None: every message was processed), the valid events."""

    taken: Taken
    stop: int
    error: RegistryUnavailable | None
    decoded: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Writing:
    """A window whose write is in flight: what its commit and report need once it is done."""

    reason: FlushReason
    drained: Drained
    started: float


ConsumerFactory = Callable[..., Consumer]


class SyncLoop:
    """One consumer instance. Build it, call ``run()``; it returns the process exit code."""

    def __init__(
        self,
        options: LoopOptions,
        new_consumer: ConsumerFactory,
        decoder: Decoder,
        warehouse: Warehouse,
        dead_letters: DeadLetterSink | None,
        policy: WindowPolicy,
        clock: Clock = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.options = options
        self.new_consumer = new_consumer
        self.decoder = decoder
        self.warehouse = warehouse
        self.dead_letters = dead_letters
        self.window = Window(policy, clock)
        self.reducer = Reducer(keep_versions=options.history, background=True)
        self.observer = observer or Observer()
        self.partitions = Partitions(options.topic, options.consume_batch)
        self.stopping = False
        self.shutdown_timer: threading.Timer | None = None
        self.abandoned = False
        self.in_flight = False
        self.fatal: str | None = None
        self.decode_s = 0.0
        self.registry_failures = 0
        self.last_warning: dict[int, float] = {}
        self.stops = options.stops
        self.joined = False
        """The group assigned this instance its partitions at least once (maybe none)."""
        self.partitions.on_poll = self.observer.polled
        self.progress = GroupProgress(options.topic)
        self.next_progress_check = 0.0
        self.last_waiting_log = -1e9
        self.flushing_events = 0
        """Events of the window being flushed, until its offsets are committed."""
        self.dropped_events = 0
        """Events of the open window when the run stopped on an error (not committed)."""
        self.commit_pending: dict[int, int] = {}
        """Applied offsets whose commit failed, per partition: committed with the next one."""
        self.decoding: Slot[Ingested] = Slot("kyc-sync-decode")
        self.held: Taken | None = None
        """Batches consumed and not yet decoded (merged while the decoder is busy)."""
        self.decoding_taken: Taken | None = None
        """The batch in the ``decoding`` slot."""
        self.absorbed = (0, 0, 0)
        """The reducer's events, payload bytes and keys (at most) when it was last read on this
        thread: it must not be read while a batch is decoded."""
        self.writing: Slot[ApplyResult | None] = Slot("kyc-sync-write")
        self.written: Writing | None = None
        """The window whose write is in the ``writing`` slot."""

    @property
    def consumer(self) -> Consumer | None:
        return self.partitions.consumer

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
        self.shutdown_timer = threading.Timer(
            self.options.shutdown_timeout_s, self._shutdown_timed_out)
        self.shutdown_timer.daemon = True
        self.shutdown_timer.start()

    @staticmethod
    def _shutdown_timed_out() -> None:
        log.error("shutdown timed out: exiting now without committing")
        os._exit(1)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self) -> int:
        self.retry(self.warehouse.open, "warehouse open")
        # The table's columns and column policy, as the decoder's starting point.
        self.decoder.contract.start(self.retry(self.warehouse.table_state, "warehouse read"))
        consumer = self.new_consumer(error_cb=self._on_client_error)
        self.partitions.consumer = consumer
        if self.options.bounds is not None:
            self._assign_bounds(consumer, self.options.bounds)
        else:
            consumer.subscribe(
                [self.options.topic],
                on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
            )
        try:
            while not self.stopping:
                self.poll()
                if self.writing.done():
                    self.finish_write()
                reason = self.window.due(*self.buffered())
                if reason is not None:
                    self.flush(reason, behind=True)
                if self.stops is not None and self._read_to_end():
                    self.flush(FlushReason.CAUGHT_UP)
                    log.info("read every planned offset range")
                    break
                if self.options.until_caught_up and self._group_caught_up():
                    log.info("caught up: the group has committed every partition of %s to its "
                             "end", self.options.topic)
                    break
            else:
                self.flush(FlushReason.SHUTDOWN)
        except BaseException:
            # Terminal: whatever is buffered is dropped uncommitted and re-read on restart.
            self.abandon()
            raise
        finally:
            self.partitions.consumer = None
            consumer.close()
            self.decoding.close()
            self.writing.close()
            self.warehouse.close()
            if self.shutdown_timer is not None:
                self.shutdown_timer.cancel()
        return 0

    def poll(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        if self.decoding.done():
            self._absorb(self.decoding.take(), None)
        self._start_ingest()  # the batch held is decoded while the next one is fetched
        messages = consumer.consume(self.options.consume_batch, self.options.poll_timeout_s)
        self.observer.polled()
        if self.fatal is not None:
            raise StopRun(self.fatal)
        self.ingest(messages)
        self.observer.tick(consumer)

    def caught_up(self) -> bool:
        """Every partition this instance owns is read to its end (and it owns some)."""
        return self.partitions.caught_up()

    def _read_to_end(self) -> bool:
        """Every owned partition is read to its end, once what was read is decoded (a registry
        outage rewinds)."""
        if self.partitions.caught_up():
            self.settle_ingest()
        return self.partitions.caught_up()

    def _assign_bounds(self, consumer: Consumer, bounds: tuple[PartitionRange, ...]) -> None:
        """Assign each bounded partition at its first planned offset; empty ranges are read."""
        consumer.assign([TopicPartition(self.options.topic, r.partition, r.first)
                         for r in bounds])
        self.partitions.assign(r.partition for r in bounds)
        for r in bounds:
            if r.count <= 0:
                self.partitions.reached_end(r.partition)
        log.info("reading planned offsets %s",
                 ", ".join(f"{r.partition}:{r.first}-{r.next_offset}" for r in bounds))
        self.observer.assignment(frozenset(self.partitions.assigned))

    def _group_caught_up(self) -> bool:
        """``until_caught_up``: once this instance's own partitions are read to their end (it
        may own none), flush them, then ask whether the group has committed every partition of
        the topic to its end (``consumer.run.progress``). Raises ``StopRun`` naming the
        partitions when the group stays without moving forward for ``caught_up_wait_s``."""
        if not self.joined:
            # Owning nothing yet is not having read everything: until its first assignment
            # (maybe empty), this instance is joining, and leaving now would stall the group's
            # rebalance for the others.
            self.progress.restart_wait()
            return False
        if self.partitions.assigned <= self.partitions.at_end:
            self.settle_ingest()  # what was read is decoded: a registry outage rewinds
        if not self.partitions.assigned <= self.partitions.at_end:
            self.progress.restart_wait()
            return False
        self.flush(FlushReason.CAUGHT_UP)
        now = time.monotonic()
        if now < self.next_progress_check:
            return False
        self.retry_pending_commit()
        self.next_progress_check = now + self.options.progress_check_s
        consumer = self.consumer
        assert consumer is not None
        try:
            behind = self.progress.behind(consumer)
        except (KafkaException, LookupError) as err:
            log.warning("cannot read the group's progress, asking again: %s", err)
            return False
        if not behind:
            return True
        stalled = self.progress.stalled_s()
        if stalled >= self.options.caught_up_wait_s:
            raise StopRun(
                f"not caught up: the group committed nothing for {stalled:.0f}s while "
                f"partition(s) {describe(behind)} of {self.options.topic} are not read to their "
                "end (held by another member, or by a stopped one until session.timeout.ms "
                "expires?)"
            )
        if now - self.last_waiting_log >= 10.0:
            self.last_waiting_log = now
            owned = sorted(self.partitions.assigned)
            mine = f"own partitions {owned} read to their end" if owned else "no partition assigned"
            log.info("%s; waiting for the group to commit partition(s) %s", mine, describe(behind))
        return False

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, messages: list[Message]) -> None:
        """Take a consume() batch: sort its messages out here (partition ends, planned stops)
        and hold it; ``poll`` decodes and reduces the batch held in the background while it
        fetches the next one. While the decoder is busy, batches held wait merged (up to
        ``MERGED_BATCHES``); then the loop waits for the decoder."""
        taken = self._take(messages)
        if self.decoding.done() and not self._absorb(self.decoding.take(), taken):
            return  # rewound, together with the batches before it
        held = self.held
        if held is not None and taken.kept:
            limit = self.options.consume_batch * MERGED_BATCHES
            if self.decoding.busy and len(held.kept) + len(taken.kept) <= limit:
                self.held = held.merged(taken)
                return
            if self.decoding.busy and not self._absorb(self.decoding.take(), taken):
                return
            self._start_ingest()
        if taken.kept:
            self.window.note_event()
            self.held = taken
        elif messages:
            self.observer.consumed(messages, 0)

    def settle_ingest(self) -> None:
        """Decode and reduce every batch taken and not yet in the window."""
        self._settle()

    def buffered(self) -> tuple[int, int]:
        """Events and payload bytes of the open window: the reducer's when last read, and the
        batches taken since (decoding or waiting)."""
        events, size, _keys = self.absorbed
        for taken in (self.decoding_taken, self.held):
            if taken is not None:
                events += len(taken.kept)
                size += taken.size
        return events, size

    def _take(self, messages: list[Message]) -> Taken:
        started = time.perf_counter()
        stops = self.stops
        if stops is None and not [m for m in messages if m.error() is not None]:
            # The common case, without a per-message branch: every message is a record.
            partitions: list[int] = [m.partition() for m in messages]  # type: ignore[misc]
            values = [m.value() for m in messages]
            self.partitions.at_end.difference_update(set(partitions))
            return Taken(
                messages, messages, values, [m.key() for m in messages], partitions,
                [m.offset() for m in messages],  # type: ignore[misc]
                _payload_bytes(values), time.perf_counter() - started,
            )
        kept: list[Message] = []
        values = []
        keys: list[bytes | None] = []
        partitions = []
        offsets: list[int] = []
        at_end = self.partitions.at_end
        for msg in messages:
            error = msg.error()
            if error is not None:
                # The end of a partition comes after its messages; anything else at a position
                # stops the run before that position is processed (or committed).
                self._on_message_error(msg, error)
                continue
            partition: int = msg.partition()  # type: ignore[assignment]
            offset: int = msg.offset()  # type: ignore[assignment]
            if stops is not None and offset >= stops.get(partition, 0):
                self.partitions.reached_end(partition)  # past the planned range: not read
                continue
            at_end.discard(partition)
            kept.append(msg)
            values.append(msg.value())
            keys.append(msg.key())
            partitions.append(partition)
            offsets.append(offset)
            if stops is not None and offset + 1 >= stops[partition]:
                self.partitions.reached_end(partition)
        return Taken(messages, kept, values, keys, partitions, offsets, _payload_bytes(values),
                     time.perf_counter() - started)

    def _start_ingest(self) -> None:
        """Decode and reduce the batch held, in the background (if the decoder is free)."""
        taken = self.held
        if taken is not None and not self.decoding.busy:
            self.held = None
            self.decoding_taken = taken
            self.decoding.start(lambda: self._decode_reduce(taken))

    def _settle(self, newer: Taken | None = None) -> bool:
        """Decode and reduce every batch taken before ``newer``: the one in flight, then the one
        held. False when a registry outage rewound them: ``newer`` was rewound too (drop it)."""
        while True:
            if self.decoding.busy and not self._absorb(self.decoding.take(), newer):
                return False
            if self.held is None:
                return True
            self._start_ingest()

    def _decode_reduce(self, taken: Taken) -> Ingested:
        """Runs on the decode slot's thread: nothing else uses the decoder and the reducer
        meanwhile."""
        started = time.perf_counter()
        before = self.reducer.events - self.reducer.invalid
        stop, error = self._ingest_decoded(taken)
        decoded = self.reducer.events - self.reducer.invalid - before
        return Ingested(taken, stop, error, decoded, time.perf_counter() - started)

    def _absorb(self, ingested: Ingested, newer: Taken | None) -> bool:
        """Back on the loop's thread: report the batch; after a registry outage, re-read its
        unprocessed messages and every batch taken after it. False in that case."""
        taken = ingested.taken
        self.decoding_taken = None
        self.decode_s += taken.scan_s + ingested.seconds
        self.observer.consumed(taken.messages, ingested.decoded)
        rewound = ingested.error is not None
        if ingested.error is not None:
            # Not at the end any more: these partitions re-read from their first unprocessed one.
            self.partitions.unread(taken.partitions[ingested.stop:])
            later = [t for t in (self.held, newer) if t is not None]
            self.held = None
            unprocessed = taken.kept[ingested.stop:] + [m for t in later for m in t.kept]
            self._registry_down(ingested.error, unprocessed)
        else:
            self.registry_failures = 0
        if self.reducer.events == 0 and self.held is None:
            self.window.reset()
        self._read_reducer()
        self.observer.buffered(self.reducer.events, self.reducer.keys_at_most)
        return not rewound

    def _read_reducer(self) -> None:
        """Note what the reducer holds (nothing may be decoding)."""
        self.absorbed = (self.reducer.events, self.reducer.payload_bytes,
                         self.reducer.keys_at_most)

    def _ingest_decoded(self, taken: Taken) -> tuple[int, RegistryUnavailable | None]:
        """Decode the batch in columns and offer its rows to the reducer. Returns where it
        stopped and why (a registry failure), or ``len(kept)`` and None."""
        kept, values, keys = taken.kept, taken.values, taken.keys
        partitions, offsets = taken.partitions, taken.offsets
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
        size = sum(len(v) for v in values[:stop] if v) if stop < len(kept) else taken.size
        partition_array = np.asarray(partitions[:stop], dtype=np.int64)
        offset_array = np.asarray(offsets[:stop], dtype=np.int64)
        self.reducer.track(partition_array, offset_array, size)
        rows = decoded.rows
        if stop < len(kept):
            rows = rows.filter(pl.col(INDEX) < stop)
        if singles:
            rows = concat_rows([rows, rows_of(s for s in singles if s[0] < stop)])
        if rows.height:
            where = rows.get_column(INDEX).to_numpy()
            self.reducer.add(rows.drop(INDEX).with_columns(
                pl.Series("src_partition", partition_array[where], dtype=pl.Int32),
                pl.Series("src_offset", offset_array[where], dtype=pl.Int64),
            ))
        for name, events in self.decoder.contract.take_discarded().items():
            self.observer.discarded(name, events)
        return (stop, decoded.error) if stop < len(kept) else (len(kept), None)

    def _invalid(self, msg: Message, partition: int, offset: int, invalid: InvalidEvent) -> None:
        where = f"{msg.topic()}[{partition}]@{offset}"
        if self.options.on_invalid == "fail" or self.dead_letters is None:
            raise StopRun(f"invalid event at {where}: {invalid}")
        log.warning("invalid event at %s -> dead-letter topic: %s", where, invalid)
        self.dead_letters.send(msg, invalid.error_class, invalid.reason)
        self.reducer.reject()
        self.observer.dead_lettered(invalid.error_class)

    def _registry_down(self, err: RegistryUnavailable, unprocessed: list[Message]) -> None:
        """The events are fine, the registry is not: re-read them after a backoff (at once
        inside a rebalance callback, which must not last: the next batch waits instead)."""
        self.registry_failures += 1
        wait = 0.0 if self.partitions.in_callback else min(
            30.0, 0.5 * 2 ** min(self.registry_failures, 6))
        log.warning("%s; re-reading %d message(s) in %.1fs", err, len(unprocessed), wait)
        self.wait_in_group(wait, rewind=first_offsets(unprocessed))

    def _on_message_error(self, msg: Message, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            partition = msg.partition()
            if partition is not None:
                self.partitions.reached_end(partition)
            return
        if error.fatal():
            raise StopRun(f"fatal Kafka error: {error}")
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and partition >= 0 and offset is not None and offset >= 0:
            # A message set the client cannot deliver (failed CRC, cannot decompress, ...):
            # its bytes never reach kyc-sync, so it cannot be dead-lettered; going on would
            # commit past it.
            raise StopRun(
                f"Kafka cannot deliver {msg.topic()}[{partition}]@{offset}: {error.str()}; "
                "nothing from that offset on is committed"
            )
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

    def flush(self, reason: FlushReason, deadline: float | None = None,
              behind: bool = False) -> None:
        """Write the open window and commit the offsets it covers.

        1. Settle what came before: the batches consumed join the window, and the write in
           flight (the window before) is finished: steps 5-7 of its flush.
        2. Drain the reducer: the latest event per key, and the offsets the window covers.
        3. Wait until the window's dead letters are acknowledged by the broker.
        4. Start writing the rows in one warehouse transaction, on the write slot's thread.
        5. Wait for the write to end; a transient failure is retried here, in the group.
           ``behind``: the loop goes on consuming, and this step comes later (``finish_write``
           once the write is done, at the latest in step 1 of the next flush).
        6. Commit the next offsets of the partitions this instance still owns.
        7. Report to the observers.

        A failure in steps 2-5 raises with nothing of the window committed; its events are
        re-read, and so are all consumed after them. With ``deadline`` (a revocation, on
        ``time.monotonic``), no step waits past it: ``RetriesExhausted`` instead.
        """
        # Step 1
        self.settle_ingest()
        self.finish_write(deadline)
        if self.reducer.events == 0 or self.abandoned:
            self.window.reset()
            return
        started = time.perf_counter()
        with self._in_flight():
            # Step 2
            drained = self._drain()
            self.flushing_events = drained.window.events
            # Step 3
            if self.dead_letters is not None and drained.window.invalid:
                sink = self.dead_letters
                self.retry(lambda: sink.flush(_left(deadline)), "dead-letter flush", deadline)
            # Step 4
            self.written = Writing(reason, drained, started)
            batch = drained.batch
            self.writing.start(lambda: None if batch is None else self.warehouse.apply(batch))
        if not behind:
            self.finish_write(deadline)

    def finish_write(self, deadline: float | None = None) -> FlushReport | None:
        """Steps 5-7 of the flush whose write is in flight, if any. With ``deadline`` (a
        revocation), a write that does not end by then raises ``RetriesExhausted``: it is given
        up on, its events re-read."""
        written = self.written
        if written is None:
            self._end_given_up_write(deadline)
            return None
        drained = written.drained
        with self._in_flight():
            # Step 5
            try:
                result = self._write_result(drained.batch, deadline)
            finally:
                self.written = None
            # Step 6
            with self._timed("commit"):
                self.commit(drained.window.ranges)
            self.flushing_events = 0
        # Step 7
        return self._report(written.reason, drained, result, written.started)

    def _write_result(self, batch: Batch | None, deadline: float | None) -> ApplyResult | None:
        """The outcome of the write in flight; a transient failure is retried, each attempt
        on the write slot's thread. With ``deadline``, no wait for an attempt outlasts it."""
        attempts = 0

        def attempt() -> ApplyResult | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                assert batch is not None  # an empty window's write cannot fail
                self.writing.start(lambda: self.warehouse.apply(batch))
            return self._take_write(deadline)

        return self.retry(attempt, "warehouse apply", deadline)

    def _take_write(self, deadline: float | None) -> ApplyResult | None:
        """The outcome of the write slot's task, waiting at most until ``deadline``. A write
        still running then is given up on (``RetriesExhausted``); the slot keeps it, and the
        next write waits for it to end (``_end_given_up_write``)."""
        try:
            return self.writing.take(_left(deadline))
        except SlotTimeout as err:
            raise RetriesExhausted(f"warehouse apply: over its budget ({err})") from None

    def _end_given_up_write(self, deadline: float | None) -> None:
        """Wait for a write given up on over its budget to end (its outcome is ignored: its
        events were rewound and are written again), before another write starts."""
        if not self.writing.busy:
            return
        try:
            self._take_write(deadline)
        except RetriesExhausted:
            raise
        except Exception as err:
            log.warning("the write given up on failed (its events are written again): %s", err)

    def _drain(self) -> Drained:
        """Empty the reducer and stage its rows. The reduced rows are released once staged:
        the staged table is all the write needs."""
        with self._timed("reduce"):
            window = self.reducer.drain()
            self._read_reducer()
            self.window.reset()
            self.observer.window_closed()
        decode_s, self.decode_s = self.decode_s, 0.0
        # The staging takes the rows over: each column is freed once staged.
        rows = [] if window.rows is None else [window.rows]
        window = replace(window, rows=None)
        batch = self.stage(window, decode_s, rows)
        return Drained(replace(window, versions=None), batch, decode_s)

    def _report(
        self, reason: FlushReason, drained: Drained, result: ApplyResult | None, started: float
    ) -> FlushReport:
        window, batch = drained.window, drained.batch
        report = FlushReport(
            batch_id="-" if batch is None else batch.batch_id, reason=reason,
            events=window.events, invalid=window.invalid,
            keys=0 if batch is None else batch.rows.num_rows, result=result, ranges=window.ranges,
            decode_s=drained.decode_s, total_s=time.perf_counter() - started,
        )
        self.observer.flushed(report)
        self.observer.buffered(self.absorbed[0], self.absorbed[2])
        return report

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Marks a flush in progress (revocations then leave the buffer alone); a failure is
        reported and raised."""
        self.in_flight = True
        try:
            yield
        except BaseException as err:
            self.observer.flush_failed(err)
            raise
        finally:
            self.in_flight = False

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.observer.timed(phase, time.perf_counter() - started)

    def stage(self, window: Reduced, decode_s: float,
              rows: list[pl.DataFrame] | None = None) -> Batch | None:
        """The window as a batch for the warehouse; None when it holds no row (every event of
        it was dead-lettered). ``rows``: the window's rows handed over by a caller that holds
        them nowhere else (``window.rows`` is then None): the list is emptied and each column
        freed once staged (``stage_taken``)."""
        if rows is None:
            rows = [] if window.rows is None else [window.rows]
        if not rows:
            return None
        now = datetime.now(UTC).replace(tzinfo=None)
        batch_id = uuid.uuid4().hex
        schema = self.decoder.contract.table
        synced_at = _utc_micros(now)
        return Batch(
            batch_id=batch_id,
            topic=self.options.topic,
            consumer_group=self.options.group_id,
            rows=stage_taken(rows, batch_id, synced_at, schema),
            schema=schema,
            ranges=window.ranges,
            events_in=window.events,
            invalid_events=window.invalid,
            started_at=now,
            decode_ms=int(decode_s * 1000),
            history=None if window.versions is None
            else stage_frame(window.versions, batch_id, synced_at, schema),
        )

    def retry(self, call: Callable[[], T], what: str, deadline: float | None = None) -> T:
        """Retry ``call``'s transient failures, waiting in the group: for ``retry_max_s``, or
        ``lock_wait_max_s`` while it waits on a lock; ``deadline`` (revocation) bounds both."""
        left = _left(deadline)
        if left is None:
            budget, lock_budget = self.options.retry_max_s, self.options.lock_wait_max_s
        else:
            budget = lock_budget = left
        return retry_transient(
            call, budget, what, sleep=self.wait_in_group, lock_wait_max_s=lock_budget
        )

    def commit(self, ranges: tuple[PartitionRange, ...]) -> None:
        """Commit the next offsets of the partitions this instance still owns (nothing when
        reading planned ranges: those are read again from their start if need be)."""
        owned = [r for r in ranges if r.partition in self.partitions.assigned]
        if self.consumer is None or not owned or self.stops is not None:
            return
        self._commit_offsets({r.partition: r.next_offset for r in owned})

    def _commit_offsets(self, offsets: dict[int, int]) -> None:
        """Commit ``offsets`` (all applied). A failure (a rebalance under way) is kept and
        retried with the next commit, or when ``until_caught_up`` finds the group behind."""
        assert self.consumer is not None
        pending = {p: o for p, o in self.commit_pending.items() if p in self.partitions.assigned}
        for partition, offset in offsets.items():
            pending[partition] = max(offset, pending.get(partition, offset))
        tps = [TopicPartition(self.options.topic, p, o) for p, o in sorted(pending.items())]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as err:
            # The batch is in the warehouse; a commit that never succeeds only means it is
            # re-read and re-applied as a no-op by the guard (at-least-once).
            log.warning("offset commit failed, retried with the next one: %s", err)
            self.commit_pending = pending
            return
        self.commit_pending = {}

    def retry_pending_commit(self) -> None:
        """Commit again what a failed commit left (partitions still owned only)."""
        pending = {p: o for p, o in self.commit_pending.items() if p in self.partitions.assigned}
        self.commit_pending = pending
        if pending and self.consumer is not None and self.stops is None:
            self._commit_offsets({})

    def wait_in_group(self, seconds: float, rewind: dict[int, int] | None = None) -> None:
        """Wait with the partitions paused, staying in the group (``Partitions.wait``)."""
        self.partitions.wait(seconds, rewind, stop=lambda: self.abandoned)

    # -- rebalances --------------------------------------------------------------------------

    def abandon(self) -> None:
        """Drop the buffer; nothing more is flushed or committed by this instance, but for the
        window whose write is in flight: committed if that write succeeds (a failure of it is
        not retried). The batch being decoded is waited for and dropped."""
        self.decoding.discard()  # its events join the reducer's count of what is dropped
        self._finish_write_once()
        self.abandoned = True
        held = 0 if self.held is None else len(self.held.kept)
        self.dropped_events = self.reducer.events + self.flushing_events + held
        self.held = None
        self.decoding_taken = None
        self.written = None
        self.reducer.clear()
        self._read_reducer()
        self.window.reset()

    def _finish_write_once(self) -> None:
        """Steps 5-7 for the write in flight, without retrying it: the run is stopping."""
        written = self.written
        if written is None:
            return
        self.written = None
        try:
            result = self.writing.take()
        except Exception as err:
            log.warning("the write in flight failed too, nothing of it is committed: %s", err)
            return
        self.commit(written.drained.window.ranges)
        self.flushing_events = 0
        self._report(written.reason, written.drained, result, written.started)

    def _drop_buffer(self, why: str, ranges: Iterable[PartitionRange]) -> None:
        """Forget buffered events without writing them; owned partitions re-read them (from the
        first offset of any range of theirs)."""
        self.reducer.clear()
        self._read_reducer()
        self.flushing_events = 0
        self.window.reset()
        rewind: dict[int, int] = {}
        for r in ranges:
            if r.partition in self.partitions.assigned:
                rewind[r.partition] = min(r.first, rewind.get(r.partition, r.first))
        log.warning("%s: dropped the buffer uncommitted; re-reading %s", why, rewind or "nothing")
        self.partitions.seek(rewind)

    def _uncommitted(self) -> tuple[PartitionRange, ...]:
        """The offsets of the write in flight and of the buffer (once settled)."""
        written = () if self.written is None else self.written.drained.window.ranges
        return (*written, *self.reducer.ranges())

    @contextmanager
    def _in_callback(self) -> Iterator[None]:
        """Inside a rebalance callback: waits sleep instead of polling, and the batches
        consumed join the window first."""
        self.partitions.in_callback = True
        try:
            self.settle_ingest()
            yield
        finally:
            self.partitions.in_callback = False

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        self.partitions.assign(tp.partition for tp in partitions)
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        self.observer.assignment(frozenset(self.partitions.assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish the write in flight (committing it while the partitions are still owned) and
        flush what is buffered of the revoked partitions, within the revocation budget; or drop
        both uncommitted: the new owner re-reads the revoked partitions, this one the others."""
        revoked = {tp.partition for tp in partitions}
        if self.abandoned or self.in_flight:
            log.info("partitions %s revoked", sorted(revoked))
        else:
            budget = self.options.revoke_budget_s
            deadline = time.monotonic() + budget
            with self._in_callback():
                ranges = self._uncommitted()
                try:
                    self.finish_write(deadline)
                    ranges = self._uncommitted()  # the write in flight is committed
                    if revoked & self.reducer.partitions():
                        if time.monotonic() >= deadline:
                            raise RetriesExhausted(
                                f"no time left of {budget:g}s to write the buffer")
                        log.info("partitions %s revoked: flushing what is buffered",
                                 sorted(revoked))
                        self.flush(FlushReason.REVOKE, deadline)
                    else:
                        log.info("partitions %s revoked", sorted(revoked))
                except RetriesExhausted as err:
                    self.partitions.release(revoked)
                    self._drop_buffer(f"revocation flush over budget ({err})", ranges)
        self.partitions.release(revoked)
        self.observer.assignment(frozenset(self.partitions.assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the buffer and re-read what it held of the partitions still owned; the write in
        flight is finished first (within the revocation budget) and committed for those."""
        self.partitions.release(tp.partition for tp in partitions)
        if not self.abandoned and not self.in_flight:
            lost = sorted(tp.partition for tp in partitions)
            deadline = time.monotonic() + self.options.revoke_budget_s
            with self._in_callback():
                ranges = self._uncommitted()
                try:
                    self.finish_write(deadline)
                except RetriesExhausted as err:
                    self._drop_buffer(f"partitions {lost} lost, write over budget ({err})",
                                      ranges)
                else:
                    if self.reducer.events:
                        self._drop_buffer(f"partitions {lost} lost", self.reducer.ranges())
        self.observer.assignment(frozenset(self.partitions.assigned))


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (``time.monotonic``), at least 0; None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _payload_bytes(values: list[bytes | None]) -> int:
    try:
        return sum(map(len, values))  # type: ignore[arg-type]
    except TypeError:  # a message without a value
        return sum(len(v) for v in values if v)


def _utc_micros(naive_utc: datetime) -> int:
    return int(naive_utc.replace(tzinfo=UTC).timestamp() * 1_000_000)
