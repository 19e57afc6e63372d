"""Unit tests of the Prometheus observer: every hook -> the metrics it drives, lag and freshness
computed at scrape time, readiness, names by Prometheus conventions, and the HTTP endpoint on a
loopback port. No Kafka."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, KafkaError, Message
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from batcher.ranges import PartitionRange
from batcher.window import FlushReason
from consumer.run.observer import FlushReport, Observer
from consumer.settings import KafkaSettings, MetricsSettings
from consumer.telemetry.metrics import MetricsServer, PrometheusObserver, serving
from warehouse.base import ApplyResult

NOW = 1_800_000_000.0


@dataclass
class Msg:
    """The parts of ``confluent_kafka.Message`` the observer reads."""

    p: int
    o: int
    ts_ms: int = 0
    eof: bool = False
    kind: int = TIMESTAMP_CREATE_TIME

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self.eof else None

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (self.kind, self.ts_ms) if self.kind != TIMESTAMP_NOT_AVAILABLE else (0, -1)


def batch(*msgs: Msg) -> list[Message]:
    return cast("list[Message]", list(msgs))


class FakeConsumer:
    def __init__(self, high: dict[int, int], committed: dict[int, int]) -> None:
        self.high = high
        self.committed_offsets = committed
        self.committed_calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False
                              ) -> tuple[int, int]:
        return (0, self.high.get(tp.partition, -1001))

    def committed(self, tps: list[Any], timeout: float = 0) -> list[Any]:
        self.committed_calls += 1
        for tp in tps:
            tp.offset = self.committed_offsets.get(tp.partition, -1001)
        return tps


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def observer(clock: Clock | None = None) -> PrometheusObserver:
    clock = clock or Clock(NOW)
    return PrometheusObserver("audit", CollectorRegistry(), clock=clock, monotonic=clock)


def value(obs: PrometheusObserver, name: str, **labels: str) -> float | None:
    return obs.registry.get_sample_value(name, labels)


def report(*ranges: tuple[int, int, int], result: ApplyResult | None = None) -> FlushReport:
    return FlushReport(
        "b1", FlushReason.AGE, events=10, invalid=1, keys=4, result=result,
        ranges=tuple(PartitionRange(*r) for r in ranges), decode_s=0.02, total_s=0.3,
    )


RESULT = ApplyResult(inserted=3, updated=2, deleted=1, skipped_stale=4,
                     min_op_time=datetime(2027, 1, 15, 7, 0),
                     max_op_time=datetime(2027, 1, 15, 8, 0), write_s=0.2)


def test_it_is_an_observer_with_prefixed_conventional_names() -> None:
    obs = observer()
    assert isinstance(obs, Observer)
    obs.assignment(frozenset({0}))
    names = {m.name for m in obs.registry.collect()}
    assert names == {
        "kyc_sync_events_consumed", "kyc_sync_events_decoded", "kyc_sync_events_dead_lettered",
        "kyc_sync_fields_discarded", "kyc_sync_batches", "kyc_sync_rows",
        "kyc_sync_phase_duration_seconds",
        "kyc_sync_buffered_events", "kyc_sync_buffered_keys", "kyc_sync_assigned_partitions",
        "kyc_sync_last_success_timestamp_seconds", "kyc_sync_partition_lag_messages",
        "kyc_sync_partition_lag_seconds", "kyc_sync_freshness_seconds",
        "kyc_sync_newest_op_time_timestamp_seconds",
    }
    counters = {m.name for m in obs.registry.collect() if m.type == "counter"}
    assert all(s.name.endswith(("_total", "_created")) for m in obs.registry.collect()
               if m.name in counters for s in m.samples)


def test_counters_follow_the_hooks() -> None:
    obs = observer()
    obs.consumed(batch(Msg(0, 0), Msg(0, 1), Msg(1, 0), Msg(1, 1, eof=True)), decoded=2)
    obs.dead_lettered("schema")
    obs.buffered(2, 2)
    obs.discarded("risk_rating", 5)
    obs.discarded("risk_rating", 2)

    assert value(obs, "kyc_sync_fields_discarded_total", field="risk_rating") == 7
    assert value(obs, "kyc_sync_events_consumed_total") == 3  # the EOF is not a message
    assert value(obs, "kyc_sync_events_decoded_total") == 2
    assert value(obs, "kyc_sync_events_dead_lettered_total", error_class="schema") == 1
    assert value(obs, "kyc_sync_buffered_events") == 2
    assert value(obs, "kyc_sync_batches_total", outcome="ok") == 0

    obs.timed("reduce", 0.01)
    obs.timed("commit", 0.03)
    obs.flushed(report((0, 0, 2), (1, 0, 1), result=RESULT))

    assert value(obs, "kyc_sync_batches_total", outcome="ok") == 1
    for outcome, count in [("inserted", 3), ("updated", 2), ("deleted", 1),
                           ("skipped_stale", 4)]:
        assert value(obs, "kyc_sync_rows_total", outcome=outcome) == count
    for phase, seconds in [("decode", 0.02), ("reduce", 0.01), ("write", 0.2),
                           ("commit", 0.03), ("flush", 0.3)]:
        assert value(obs, "kyc_sync_phase_duration_seconds_count", phase=phase) == 1
        assert value(obs, "kyc_sync_phase_duration_seconds_sum", phase=phase) == seconds
    assert value(obs, "kyc_sync_last_success_timestamp_seconds") == NOW

    obs.flush_failed(RuntimeError("boom"))
    assert value(obs, "kyc_sync_batches_total", outcome="failed") == 1


def test_a_batch_of_only_invalid_events_counts_no_rows() -> None:
    obs = observer()
    obs.flushed(report((0, 0, 3)))
    assert value(obs, "kyc_sync_batches_total", outcome="ok") == 1
    assert value(obs, "kyc_sync_rows_total", outcome="inserted") == 0
    assert value(obs, "kyc_sync_phase_duration_seconds_count", phase="write") == 0
    assert value(obs, "kyc_sync_freshness_seconds") is None


def test_lag_in_messages_and_seconds() -> None:
    clock = Clock(NOW)
    obs = observer(clock)
    consumer = FakeConsumer(high={0: 100, 1: 50, 2: 7}, committed={0: 90, 1: 50})
    obs.assignment(frozenset({0, 1, 2}))
    obs.tick(consumer)  # type: ignore[arg-type]

    # 0: committed 90 of 100; 1: caught up; 2: nothing committed -> from the log start (0)
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") == 10
    assert value(obs, "kyc_sync_partition_lag_messages", partition="1") == 0
    assert value(obs, "kyc_sync_partition_lag_messages", partition="2") == 7
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="1") == 0
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") is None  # not read yet

    first_ms = int((NOW - 30) * 1000)
    obs.consumed(batch(Msg(0, 90, first_ms), Msg(0, 91, first_ms + 5000), Msg(2, 0, first_ms)), 3)
    clock.now += 10
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 40
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="2") == 40

    obs.flushed(report((0, 90, 92), (2, 0, 1), result=RESULT))
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") == 8
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") is None  # until read
    obs.consumed(batch(Msg(0, 92, int(clock.now * 1000) - 2000)), 1)
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 2

    consumer.high[0] = 92  # caught up after all
    clock.now += 1.5
    obs.tick(consumer)  # type: ignore[arg-type]
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") == 0
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 0


def test_events_consumed_while_a_window_is_written_stay_pending() -> None:
    """The loop consumes the next window while one is written: that window's report must not
    make the events read meanwhile look applied."""
    clock = Clock(NOW)
    obs = observer(clock)
    consumer = FakeConsumer(high={0: 100, 1: 100}, committed={0: 0, 1: 0})
    obs.assignment(frozenset({0, 1}))
    obs.tick(consumer)  # type: ignore[arg-type]
    old_ms, new_ms = int((NOW - 60) * 1000), int((NOW - 20) * 1000)
    obs.consumed(batch(Msg(0, 0, old_ms), Msg(0, 1, old_ms)), 2)   # window 1
    obs.window_closed()                                             # drained, being written
    obs.consumed(batch(Msg(0, 2, new_ms), Msg(1, 0, new_ms)), 2)   # window 2 meanwhile
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 60

    obs.flushed(report((0, 0, 2), result=RESULT))  # window 1 committed

    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 20
    assert value(obs, "kyc_sync_partition_lag_seconds", partition="1") == 20


def test_the_oldest_pending_event_counts_after_a_rewind() -> None:
    """A rewind re-reads older offsets after newer ones were noted: the age is the oldest's."""
    clock = Clock(NOW)
    obs = observer(clock)
    consumer = FakeConsumer(high={0: 100}, committed={0: 0})
    obs.assignment(frozenset({0}))
    obs.tick(consumer)  # type: ignore[arg-type]
    old_ms, new_ms = int((NOW - 60) * 1000), int((NOW - 20) * 1000)
    obs.consumed(batch(Msg(0, 4, new_ms)), 1)
    obs.window_closed()
    obs.consumed(batch(Msg(0, 0, old_ms)), 1)  # re-read from 0 after the buffer was dropped

    assert value(obs, "kyc_sync_partition_lag_seconds", partition="0") == 60


def test_healthz_fails_while_a_write_runs_longer_than_the_limit() -> None:
    """The loop polls while a window is written: a hung write is seen by its age."""
    monotonic = Clock(100.0)
    obs = PrometheusObserver("audit", CollectorRegistry(), monotonic=monotonic, stall_after_s=30)
    obs.window_closed()
    monotonic.now = 129.0
    obs.polled()
    assert obs.liveness() == (True, "ok")
    monotonic.now = 131.0
    obs.polled()
    assert obs.liveness() == (False, "a window has been written for 31s (limit 30s)")
    obs.flushed(report((0, 0, 2), result=RESULT))
    assert obs.liveness() == (True, "ok")


def test_tick_is_throttled_and_asks_committed_once() -> None:
    clock = Clock(NOW)
    obs = observer(clock)
    consumer = FakeConsumer(high={0: 10}, committed={0: 4})
    obs.assignment(frozenset({0}))
    obs.tick(consumer)  # type: ignore[arg-type]
    consumer.high[0] = 20
    obs.tick(consumer)  # type: ignore[arg-type]
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") == 6  # throttled
    clock.now += 1.0
    obs.tick(consumer)  # type: ignore[arg-type]
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") == 16
    assert consumer.committed_calls == 1


def test_tick_never_raises() -> None:
    class Broken:
        def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("broker gone")

    obs = observer()
    obs.assignment(frozenset({0}))
    obs.tick(Broken())  # type: ignore[arg-type]


def test_revoked_partitions_leave_the_lag_metrics() -> None:
    obs = observer()
    obs.assignment(frozenset({0, 1}))
    obs.tick(FakeConsumer(high={0: 5, 1: 5}, committed={0: 5, 1: 5}))  # type: ignore[arg-type]
    obs.assignment(frozenset({1}))
    assert value(obs, "kyc_sync_partition_lag_messages", partition="0") is None
    assert value(obs, "kyc_sync_partition_lag_messages", partition="1") == 0
    assert value(obs, "kyc_sync_assigned_partitions") == 1


def test_freshness_is_the_age_of_the_oldest_event_waiting() -> None:
    """Not the age of the newest op_time: the sample's op_times are from 2024 and a quiet topic
    must not look stale; an event waiting longer and longer must."""
    clock = Clock(NOW)
    obs = observer(clock)
    consumer = FakeConsumer(high={0: 10, 1: 4}, committed={0: 10, 1: 4})
    obs.assignment(frozenset({0, 1}))
    obs.tick(consumer)  # type: ignore[arg-type]
    old_op_time = ApplyResult(1, 0, 0, 0, None, datetime(2024, 1, 15, 14, 15), 0.1)
    obs.flushed(report((0, 9, 10), result=old_op_time))
    assert value(obs, "kyc_sync_freshness_seconds") == 0  # quiet: nothing waits

    consumer.high[1] = 6  # two events arrive on partition 1, read, not applied yet
    clock.now += 1.0
    obs.tick(consumer)  # type: ignore[arg-type]
    obs.consumed(batch(Msg(1, 4, int((clock.now - 5) * 1000)), Msg(1, 5)), 2)
    clock.now += 1000
    assert value(obs, "kyc_sync_freshness_seconds") == 1005  # the stuck event's age
    obs.flushed(report((1, 4, 6), result=RESULT))
    assert value(obs, "kyc_sync_freshness_seconds") == 0
    assert value(obs, "kyc_sync_newest_op_time_timestamp_seconds") == (
        RESULT.max_op_time - datetime(1970, 1, 1)).total_seconds()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("assigned", "failed", "ready", "reason"),
    [
        (frozenset(), False, False, "no partitions assigned"),
        (frozenset({0, 1}), False, True, "ready (2 partitions assigned)"),
        (frozenset({0}), True, False, "the last flush failed"),
    ],
)
def test_readiness(assigned: frozenset[int], failed: bool, ready: bool, reason: str) -> None:
    obs = observer()
    obs.assignment(assigned)
    if failed:
        obs.flush_failed(RuntimeError("x"))
    assert obs.readiness() == (ready, reason)


def test_a_successful_flush_makes_it_ready_again() -> None:
    obs = observer()
    obs.assignment(frozenset({0}))
    obs.flush_failed(RuntimeError("x"))
    obs.flushed(report((0, 0, 1)))
    assert obs.readiness()[0]


# --------------------------------------------------------------------------- HTTP


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_http_endpoints_on_a_free_port() -> None:
    obs = observer()
    server = MetricsServer(obs, "127.0.0.1", 0)
    port = server.start()
    try:
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}"
        obs.consumed(batch(Msg(0, 0)), 1)

        status, kind, body = get(f"{server.url}/metrics")
        assert status == 200
        assert kind.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["kyc_sync_events_consumed"].samples[0].value == 1

        assert get(f"{server.url}/healthz")[:1] == (200,)
        assert get(f"{server.url}/readyz")[0::2] == (503, "no partitions assigned\n")
        obs.assignment(frozenset({0}))
        assert get(f"{server.url}/readyz")[0::2] == (200, "ready (1 partitions assigned)\n")
        assert get(f"{server.url}/nope")[0] == 404
    finally:
        server.stop()


def test_serving_is_off_when_disabled() -> None:
    with serving(MetricsSettings(enabled=False), "audit") as obs:
        assert obs is None


def test_serving_survives_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kyc_sync.metrics")
    with serving(MetricsSettings(port=0), "audit") as first:
        assert first is not None
        taken = int(caplog.records[-1].getMessage().split(":")[2].split("/")[0])
        with serving(MetricsSettings(port=taken), "audit") as second:
            assert isinstance(second, PrometheusObserver)  # the sync runs on without it
        assert "metrics endpoint not started" in caplog.text


def test_healthz_fails_once_the_loop_stops_polling() -> None:
    monotonic = Clock(100.0)
    obs = PrometheusObserver("audit", CollectorRegistry(), monotonic=monotonic, stall_after_s=30)
    server = MetricsServer(obs, "127.0.0.1", 0)
    server.start()
    try:
        monotonic.now = 129.0
        assert get(f"{server.url}/healthz")[0::2] == (200, "ok\n")
        monotonic.now = 131.0
        assert get(f"{server.url}/healthz")[0::2] == (
            503, "the loop has not polled Kafka for 31s (limit 30s)\n")
        obs.polled()
        assert get(f"{server.url}/healthz")[0::2] == (200, "ok\n")
    finally:
        server.stop()


def test_healthz_limit_is_max_poll_interval() -> None:
    assert KafkaSettings().max_poll_interval_s == 300.0
    tuned = KafkaSettings(client_options={"max.poll.interval.ms": 60_000})
    assert tuned.max_poll_interval_s == 60.0
    with serving(MetricsSettings(port=0), "audit", tuned.max_poll_interval_s) as obs:
        assert obs is not None
        assert obs.stall_after_s == 60.0
