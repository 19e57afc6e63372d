"""The run loop (``consumer.run.loop.SyncLoop``), one test per rule of its commit protocol.

The consumer is in memory (``tests.run.fakes.FakeConsumer``: per-partition logs, positions,
scripted rebalances served inside ``consume()``); the decoder is the real plain-Avro one, the
warehouse a real in-memory DuckDB. Retry budgets are a fraction of a second, and the window's age
runs on an injected clock, so each test takes well under a second (the registry backoff: one).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

import consumer.run.loop as run_loop
from batcher.ranges import PartitionRange
from batcher.window import FlushReason, WindowPolicy
from consumer.decode.contract import Contract
from consumer.decode.decoder import Decoder, PlainAvroDecoder
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.run.loop import LoopOptions, StopRun, SyncLoop
from consumer.run.observer import FlushReport, Observer, Observers
from consumer.run.partitions import Partitions
from consumer.run.retry import RetriesExhausted
from consumer.source.deadletters import DeadLetterError, DeadLetters
from consumer.telemetry.metrics import PrometheusObserver
from schemas import audit_schema
from schemas.evolution import Policy
from tests.integration.harness import BASE_US, Event, Produced, history, history_oracle, oracle
from tests.run.fakes import (
    IDLE,
    Assign,
    Call,
    FakeClock,
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    GatedDecoder,
    Journal,
    Lose,
    RecordingWarehouse,
    RegistryOutage,
    Revoke,
    ShutdownTimers,
    Step,
    deliver,
)
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError, WarehouseLockWait

TOPIC = "kyc.audit"
GROUP = "kyc-sync-unit"
LOCKED = TransientWarehouseError("database file is locked by another process")


class Recorder(Observer):
    def __init__(self) -> None:
        self.reports: list[FlushReport] = []
        self.failures: list[BaseException] = []
        self.polls = 0

    def polled(self) -> None:
        self.polls += 1

    def flushed(self, report: FlushReport) -> None:
        self.reports.append(report)

    def flush_failed(self, error: BaseException) -> None:
        self.failures.append(error)

    @property
    def reasons(self) -> list[FlushReason]:
        return [r.reason for r in self.reports]


@dataclass
class Rig:
    journal: Journal
    consumer: FakeConsumer
    warehouse: RecordingWarehouse
    observer: Recorder
    clock: FakeClock
    timers: ShutdownTimers
    loop: SyncLoop
    producer: FakeProducer | None

    def stop(self) -> Call:
        """A script step: the operator asks the loop to stop (SIGTERM)."""
        return Call(self.loop.request_stop)

    def count_commits(self, into: list[int]) -> Call:
        """A script step: note how many commits were made so far."""
        return Call(lambda: into.append(len(self.consumer.commits)))

    def count_flushes(self, into: list[int]) -> Call:
        """A script step: note how many windows were flushed so far (their write started; the
        commit follows once it is done, while the loop consumes)."""
        return Call(lambda: into.append(self.loop.writing.started))

    def write_ended(self) -> Call:
        """A script step: wait until the write in flight, if any, has ended (done or failed)."""
        writing = self.loop.writing
        return Call(lambda: wait_for(lambda: not writing.busy or writing.done()))

    def produce(self, events: Sequence[Event]) -> Produced:
        return self.consumer.produce(events)


class Rigs:
    def __init__(self, timers: ShutdownTimers) -> None:
        self.timers = timers
        self.made: list[Rig] = []

    def new(
        self, *, policy: WindowPolicy | None = None, decoder: Decoder | None = None,
        dead_letters: str | None = None, until_caught_up: bool = False,
        retry_max_s: float = 2.0, revoke_budget_s: float = 0.3, lock_wait_max_s: float = 2.0,
        caught_up_wait_s: float = 5.0,
        bounds: tuple[PartitionRange, ...] | None = None, keep_history: bool = False,
    ) -> Rig:
        journal = Journal()
        consumer = FakeConsumer(TOPIC, journal)
        warehouse = RecordingWarehouse(journal, history=keep_history)
        observer = Recorder()
        clock = FakeClock()
        producer = None if dead_letters is None else FakeProducer(journal, dead_letters)
        options = LoopOptions(
            topic=TOPIC, group_id=GROUP, until_caught_up=until_caught_up, consume_batch=100,
            poll_timeout_s=0.01, retry_max_s=retry_max_s, revoke_budget_s=revoke_budget_s,
            lock_wait_max_s=lock_wait_max_s, shutdown_timeout_s=7.0,
            caught_up_wait_s=caught_up_wait_s, progress_check_s=0.01, bounds=bounds,
            history=keep_history,
        )

        # The fakes stand in for confluent-kafka's typed classes: they are cast, not subclasses.
        def new_consumer(**config: Any) -> Consumer:
            return cast("Consumer", consumer.new_consumer(**config))

        loop = SyncLoop(
            options, new_consumer, decoder or plain_decoder(), warehouse,
            None if producer is None else DeadLetters(cast("Producer", producer), "kyc.audit.dlq"),
            policy or WindowPolicy(), clock=clock, observer=observer,
        )
        rig = Rig(journal, consumer, warehouse, observer, clock, self.timers, loop, producer)
        self.made.append(rig)
        return rig

    def dispose(self) -> None:
        for rig in self.made:
            rig.warehouse.dispose()


@pytest.fixture
def rigs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rigs]:
    timers = ShutdownTimers()
    monkeypatch.setattr(run_loop, "threading", timers)
    made = Rigs(timers)
    yield made
    made.dispose()


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout_s}s")
        time.sleep(0.001)


def plain_decoder() -> PlainAvroDecoder:
    return PlainAvroDecoder(audit_schema())


def updates(partition: int, *keys: int, start: int = 0) -> list[Event]:
    """One UPDATE per key on ``partition``, later ones later; each with its own goldtier_id."""
    return [
        Event(key, "UPDATE", BASE_US + (start + i) * 1_000, f"GT-{partition}-{start + i}",
              partition)
        for i, key in enumerate(keys)
    ]


def on(produced: Produced, *partitions: int) -> Produced:
    """The events of some partitions only."""
    return Produced([e for e in produced.events if e[1] in partitions])


def assert_commits_follow_applies(journal: Journal) -> None:
    """Every committed offset was covered by a batch the warehouse had applied before."""
    applied: dict[int, int] = {}
    for kind, detail in journal.entries:
        if kind == "applied":
            for partition, offset in cast("dict[int, int]", detail).items():
                applied[partition] = max(applied.get(partition, 0), offset)
        elif kind == "commit":
            for partition, offset in cast("dict[int, int]", detail).items():
                assert offset <= applied.get(partition, 0), (partition, offset, applied)


# -- 1. nothing is committed before the apply ------------------------------------------------


def test_offsets_are_committed_only_after_the_warehouse_applied_them(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    produced = rig.produce(updates(0, 1, 2, 3, 4, 5))
    rig.consumer.play(Assign((0,)), deliver(limit=2), deliver(limit=2), deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.journal.kinds("apply", "applied", "commit") == ["apply", "applied", "commit"] * 3
    assert rig.consumer.commits == [{0: 2}, {0: 4}, {0: 5}]
    assert_commits_follow_applies(rig.journal)
    assert rig.warehouse.current() == oracle(produced)


# -- 2. a failed apply commits nothing and the run raises ------------------------------------


def test_terminal_apply_failure_commits_nothing_and_stops_the_run(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3))
    rig.warehouse.failures.append(TerminalWarehouseError("insufficient privileges"))
    rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver())

    with pytest.raises(TerminalWarehouseError, match="insufficient privileges"):
        rig.loop.run()

    assert rig.warehouse.attempts == 1  # terminal: not retried
    assert rig.consumer.commits == []
    assert rig.warehouse.current() == {}
    assert len(rig.observer.failures) == 1
    assert rig.consumer.closed
    assert rig.warehouse.closed == 1


def test_apply_failing_past_its_retry_budget_commits_nothing(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3), retry_max_s=1.0)
    rig.warehouse.fail_with = LOCKED
    rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver())

    with pytest.raises(RetriesExhausted, match="warehouse apply"):
        rig.loop.run()

    assert rig.warehouse.attempts >= 2
    assert rig.consumer.commits == []
    assert rig.consumer.closed


# -- 3. a transient failure is retried, then commits once ------------------------------------


def test_lock_wait_outlasting_retry_max_is_retried_in_the_group_then_commits_once(
    rigs: Rigs,
) -> None:
    """A dead instance's lock outlasts ``retry_max_s``: the lock-wait budget keeps the flush
    retrying (polling the paused consumer) instead of stopping the run."""
    rig = rigs.new(policy=WindowPolicy(max_events=3), retry_max_s=0.2, lock_wait_max_s=10.0)
    rig.warehouse.failures.extend([WarehouseLockWait("locked by a dead session")] * 4)
    produced = rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())
    started = time.monotonic()

    assert rig.loop.run() == 0

    assert time.monotonic() - started > 0.2  # past retry_max_s, still retrying
    assert rig.warehouse.attempts == 5
    assert rig.consumer.commits == [{0: 3}]
    assert rig.consumer.paused_polls > 0
    assert rig.warehouse.current() == oracle(produced)


def test_lock_wait_past_its_budget_stops_the_run_committing_nothing(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3), retry_max_s=0.1, lock_wait_max_s=0.6)
    rig.warehouse.fail_with = WarehouseLockWait("locked by a dead session")
    rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver())

    with pytest.raises(RetriesExhausted, match=r"warehouse apply: still failing after 0\.6s"):
        rig.loop.run()

    assert rig.consumer.commits == []


def test_transient_apply_failure_is_retried_in_the_group_then_commits_once(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3))
    rig.warehouse.failures.append(LOCKED)
    produced = rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.warehouse.attempts == 2
    assert rig.consumer.commits == [{0: 3}]
    # The retry waited with the partitions paused, still polling (staying in the group).
    assert rig.journal.kinds("apply", "pause", "resume", "applied", "commit") == [
        "apply", "pause", "resume", "apply", "applied", "commit",
    ]
    assert rig.consumer.paused_polls > 0
    assert rig.observer.reasons == [FlushReason.EVENTS]
    assert rig.warehouse.current() == oracle(produced)


# -- 4. a revocation flush commits only what this instance still owns ------------------------


def test_revocation_flushes_and_commits_before_the_partitions_go(rigs: Rigs) -> None:
    rig = rigs.new()
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    rig.consumer.play(Assign((0, 1)), deliver(), Revoke((1,)), IDLE, rig.stop())

    assert rig.loop.run() == 0

    # Committed inside the callback, while partition 1 is still owned, and only then.
    kinds = rig.journal.kinds("revoking", "commit", "revoked")
    assert kinds[:3] == ["revoking", "commit", "revoked"]
    assert rig.consumer.commits == [{0: 3, 1: 2}]
    assert rig.observer.reasons == [FlushReason.REVOKE]
    assert rig.loop.partitions.assigned == set()  # closed: partition 0 left with the group
    assert rig.warehouse.current() == oracle(produced)


@pytest.mark.parametrize("step", [Revoke((1,)), Lose((1,))], ids=["revoked", "lost"])
def test_flush_commits_only_partitions_still_owned(rigs: Rigs, step: Step) -> None:
    """Partition 1 goes while the window's apply waits to be retried: the window is written
    whole, but only partition 0 is committed (the new owner re-reads 1, a no-op rewrite)."""
    rig = rigs.new(policy=WindowPolicy(max_events=5))
    rig.warehouse.failures.append(LOCKED)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    # The write fails in the background; the loop retries it once it sees it ended.
    rig.consumer.play(Assign((0, 1)), deliver(), rig.write_ended(), IDLE, step, rig.stop())

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 3}]
    assert rig.consumer.seeks == []
    assert rig.warehouse.current() == oracle(produced)


# -- 5. a revocation over its budget rewinds what is still owned -----------------------------


def test_revocation_over_budget_rewinds_owned_partitions_which_are_not_caught_up(
    rigs: Rigs,
) -> None:
    rig = rigs.new(until_caught_up=True, revoke_budget_s=0.3)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12, 13))
    caught_up: list[bool] = []
    rig.consumer.play(
        Assign((0, 1)),
        deliver(0),                # partition 0 read to its end (EOF)
        deliver(1, limit=2),       # partition 1 half read
        Call(lambda: setattr(rig.warehouse, "fail_with", LOCKED)),
        Revoke((1,)),              # the revocation flush runs over its budget
        Call(lambda: setattr(rig.warehouse, "fail_with", None)),
        IDLE,                      # nothing re-read yet: partition 0 is not caught up
        Call(lambda: caught_up.append(rig.loop.caught_up())),
        deliver(0),                # partition 0 re-read; partition 1's new owner commits it:
        Call(lambda: rig.consumer.group_offsets.update({1: 3})),
    )

    assert rig.loop.run() == 0

    assert caught_up == [False]
    # Rewound inside the callback, to the first dropped offset of the partition kept.
    assert rig.journal.kinds("revoking", "seek", "revoked")[:3] == ["revoking", "seek", "revoked"]
    assert rig.consumer.seeks == [(0, 0)]
    assert isinstance(rig.observer.failures[0], RetriesExhausted)
    assert rig.consumer.commits == [{0: 3}]  # partition 0, after re-reading it
    assert rig.observer.reasons == [FlushReason.CAUGHT_UP]
    assert rig.warehouse.current() == oracle(on(produced, 0))


def test_revocation_flush_gives_up_within_its_budget(rigs: Rigs) -> None:
    """A budget of 0.05 s: the first backoff alone (at least 0.2 s) must not be slept whole."""
    rig = rigs.new(revoke_budget_s=0.05)
    rig.warehouse.fail_with = LOCKED
    rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver(), Revoke((0,)), rig.stop())

    assert rig.loop.run() == 0

    assert rig.consumer.commits == []
    [seconds] = [s for kind, s in rig.consumer.callback_s if kind == "revoked"]
    assert seconds < 0.15


# -- 6. lost partitions drop the buffer, owned partitions are rewound ------------------------


def test_lost_partitions_drop_the_buffer_and_rewind_the_owned_ones(rigs: Rigs) -> None:
    rig = rigs.new()
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12, 13))
    rig.consumer.play(Assign((0, 1)), deliver(), Lose((1,)), IDLE, deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.journal.kinds("losing", "seek", "lost") == ["losing", "seek", "lost"]
    assert rig.consumer.seeks == [(0, 0)]
    assert rig.consumer.commits == [{0: 3}]
    assert rig.observer.reasons == [FlushReason.SHUTDOWN]
    assert rig.warehouse.current() == oracle(on(produced, 0))


# -- 7. a registry outage rewinds to the first unprocessed message ---------------------------


def test_registry_outage_rewinds_and_commits_nothing_past_the_first_unprocessed(
    rigs: Rigs,
) -> None:
    outage = RegistryOutage(plain_decoder(), stops=[2])
    rig = rigs.new(decoder=outage)
    outage.on_outage = rig.loop.request_stop
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    # One batch: 0@0 0@1 | 0@2 1@0 1@1 (the registry fails from the third message on).
    rig.consumer.play(Assign((0, 1)), deliver())

    assert rig.loop.run() == 0

    assert rig.consumer.seeks == [(0, 2), (1, 0)]
    assert rig.consumer.paused_polls > 0  # the backoff was spent polling, paused
    assert rig.consumer.commits == [{0: 2}]
    assert rig.warehouse.current() == oracle(Produced(on(produced, 0).events[:2]))


def test_registry_outage_re_reads_the_unprocessed_messages(rigs: Rigs) -> None:
    rig = rigs.new(decoder=RegistryOutage(plain_decoder(), stops=[2]), until_caught_up=True)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    rig.consumer.play(Assign((0, 1)), deliver())

    assert rig.loop.run() == 0

    assert rig.consumer.seeks == [(0, 2), (1, 0)]
    assert rig.consumer.commits == [{0: 3, 1: 2}]
    assert rig.warehouse.current() == oracle(produced)


@pytest.mark.parametrize("how", ["lost", "revoked over budget"])
def test_buffer_dropped_during_a_registry_backoff_is_re_read(rigs: Rigs, how: str) -> None:
    """0@0 0@1 1@0 1@1 are buffered, the registry fails at 1@2 (rewind: 1 to 1@2). During the
    backoff partition 0 goes and the buffer is dropped, 1 rewound to 1@0. When the backoff
    ends, it must not seek 1 forward to 1@2: 1@0 and 1@1 would never be written."""
    rig = rigs.new(decoder=RegistryOutage(plain_decoder(), stops=[4]), until_caught_up=True)
    produced = rig.produce(updates(0, 11, 12) + updates(1, 1, 2, 3))
    goes: list[Step] = [Lose((0,))] if how == "lost" else [
        Call(lambda: setattr(rig.warehouse, "fail_with", LOCKED)),
        Revoke((0,)),
        Call(lambda: setattr(rig.warehouse, "fail_with", None)),
    ]
    other_member_commits_0 = Call(lambda: rig.consumer.group_offsets.update({0: 2}))
    rig.consumer.play(Assign((0, 1)), deliver(), *goes, other_member_commits_0)

    assert rig.loop.run() == 0

    assert rig.warehouse.current() == oracle(on(produced, 1))
    assert rig.consumer.commits == [{1: 3}]
    assert rig.consumer.seeks[-1] == (1, 0)


def test_partition_reassigned_during_a_registry_backoff_is_read_from_its_commit(
    rigs: Rigs,
) -> None:
    rig = rigs.new(decoder=RegistryOutage(plain_decoder(), stops=[2]), until_caught_up=True)
    produced = rig.produce(updates(0, 1, 2, 3, 4))
    rig.consumer.play(Assign((0,)), deliver(), Lose((0,)), Assign((0,)))

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 4}]
    assert rig.warehouse.current() == oracle(produced)


# -- 8. dead letters are acknowledged before the commit --------------------------------------


def invalid_value(key: int) -> bytes:
    """A valid record of profile ``key``, to be sent under another message key."""
    return AuditEncoder(audit_schema()).encode(updates(0, key)[0].record())


def test_dead_letters_are_acknowledged_before_the_commit(rigs: Rigs) -> None:
    rig = rigs.new(dead_letters="ack")
    produced = rig.produce(updates(0, 1))
    rig.consumer.append(0, b"8", invalid_value(7))  # key mismatch: dead-lettered
    produced = rig.consumer.produce(updates(0, 2, start=2), produced)
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.journal.kinds("dead-letter sent", "dead-letter flush", "applied", "commit") == [
        "dead-letter sent", "dead-letter flush", "applied", "commit",
    ]
    assert rig.consumer.commits == [{0: 3}]
    assert rig.producer is not None
    headers = dict(rig.producer.acknowledged[0]["headers"])
    assert headers["kyc_sync.error_class"] == "key_mismatch"
    assert headers["kyc_sync.source_offset"] == "1"
    assert rig.observer.reports[0].invalid == 1
    assert rig.warehouse.current() == oracle(produced)


def test_window_of_dead_letters_only_commits_once_they_are_acknowledged(rigs: Rigs) -> None:
    rig = rigs.new(dead_letters="ack")
    rig.consumer.append(0, b"8", invalid_value(7))
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.warehouse.attempts == 0  # nothing to write
    assert rig.journal.kinds("dead-letter flush", "commit") == ["dead-letter flush", "commit"]
    assert rig.consumer.commits == [{0: 1}]


@pytest.mark.parametrize(
    ("mode", "error"), [("refuse", DeadLetterError), ("timeout", RetriesExhausted)]
)
def test_failed_dead_letter_flush_commits_nothing(
    rigs: Rigs, mode: str, error: type[Exception]
) -> None:
    rig = rigs.new(dead_letters=mode, retry_max_s=0.3)
    rig.produce(updates(0, 1))
    rig.consumer.append(0, b"8", invalid_value(7))
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())

    with pytest.raises(error):
        rig.loop.run()

    assert rig.warehouse.attempts == 0
    assert rig.consumer.commits == []


# -- 9. a requested stop flushes and commits the open window ---------------------------------


def test_stop_flushes_and_commits_the_open_window_then_leaves(rigs: Rigs) -> None:
    rig = rigs.new()
    produced = rig.produce(updates(0, 1, 2, 3))
    rig.consumer.play(Assign((0,)), deliver(), IDLE, rig.stop())

    assert rig.loop.run() == 0

    assert rig.observer.reasons == [FlushReason.SHUTDOWN]
    assert rig.consumer.commits == [{0: 3}]
    assert rig.journal.kinds("applied", "commit", "close", "warehouse closed") == [
        "applied", "commit", "close", "warehouse closed",
    ]
    assert rig.timers.started == [7.0]  # the shutdown deadline was armed
    assert rig.warehouse.current() == oracle(produced)


# -- 10. the window is due by age or by size, not before -------------------------------------


def test_window_flushes_when_its_age_is_reached_not_before(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_age_s=10.0))
    rig.produce(updates(0, 1, 2))
    flushes: list[int] = []
    rig.consumer.play(
        Assign((0,)), IDLE,
        rig.clock.at(50.0), deliver(),     # the window opens with its first event, at 50
        rig.clock.at(59.9), IDLE,
        rig.count_flushes(flushes), rig.clock.at(60.0), IDLE,
        rig.count_flushes(flushes), rig.stop(),
    )

    assert rig.loop.run() == 0

    assert flushes == [0, 1]
    assert rig.observer.reasons == [FlushReason.AGE]
    assert rig.consumer.commits == [{0: 2}]


def test_window_flushes_when_max_events_is_reached_not_before(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=5))
    rig.produce(updates(0, 1, 2, 3, 4, 5, 6, 7))
    flushes: list[int] = []
    rig.consumer.play(
        Assign((0,)), deliver(limit=4),
        rig.count_flushes(flushes), deliver(limit=1),
        rig.count_flushes(flushes), deliver(limit=2),
        rig.stop(),
    )

    assert rig.loop.run() == 0

    assert flushes == [0, 1]
    assert rig.observer.reasons == [FlushReason.EVENTS, FlushReason.SHUTDOWN]
    assert rig.consumer.commits == [{0: 5}, {0: 7}]


# -- 11. until_caught_up exits once every partition reached its end, committed ---------------


def test_until_caught_up_exits_after_every_partition_reached_its_end(rigs: Rigs) -> None:
    rig = rigs.new(until_caught_up=True)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    commits: list[int] = []
    rig.consumer.play(
        Assign((0, 1)), deliver(0),      # partition 0 at its end, 1 not read
        rig.count_commits(commits), deliver(1, limit=1),
        rig.count_commits(commits), deliver(1),
    )

    assert rig.loop.run() == 0

    assert commits == [0, 0]
    assert rig.consumer.polls == 3  # no poll after the last EOF
    assert rig.observer.reasons == [FlushReason.CAUGHT_UP]
    assert rig.consumer.commits == [{0: 3, 1: 2}]
    assert rig.journal.kinds("commit", "close")[-2:] == ["commit", "close"]
    assert rig.warehouse.current() == oracle(produced)


def test_a_message_read_after_its_partition_end_is_not_caught_up(rigs: Rigs) -> None:
    rig = rigs.new(until_caught_up=True)
    produced = rig.produce(updates(0, 1) + updates(1, 11))
    caught_up: list[bool] = []
    more = updates(0, 2, 3, start=1)
    rig.consumer.play(
        Assign((0, 1)), deliver(0),      # partition 0 at its end
        Call(lambda: rig.consumer.produce(more, produced)), deliver(0, limit=1),
        deliver(1),                      # partition 1 at its end; 0 is not any more
        Call(lambda: caught_up.append(rig.loop.caught_up())),
    )

    assert rig.loop.run() == 0

    assert caught_up == [False]
    assert rig.consumer.commits == [{0: 3, 1: 1}]
    assert rig.warehouse.current() == oracle(produced)


def test_partition_assigned_at_its_end_during_a_retry_wait_is_caught_up(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3), until_caught_up=True)
    rig.consumer.idle_limit_s = 1.0
    rig.warehouse.failures.append(LOCKED)
    produced = rig.produce(updates(0, 1, 2, 3))  # partition 1 is empty
    rig.consumer.play(Assign((0,)), deliver(), Assign((1,)))

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 3}]
    assert rig.warehouse.current() == oracle(produced)


# -- 12. decoding and writing overlap with consuming, the commit rules unchanged --------------


def running(rig: Rig) -> bool:
    """A write is in flight and has not ended."""
    return rig.loop.writing.busy and not rig.loop.writing.done()


def open_later(gate: threading.Event, seconds: float = 0.2) -> Call:
    """A script step: open ``gate`` from another thread ``seconds`` from now."""
    return Call(lambda: threading.Timer(seconds, gate.set).start())


def test_a_batch_is_decoded_while_the_next_one_is_fetched(rigs: Rigs) -> None:
    decoder = GatedDecoder(plain_decoder())
    rig = rigs.new(decoder=decoder, until_caught_up=True)
    produced = rig.produce(updates(0, 1, 2, 3, 4))
    decoding: list[bool] = []
    rig.consumer.play(
        Assign((0,)), deliver(limit=2),
        # Inside the next consume(): the first batch is being decoded meanwhile.
        Call(lambda: decoding.append(decoder.entered.wait(5.0))), Call(decoder.gate.set),
        deliver(),
    )

    assert rig.loop.run() == 0

    assert decoding == [True]
    assert decoder.threads
    assert all(t.startswith("kyc-sync-decode") for t in decoder.threads)
    assert rig.consumer.commits == [{0: 4}]
    assert rig.warehouse.current() == oracle(produced)


def test_batches_wait_merged_while_the_decoder_is_busy(rigs: Rigs) -> None:
    decoder = GatedDecoder(plain_decoder())
    rig = rigs.new(decoder=decoder, until_caught_up=True)
    produced = rig.produce(updates(0, *range(1, 11)))
    rig.consumer.play(
        Assign((0,)), deliver(limit=2),
        Call(lambda: decoder.entered.wait(5.0)),   # the first batch is being decoded
        deliver(limit=3), deliver(limit=3),       # these two wait, merged
        Call(decoder.gate.set), deliver(),
    )

    assert rig.loop.run() == 0

    assert decoder.sizes[0] == 2
    assert decoder.sizes[1] >= 6  # at least the two batches fetched meanwhile, as one
    assert sum(decoder.sizes) == 10
    assert rig.consumer.commits == [{0: 10}]
    assert rig.warehouse.current() == oracle(produced)


def test_a_window_is_written_while_the_next_one_is_consumed(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    gate = threading.Event()
    rig.warehouse.gate = gate
    produced = rig.produce(updates(0, 1, 2, 3, 4, 5))
    seen: list[tuple[bool, int]] = []
    rig.consumer.play(
        Assign((0,)), deliver(limit=2),    # window 1 is due: its write starts, held at the gate
        deliver(limit=1),                  # window 2 is consumed meanwhile
        Call(lambda: seen.append((running(rig), rig.consumer.positions[0]))),
        Call(gate.set), rig.write_ended(), deliver(limit=2), rig.stop(),
    )

    assert rig.loop.run() == 0

    assert seen == [(True, 3)]  # read up to offset 3 while window 1 was being written
    assert rig.consumer.commits == [{0: 2}, {0: 5}]
    assert_commits_follow_applies(rig.journal)
    assert rig.warehouse.current() == oracle(produced)


def test_revocation_waits_for_the_write_in_flight_and_commits_it_first(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3))
    gate = threading.Event()
    rig.warehouse.gate = gate
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    in_flight: list[bool] = []
    rig.consumer.play(
        Assign((0, 1)), deliver(0),        # partition 0's window is due: its write starts
        Call(lambda: in_flight.append(running(rig))), open_later(gate),
        Revoke((0, 1)), IDLE, rig.stop(),
    )

    assert rig.loop.run() == 0

    assert in_flight == [True]
    # The callback waited for the write and committed it while the partition was still owned.
    kinds = rig.journal.kinds("revoking", "applied", "commit", "revoked")
    assert kinds[:4] == ["revoking", "applied", "commit", "revoked"]
    assert rig.consumer.commits == [{0: 3}]
    assert rig.warehouse.current() == oracle(on(produced, 0))


def test_revocation_over_budget_with_a_write_in_flight_rewinds_both_windows(rigs: Rigs) -> None:
    """The write in flight keeps failing: the revocation gives up within its budget and the
    partitions kept re-read from the first offset of the window in flight, not of the buffer."""
    rig = rigs.new(policy=WindowPolicy(max_events=2), revoke_budget_s=0.3, until_caught_up=True)
    rig.warehouse.fail_with = LOCKED
    gate = threading.Event()
    rig.warehouse.gate = gate  # the first failure comes inside the callback, not before it
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    rig.consumer.play(
        Assign((0, 1)), deliver(0, limit=2),  # window 0@0-1 is due: its write will fail
        deliver(0, limit=1),                  # 0@2 buffered meanwhile
        Call(gate.set), Revoke((1,)),
        Call(lambda: setattr(rig.warehouse, "fail_with", None)),
        Assign((1,)),                         # back, to be read from its start
    )

    assert rig.loop.run() == 0

    assert rig.consumer.seeks == [(0, 0)]
    assert rig.consumer.group_offsets == {0: 3, 1: 2}
    assert_commits_follow_applies(rig.journal)
    assert rig.warehouse.current() == oracle(produced)


@pytest.mark.parametrize("step", [Revoke((1,)), Lose((1,))], ids=["revoked", "lost"])
def test_a_callback_gives_up_on_a_slow_write_within_its_budget(rigs: Rigs, step: Step) -> None:
    """The write in flight takes 2 s, the callback's budget is 0.3 s: the callback returns in
    time, both windows are dropped and partition 0 rewound; the next write waits for the one
    given up on, and the table converges."""
    rig = rigs.new(policy=WindowPolicy(max_events=3), revoke_budget_s=0.3, until_caught_up=True)
    gate = threading.Event()
    rig.warehouse.gate = gate
    produced = rig.produce(updates(0, 1, 2, 3, 4) + updates(1, 11, 12))
    rig.consumer.play(
        Assign((0, 1)), deliver(0, limit=3),  # window 0@0-2 due: its write is held 2 s
        deliver(0, limit=1), deliver(1, limit=1),  # 0@3 and 1@0 buffered meanwhile
        open_later(gate, 2.0), step,
        Assign((1,)),                         # back, to be read from its start
    )

    assert rig.loop.run() == 0

    kind = "revoked" if isinstance(step, Revoke) else "lost"
    seconds = [s for k, s in rig.consumer.callback_s if k == kind]
    assert seconds[0] < 0.3 + 0.4, seconds
    assert rig.consumer.seeks == [(0, 0)]
    assert isinstance(rig.observer.failures[0], RetriesExhausted)
    assert rig.consumer.group_offsets == {0: 4, 1: 2}
    assert_commits_follow_applies(rig.journal)
    assert rig.warehouse.current() == oracle(produced)


def test_a_revocation_does_not_start_writing_the_buffer_past_its_budget(rigs: Rigs) -> None:
    """Every write takes 0.5 s against a 0.3 s budget: the write in flight uses the budget up,
    and the buffer is dropped, not written in the callback."""
    rig = rigs.new(policy=WindowPolicy(max_events=3), revoke_budget_s=0.3)
    rig.warehouse.delay_s = 0.5
    rig.produce(updates(0, 1, 2, 3, 4) + updates(1, 11, 12))
    rig.consumer.play(
        Assign((0, 1)), deliver(0, limit=3),   # window 1 due: its write starts
        deliver(0, limit=1),                   # 0@3 buffered
        Revoke((0, 1)), IDLE, rig.stop(),
    )

    assert rig.loop.run() == 0

    seconds = [s for k, s in rig.consumer.callback_s if k == "revoked"]
    assert seconds[0] < 0.3 + 0.4, seconds
    assert rig.warehouse.attempts == 1
    assert rig.consumer.commits == []


def test_the_revocation_budget_is_one_deadline_for_every_step(rigs: Rigs) -> None:
    """The dead-letter flush takes 0.4 s of a 0.5 s budget: the write gets what is left, not
    the budget again; the buffer is dropped and re-read."""
    rig = rigs.new(policy=WindowPolicy(max_events=100), revoke_budget_s=0.5,
                   dead_letters="ack")
    assert rig.producer is not None
    acknowledge = rig.producer.flush

    def slow_flush(timeout: float = -1) -> int:
        time.sleep(0.4)
        return acknowledge(timeout)

    rig.producer.flush = slow_flush  # type: ignore[method-assign]
    rig.produce(updates(1, 11, 12))
    rig.consumer.append(1, b"k", b"\x00not avro")
    rig.consumer.play(
        Assign((0, 1)), deliver(1),
        Call(lambda: setattr(rig.warehouse, "delay_s", 0.45)),
        Revoke((1,)), IDLE, rig.stop(),
    )

    assert rig.loop.run() == 0

    seconds = [s for k, s in rig.consumer.callback_s if k == "revoked"]
    assert seconds[0] < 0.5 + 0.3, seconds
    assert isinstance(rig.observer.failures[0], RetriesExhausted)
    assert rig.consumer.commits == []


def test_a_revocation_over_budget_rewinds_past_the_window_it_committed(rigs: Rigs) -> None:
    """The callback commits the write in flight, then the buffer's flush runs over budget: the
    partition kept is re-read from the first offset dropped, not from the committed window."""
    rig = rigs.new(policy=WindowPolicy(max_events=3), revoke_budget_s=0.3, until_caught_up=True)
    gate = threading.Event()
    rig.warehouse.gate = gate
    produced = rig.produce(updates(0, 1, 2, 3, 4) + updates(1, 11, 12))
    rig.consumer.play(
        Assign((0, 1)), deliver(0, limit=3),     # window 0@0-2 due: its write held at the gate
        deliver(0, limit=1), deliver(1, limit=1),  # 0@3 and 1@0 buffered meanwhile
        Call(gate.set), rig.write_ended(),     # done; committed by the callback below
        Call(lambda: rig.warehouse.failures.extend([LOCKED] * 20)),  # the buffer's flush fails
        Revoke((1,)),
        Call(rig.warehouse.failures.clear),
        Assign((1,)),
    )

    assert rig.loop.run() == 0

    assert rig.consumer.commits[0] == {0: 3}
    assert rig.consumer.seeks == [(0, 3)]
    assert rig.consumer.group_offsets == {0: 4, 1: 2}
    assert rig.warehouse.current() == oracle(produced)


def test_events_consumed_while_a_window_is_written_keep_their_age(rigs: Rigs) -> None:
    """Window 1's report clears the age of what it applied only: offset 2, consumed while it
    was written, is still pending in the lag and freshness metrics."""
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    metrics = PrometheusObserver(TOPIC)
    rig.loop.observer = Observers([rig.observer, metrics])
    gate = threading.Event()
    rig.warehouse.gate = gate
    rig.produce(updates(0, 1, 2, 3))
    seen: list[dict[int, list[int]]] = []

    def pending() -> None:
        seen.append({p: [offset for offset, _ in e] for p, e in metrics.pending.items()})

    rig.consumer.play(
        Assign((0,)), deliver(limit=2),      # window 1 (0-1) due: its write is held
        deliver(limit=1),                    # offset 2 consumed meanwhile, decoded:
        Call(lambda: wait_for(rig.loop.decoding.done)), IDLE, Call(pending),
        Call(gate.set), rig.write_ended(), IDLE, Call(pending),  # window 1 reported
        rig.stop(),
    )

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 2}, {0: 3}]
    assert seen == [{0: [0, 2]}, {0: [2]}]
    assert metrics.pending == {}


def test_shutdown_waits_for_the_write_in_flight_then_flushes_the_rest(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=3))
    gate = threading.Event()
    rig.warehouse.gate = gate
    produced = rig.produce(updates(0, 1, 2, 3, 4, 5))
    in_flight: list[bool] = []
    rig.consumer.play(
        Assign((0,)), deliver(limit=3), deliver(limit=2),
        Call(lambda: in_flight.append(running(rig))), rig.stop(), open_later(gate),
    )

    assert rig.loop.run() == 0

    assert in_flight == [True]
    assert rig.observer.reasons == [FlushReason.EVENTS, FlushReason.SHUTDOWN]
    assert rig.journal.kinds("applied", "commit", "close") == [
        "applied", "commit", "applied", "commit", "close",
    ]
    assert rig.consumer.commits == [{0: 3}, {0: 5}]
    assert rig.warehouse.current() == oracle(produced)


def test_a_failed_write_stops_the_run_and_nothing_after_it_is_committed(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    produced = rig.produce(updates(0, 1, 2, 3, 4, 5, 6))
    rig.consumer.play(
        Assign((0,)), deliver(limit=2), rig.write_ended(),  # window 1 written
        Call(lambda: setattr(rig.warehouse, "fail_with",
                             TerminalWarehouseError("disk full"))),
        deliver(limit=2),                                    # window 2: its write fails
        rig.write_ended(), deliver(limit=2),                 # window 3 consumed meanwhile
    )

    with pytest.raises(TerminalWarehouseError, match="disk full"):
        rig.loop.run()

    assert rig.consumer.commits == [{0: 2}]
    assert rig.warehouse.current() == oracle(Produced(produced.events[:2]))
    assert rig.consumer.closed


def test_windows_commit_in_order_with_at_most_one_write_in_flight(rigs: Rigs) -> None:
    """Writes are slower than consuming: each flush waits for the write before it."""
    rig = rigs.new(policy=WindowPolicy(max_events=2), until_caught_up=True)
    rig.warehouse.delay_s = 0.05
    produced = rig.produce(updates(0, *range(1, 11)))
    rig.consumer.play(Assign((0,)), *[deliver(limit=1) for _ in range(10)])

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: n} for n in (2, 4, 6, 8, 10)]
    assert [r.ranges[0].next_offset for r in rig.observer.reports] == [2, 4, 6, 8, 10]
    assert rig.warehouse.most_active == 1
    assert_commits_follow_applies(rig.journal)
    assert rig.warehouse.current() == oracle(produced)


def test_registry_outage_rewinds_the_batch_fetched_meanwhile_too(rigs: Rigs) -> None:
    """Batch A fails at its second message while batch B is already fetched: B is dropped and
    re-read with A's rest, so partition 1 (only in B) is not skipped."""
    rig = rigs.new(decoder=RegistryOutage(plain_decoder(), stops=[1]), until_caught_up=True)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    rig.consumer.play(Assign((0, 1)), deliver(0, limit=2), deliver())

    assert rig.loop.run() == 0

    assert rig.consumer.seeks == [(0, 1), (1, 0)]
    assert rig.consumer.commits == [{0: 3, 1: 2}]
    assert rig.warehouse.current() == oracle(produced)


# -- 13. the table equals the oracle over a scripted history ---------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_latest_per_key_equals_the_oracle_over_many_batches(rigs: Rigs, seed: int) -> None:
    rng = random.Random(seed)
    rig = rigs.new(policy=WindowPolicy(max_events=13), until_caught_up=True)
    produced = rig.produce(history(rng, 120, 25, 3))
    steps: list[Step] = [Assign((0, 1, 2))]
    steps += [deliver(limit=rng.randint(1, 17)) for _ in range(6)]
    steps += [Revoke((2,)), deliver(limit=9), Assign((2,))]  # 2 goes away and comes back
    steps += [deliver(limit=rng.randint(1, 17)) for _ in range(3)]
    rig.consumer.play(*steps)

    assert rig.loop.run() == 0

    assert rig.warehouse.current() == oracle(produced)
    assert rig.consumer.group_offsets == {p: len(rig.consumer.logs[p]) for p in (0, 1, 2)}
    assert len(rig.warehouse.applied) > 3
    assert_commits_follow_applies(rig.journal)


# -- planned ranges (full refresh, verify) ----------------------------------------------------


def test_bounded_reads_exactly_the_planned_ranges_from_their_first_offsets(rigs: Rigs) -> None:
    """Assigned at the planned first offset (never the group's position nor an
    auto.offset.reset), messages past the planned end ignored, nothing committed."""
    bounds = (PartitionRange(0, 1, 3), PartitionRange(1, 0, 2), PartitionRange(2, 0, 0))
    rig = rigs.new(bounds=bounds, policy=WindowPolicy(max_events=2))
    produced = rig.produce(updates(0, 1, 2, 3, 4) + updates(1, 11, 12, 13))
    rig.consumer.group_offsets.update({0: 4, 1: 3})  # the group's own offsets: not where it reads

    assert rig.loop.run() == 0

    read = Produced([e for e in produced.events
                     if any(r.partition == e[1] and r.first <= e[2] < r.next_offset
                            for r in bounds)])
    assert rig.warehouse.current() == oracle(read)
    assert rig.journal.kinds("assign")[0] == "assign"
    assert rig.journal.entries[0] == ("assign", [(0, 1), (1, 0), (2, 0)])
    assert rig.consumer.commits == []
    covered = {(r.partition, r.first, r.next_offset)
               for report in rig.observer.reports for r in report.ranges}
    assert covered <= {(0, 1, 2), (0, 2, 3), (0, 1, 3), (1, 0, 2), (1, 0, 1), (1, 1, 2)}
    assert sum(report.events for report in rig.observer.reports) == 4


def test_bounded_finishes_when_every_range_is_read_even_if_the_log_grows(rigs: Rigs) -> None:
    bounds = (PartitionRange(0, 0, 2),)
    rig = rigs.new(bounds=bounds)
    produced = rig.produce(updates(0, 1, 2))
    more = updates(0, 3, 4, start=2)
    rig.consumer.play(deliver(0, limit=1), Call(lambda: rig.consumer.produce(more)),
                      deliver(0))

    assert rig.loop.run() == 0

    assert rig.warehouse.current() == oracle(produced)  # keys 3 and 4 are past the plan
    assert rig.observer.reasons == [FlushReason.CAUGHT_UP]


class Discards(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.discards: dict[str, int] = {}

    def discarded(self, field: str, events: int) -> None:
        self.discards[field] = self.discards.get(field, 0) + events


def evolved_rig(rigs: Rigs, policy: Policy) -> tuple[Rig, Discards]:
    schema = audit_schema()
    schema["fields"] = [*schema["fields"],
                        {"name": "risk_rating", "type": ["null", "string"], "default": None}]
    rig = rigs.new(decoder=PlainAvroDecoder(schema, Contract(policy)), until_caught_up=True)
    observer = Discards()
    rig.loop.observer = observer
    encoder = AuditEncoder(schema)
    for key in (1, 2, 3):
        record = Event(key, "INSERT", 1_700_000_000_000_000 + key, f"GT-{key}", 0).record()
        rig.consumer.append(0, message_key(key), encoder.encode(record | {"risk_rating": "hi"}))
    rig.consumer.play(Assign((0,)), deliver())
    return rig, observer


def test_discarded_fields_are_counted_and_an_evolved_column_is_written(rigs: Rigs) -> None:
    rig, observer = evolved_rig(rigs, "discard")
    assert rig.loop.run() == 0
    assert observer.discards == {"risk_rating": 3}
    assert "risk_rating" not in rig.warehouse.inner.table_state().schema.names

    rig, observer = evolved_rig(rigs, "evolve")
    assert rig.loop.run() == 0
    assert observer.discards == {}
    batch = rig.warehouse.applied[0]
    assert [c.column.name for c in batch.schema.changes] == ["risk_rating"]
    assert rig.warehouse.inner.fetch(
        "SELECT DISTINCT risk_rating FROM main.kyc_profile_state") == [("hi",)]
@pytest.mark.parametrize("seed", [1, 2])
def test_history_keeps_every_version_over_many_batches(rigs: Rigs, seed: int) -> None:
    """With history on, each flush stages every distinct version the window saw, not only the
    winners: the history table ends equal to the oracle's intervals."""
    rng = random.Random(seed)
    rig = rigs.new(policy=WindowPolicy(max_events=13), until_caught_up=True, keep_history=True)
    produced = rig.produce(history(rng, 120, 25, 3))
    steps: list[Step] = [Assign((0, 1, 2))]
    steps += [deliver(limit=rng.randint(1, 17)) for _ in range(6)]
    steps += [Revoke((2,)), deliver(limit=9), Assign((2,))]
    steps += [deliver(limit=rng.randint(1, 17)) for _ in range(3)]
    rig.consumer.play(*steps)

    assert rig.loop.run() == 0

    assert rig.warehouse.current() == oracle(produced)
    expected = {
        key: [(row[0][0], row[1], row[4]) for row in rows]
        for key, rows in history_oracle(produced).items()
    }
    assert rig.warehouse.history() == expected
    batches = rig.warehouse.applied
    assert any(b.history is not None and b.history.num_rows > b.rows.num_rows for b in batches)


# -- 13. until_caught_up: the group, not this instance, has read every partition --------------


def test_partitions_held_by_another_member_are_waited_for(rigs: Rigs) -> None:
    """A killed member still holds 1 and 3 until its session times out: reading 0 and 2 to
    their end is not caught up. Then the group hands 1 and 3 over; they are read, and only
    then the run ends."""
    rig = rigs.new(until_caught_up=True)
    produced = rig.produce(history(random.Random(4), 60, 20, 4))
    waited: list[bool] = []
    rig.consumer.play(
        Assign((0, 2)), deliver(), IDLE, IDLE,
        Call(lambda: waited.append(rig.loop.caught_up())),  # own partitions: done
        Assign((1, 3)),                                   # the session of the other expired
    )

    assert rig.loop.run() == 0

    assert waited == [True]
    assert rig.consumer.group_offsets == {p: len(rig.consumer.logs[p]) for p in range(4)}
    assert rig.warehouse.current() == oracle(produced)
    assert rig.observer.reasons[0] == FlushReason.CAUGHT_UP


def test_partitions_nobody_reads_stop_the_run_naming_them(rigs: Rigs) -> None:
    rig = rigs.new(until_caught_up=True, caught_up_wait_s=0.3)
    rig.produce(updates(0, 1, 2) + updates(1, 11) + updates(2, 21, 22))
    rig.consumer.idle_limit_s = 10.0
    rig.consumer.play(Assign((0,)), deliver())

    with pytest.raises(StopRun) as stopped:
        rig.loop.run()

    message = str(stopped.value)
    assert "not caught up" in message
    assert "1 (committed none, end 1), 2 (committed none, end 2)" in message
    assert rig.consumer.commits == [{0: 2}]  # its own partition is committed
    assert rig.loop.dropped_events == 0


def test_the_wait_for_other_members_restarts_while_they_commit(rigs: Rigs) -> None:
    """Another member commits partition 1 in steps, each within the wait but all together
    longer than it: the run waits for it to finish."""
    rig = rigs.new(until_caught_up=True, caught_up_wait_s=0.4)
    produced = rig.produce(updates(0, 1) + updates(1, 11, 12, 13))
    steps: list[Step] = [Assign((0,)), deliver()]
    def other_member_commits(offset: int) -> Call:
        return Call(lambda: rig.consumer.group_offsets.update({1: offset}))

    for offset in (1, 2, 3):
        steps += [Call(lambda: time.sleep(0.25)), other_member_commits(offset), IDLE]
    rig.consumer.play(*steps)

    assert rig.loop.run() == 0

    assert rig.consumer.group_offsets == {0: 1, 1: 3}
    assert rig.warehouse.current() == oracle(on(produced, 0))


def test_until_caught_up_waits_for_its_own_join_before_judging_the_group(rigs: Rigs) -> None:
    """The group is already caught up while this instance is still joining: it leaves only
    after its first assignment (here an empty one), not in the middle of the rebalance."""
    rig = rigs.new(until_caught_up=True)
    rig.produce(updates(0, 1, 2))
    rig.consumer.group_offsets.update({0: 2})
    rig.consumer.play(IDLE, IDLE, IDLE, Assign(()))

    assert rig.loop.run() == 0

    assert rig.journal.kinds("assign", "close") == ["assign", "close"]
    assert rig.consumer.commits == []


def test_empty_partitions_nobody_owns_are_caught_up(rigs: Rigs) -> None:
    rig = rigs.new(until_caught_up=True)
    rig.consumer.partition_count = 3
    produced = rig.produce(updates(0, 1, 2))
    rig.consumer.play(Assign((0,)), deliver())

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 2}]
    assert rig.warehouse.current() == oracle(produced)


# -- 14. a position the client cannot deliver stops the run before it ------------------------


def test_undeliverable_message_set_stops_without_committing_past_it(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    rig.produce(updates(0, 1, 2))                           # 0@0, 0@1: flushed and committed
    bad = rig.consumer.append_error(0, KafkaError(KafkaError._BAD_COMPRESSION))
    rig.produce(updates(0, 3, 4, start=2))
    rig.produce(updates(1, 11))
    rig.consumer.play(Assign((0, 1)), deliver(0, limit=2), deliver(1), deliver(0))

    with pytest.raises(StopRun) as stopped:
        rig.loop.run()

    assert str(stopped.value).startswith(f"Kafka cannot deliver {TOPIC}[0]@{bad}: ")
    assert all(offsets.get(0, 0) <= bad for offsets in rig.consumer.commits)
    assert rig.consumer.group_offsets.get(0) == 2
    assert rig.loop.dropped_events == 1  # 1@0 was buffered, never committed


def test_errors_without_a_position_are_only_logged(rigs: Rigs) -> None:
    rig = rigs.new(until_caught_up=True)
    produced = rig.produce(updates(0, 1))
    transport = FakeMessage(TOPIC, -1, -1001, None, None,
                            error=KafkaError(KafkaError._TRANSPORT))
    rig.consumer.play(Assign((0,)), Call(lambda: rig.loop.ingest(
        [cast("Message", transport)])), deliver())

    assert rig.loop.run() == 0

    assert rig.warehouse.current() == oracle(produced)


# -- 15. liveness: every poll is reported, waits included ------------------------------------


def test_polls_are_reported_while_waiting_to_retry(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=1), retry_max_s=1.0)
    rig.warehouse.failures.extend([LOCKED, LOCKED])
    rig.produce(updates(0, 1))
    rig.consumer.play(Assign((0,)), deliver(), rig.stop())

    assert rig.loop.run() == 0

    assert rig.observer.polls >= rig.consumer.polls > rig.consumer.paused_polls > 0


def test_a_dropped_buffer_is_re_read_even_if_its_partition_looked_read(
    rigs: Rigs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 6, the other way round: with the rewind not taking the partition out of
    ``at_end`` (the old defect, put back here), the loop still does not end before the dropped
    events are re-read and committed, because the group's commits decide."""
    monkeypatch.setattr(Partitions, "unread", lambda self, partitions: None)
    rig = rigs.new(until_caught_up=True, revoke_budget_s=0.3)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12, 13))
    rig.consumer.play(
        Assign((0, 1)),
        deliver(0),                # partition 0 read to its end (EOF)
        deliver(1, limit=2),
        Call(lambda: setattr(rig.warehouse, "fail_with", LOCKED)),
        Revoke((1,)),              # the buffer of 0 and 1 is dropped, 0 rewound
        Call(lambda: setattr(rig.warehouse, "fail_with", None)),
        Call(lambda: rig.consumer.group_offsets.update({1: 3})),  # 1's new owner is done
    )

    assert rig.loop.run() == 0

    assert rig.consumer.seeks == [(0, 0)]
    assert rig.consumer.commits == [{0: 3}]
    assert rig.warehouse.current() == oracle(on(produced, 0))


def test_a_failed_commit_is_made_again_before_the_run_counts_as_caught_up(rigs: Rigs) -> None:
    """The batch is in the warehouse but its commit failed (a rebalance under way): the group
    is behind on a partition this instance has read to its end. The commit is made again; the
    run neither ends with the group behind nor waits for a commit that never comes."""
    rig = rigs.new(until_caught_up=True, caught_up_wait_s=2.0)
    produced = rig.produce(updates(0, 1, 2, 3) + updates(1, 11, 12))
    rig.consumer.failing_commits = 1
    rig.consumer.play(Assign((0, 1)), deliver())

    assert rig.loop.run() == 0

    assert rig.journal.kinds("commit failed", "commit") == ["commit failed", "commit"]
    assert rig.consumer.group_offsets == {0: 3, 1: 2}
    assert rig.warehouse.current() == oracle(produced)


def test_a_failed_commit_goes_with_the_next_one(rigs: Rigs) -> None:
    rig = rigs.new(policy=WindowPolicy(max_events=2))
    rig.produce(updates(0, 1, 2) + updates(1, 11, 12))
    rig.consumer.failing_commits = 1
    rig.consumer.play(Assign((0, 1)), deliver(0), deliver(1), rig.stop())

    assert rig.loop.run() == 0

    assert rig.consumer.commits == [{0: 2, 1: 2}]
