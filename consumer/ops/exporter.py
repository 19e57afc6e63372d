"""``kyc-sync lag --serve``: the lag exporter, a process apart from the consumers.

The run loop's own lag metrics vanish with the instance: when it crash-loops or is stopped,
nobody reports the lag that grows meanwhile. The exporter reads the group from the broker (the
committed offsets, the log ends, the timestamp of the first unapplied message, the group's state
and members) and the last batch from the warehouse ledger, every ``interval_s``, with the same
code as ``kyc-sync lag`` (``lag.gather``), and serves it on the metrics endpoint
(``/metrics``, ``/healthz``, ``/readyz``). Every series is labelled by ``topic`` and ``group``.

The lag in seconds is the age of the oldest unapplied event: now minus the timestamp of the
message at the committed offset (0 without lag), computed when scraped. The freshness gauge is
its maximum over the partitions: it grows only while an event waits, never on a quiet topic.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from types import FrameType

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumer.ops.lag import LagReport
from schemas.errors import KycSyncError

log = logging.getLogger("kyc_sync.exporter")

PREFIX = "kyc_sync_"


class LagExporter:
    """Keeps the last report and turns it into metrics when scraped."""

    def __init__(
        self,
        topic: str,
        group: str,
        gather: Callable[[], LagReport],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.group = group
        self.gather = gather
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.lock = threading.Lock()
        self.report: LagReport | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = Counter(
            PREFIX + "exporter_refresh_failures",
            "Refreshes of the lag exporter that could not read Kafka.",
            ["topic", "group"], registry=self.registry).labels(topic, group)
        self.registry.register(_Snapshot(self))

    def refresh(self) -> bool:
        """Read Kafka and the ledger once; False (logged, counted) when Kafka cannot answer."""
        try:
            report = self.gather()
        except KycSyncError as err:
            self.failures.inc()
            with self.lock:
                self.last_error = str(err)
            log.warning("lag exporter: cannot read the group: %s", err)
            return False
        with self.lock:
            self.report = report
            self.last_success = self.clock()
            self.last_error = None
        if report.ledger_error is not None:
            log.warning("lag exporter: warehouse ledger unavailable: %s", report.ledger_error)
        return True

    def readiness(self) -> tuple[bool, str]:
        with self.lock:
            if self.last_error is not None:
                return False, f"the last refresh failed: {self.last_error}"
            if self.report is None:
                return False, "no refresh yet"
            return True, f"ready (group {self.group}, {len(self.report.partitions)} partitions)"

    def metrics(self) -> Iterator[Metric]:
        with self.lock:
            report, last_success = self.report, self.last_success
        labels = ["topic", "group"]
        base = [self.topic, self.group]
        families = {
            "committed": GaugeMetricFamily(
                PREFIX + "group_committed_offset",
                "The group's committed offset per partition (absent: none committed).",
                labels=[*labels, "partition"]),
            "end": GaugeMetricFamily(
                PREFIX + "group_log_end_offset", "The log-end offset per partition.",
                labels=[*labels, "partition"]),
            "lag": GaugeMetricFamily(
                PREFIX + "group_lag_messages",
                "Messages between the group's position and the log end, per partition.",
                labels=[*labels, "partition"]),
            "age": GaugeMetricFamily(
                PREFIX + "group_lag_seconds",
                "Age of the oldest unapplied event per partition: now minus the timestamp of "
                "the message at the committed offset (0 without lag).",
                labels=[*labels, "partition"]),
        }
        freshness = GaugeMetricFamily(
            PREFIX + "group_freshness_seconds",
            "Age of the oldest event of the topic the group has not applied (0 when none "
            "waits): a quiet topic stays at 0, a stuck sync grows.", labels=labels)
        members = GaugeMetricFamily(
            PREFIX + "group_members", "Members of the consumer group.", labels=labels)
        state = GaugeMetricFamily(
            PREFIX + "group_state", "1 for the consumer group's state as the coordinator "
            "reports it.", labels=[*labels, "state"])
        last_batch = GaugeMetricFamily(
            PREFIX + "group_last_batch_timestamp_seconds",
            "Unix time the last batch of the topic was committed in the warehouse (ledger).",
            labels=labels)
        success = GaugeMetricFamily(
            PREFIX + "exporter_last_success_timestamp_seconds",
            "Unix time the lag exporter last read the group from Kafka.", labels=labels)
        if report is not None:
            now_ms = int(self.clock() * 1000)
            ages = []
            for p in report.partitions:
                partition = [*base, str(p.offsets.partition)]
                if p.offsets.committed is not None:
                    families["committed"].add_metric(partition, p.offsets.committed)
                families["end"].add_metric(partition, p.offsets.high)
                families["lag"].add_metric(partition, p.lag)
                age = p.age_s(now_ms)
                if age is not None:
                    families["age"].add_metric(partition, age)
                    ages.append(age)
            if ages:
                freshness.add_metric(base, max(ages))
            if report.group_info is not None:
                members.add_metric(base, len(report.group_info.details))
                state.add_metric([*base, report.group_info.state], 1)
            if report.last_batch is not None:
                committed_at = report.last_batch.committed_at  # naive UTC, as the ledger holds it
                last_batch.add_metric(base, committed_at.replace(tzinfo=UTC).timestamp())
        if last_success is not None:
            success.add_metric(base, last_success)
        yield from (*families.values(), freshness, members, state, last_batch, success)


class _Snapshot(Collector):
    def __init__(self, exporter: LagExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterable[Metric]:
        return list(self.exporter.metrics())

    def describe(self) -> Iterable[Metric]:
        return []


def serve(exporter: LagExporter, interval_s: float, stop: threading.Event) -> None:
    """Refresh every ``interval_s`` until ``stop`` is set."""
    while not stop.is_set():
        started = time.monotonic()
        exporter.refresh()
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end ``serve`` after the current refresh."""
    def handler(_signum: int, _frame: FrameType | None) -> None:
        log.info("lag exporter: stop requested")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
