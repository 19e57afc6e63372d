"""Prometheus metrics of ``kyc-sync run``, and the small HTTP server that exposes them.

``PrometheusObserver`` implements the loop's ``Observer`` hooks on its own ``CollectorRegistry``
(prefix ``kyc_sync_``, base units). Lag and freshness are computed when scraped, from what the
hooks recorded: per partition the committed offset (from each flush), the log-end offset (the
consumer's cached high watermark, read in ``tick``) and the timestamp of the first message
consumed since the last commit (the oldest message not yet in the warehouse).

Freshness is the age of the oldest event consumed and not applied yet, not the age of the
newest ``op_time``: a quiet source is fresh, a stuck sync is not (the sample's op_times are from
2024 and must not look stale).

``MetricsServer`` serves ``/metrics``, ``/healthz`` (the loop is alive: it completed a poll of
Kafka within ``stall_after_s``, by default ``max.poll.interval.ms``, and no warehouse write has
run longer; always 200 for what has no loop) and ``/readyz`` (partitions assigned and the last
flush succeeded) on 127.0.0.1:9464 by default.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from consumer.decode.decoder import ERROR_CLASSES
from consumer.run.observer import FlushReport, Observer
from consumer.settings import MetricsSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message


log = logging.getLogger("kyc_sync.metrics")

PREFIX = "kyc_sync_"
PHASES: tuple[str, ...] = ("decode", "reduce", "write", "commit", "flush")
ROW_OUTCOMES: tuple[str, ...] = ("inserted", "updated", "deleted", "skipped_stale")
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)
REFRESH_S = 1.0
"""How often ``tick`` reads the cached high watermarks."""
COMMITTED_RETRY_S = 10.0
"""How often ``tick`` asks the broker for committed offsets it does not know yet."""


class PrometheusObserver(Observer):
    """Loop hooks -> Prometheus metrics. Hooks run on the loop thread, scrapes on the server's;
    the per-partition state is shared under a lock taken once per hook call."""

    def __init__(
        self,
        topic: str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        stall_after_s: float = 300.0,
    ) -> None:
        self.topic = topic
        self.stall_after_s = stall_after_s
        self.last_poll = monotonic()
        self.writing_since: float | None = None
        """When the window being written was drained (None: no write in flight)."""
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.monotonic = monotonic
        r = self.registry
        self.events_consumed = Counter(
            PREFIX + "events_consumed", "Messages read from the audit topic.", registry=r)
        self.events_decoded = Counter(
            PREFIX + "events_decoded", "Messages decoded into valid audit events.", registry=r)
        self.events_dead_lettered = Counter(
            PREFIX + "events_dead_lettered", "Invalid events sent to the dead-letter topic.",
            ["error_class"], registry=r)
        for error_class in ERROR_CLASSES:  # present at 0, so that increase() sees the first one
            self.events_dead_lettered.labels(error_class)
        self.fields_discarded = Counter(
            PREFIX + "fields_discarded",
            "Values of fields the table lacks, dropped by schema_evolution=discard (one per "
            "event and field).", ["field"], registry=r)
        self.batches = Counter(
            PREFIX + "batches", "Flushes by outcome: ok (applied and committed) or failed.",
            ["outcome"], registry=r)
        self.rows = Counter(
            PREFIX + "rows", "Rows of applied batches by what the MERGE did with them.",
            ["outcome"], registry=r)
        self.durations = Histogram(
            PREFIX + "phase_duration_seconds",
            "Time per flush spent in each phase (flush: the whole flush).",
            ["phase"], buckets=DURATION_BUCKETS, registry=r)
        self.buffered_events = Gauge(
            PREFIX + "buffered_events", "Events in the open window.", registry=r)
        self.buffered_keys = Gauge(
            PREFIX + "buffered_keys",
            "Distinct keys in the open window (at most: exact after each compaction).",
            registry=r)
        self.assigned_partitions = Gauge(
            PREFIX + "assigned_partitions", "Partitions this instance owns.", registry=r)
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last successful flush.", registry=r)
        for outcome in ("ok", "failed"):
            self.batches.labels(outcome)
        for outcome in ROW_OUTCOMES:
            self.rows.labels(outcome)
        for phase in PHASES:
            self.durations.labels(phase)

        self.lock = threading.Lock()
        self.assigned: frozenset[int] = frozenset()
        self.committed: dict[int, int] = {}
        self.high: dict[int, int] = {}
        self.pending: dict[int, list[tuple[int, int]]] = {}
        """Per partition, the (offset, timestamp ms) of the first message consumed into each
        window not yet applied, in offset order: with a window written while the next one is
        consumed, two of them."""
        self.in_open_window: set[int] = set()
        """Partitions whose first message of the open window is in ``pending``."""
        self.newest_op_time_s: float | None = None
        self.last_flush_ok = True
        self.next_refresh = 0.0
        self.next_committed_query = 0.0
        r.register(_ComputedCollector(self))

    # -- hooks -------------------------------------------------------------------------------

    def consumed(self, messages: list[Message], decoded: int) -> None:
        events = [m for m in messages if m.error() is not None]  # partition ends: a few
        self.events_consumed.inc(len(messages) - len(events))
        self.events_decoded.inc(decoded)
        with self.lock:
            known = set(self.in_open_window)
            wanted = len(self.assigned - known) if self.assigned else -1
        if wanted == 0:
            return  # every partition owned has its first message of the window: nothing to do
        first: dict[int, tuple[int, int]] = {}
        for msg in messages:
            partition: int = msg.partition()  # type: ignore[assignment]
            if partition in known or partition in first or msg.error() is not None:
                continue
            offset: int = msg.offset()  # type: ignore[assignment]
            kind, stamp = msg.timestamp()
            first[partition] = (offset, -1 if kind == TIMESTAMP_NOT_AVAILABLE else stamp)
            if len(first) == wanted:
                break
        if first:
            with self.lock:
                for partition, entry in first.items():
                    if partition not in self.in_open_window:
                        self.in_open_window.add(partition)
                        # In offset order: a rewind re-reads older offsets after newer ones.
                        bisect.insort(self.pending.setdefault(partition, []), entry)

    def window_closed(self) -> None:
        with self.lock:
            self.in_open_window.clear()
        self.writing_since = self.monotonic()

    def dead_lettered(self, error_class: str) -> None:
        self.events_dead_lettered.labels(error_class).inc()

    def discarded(self, field: str, events: int) -> None:
        self.fields_discarded.labels(field).inc(events)

    def buffered(self, events: int, keys: int) -> None:
        self.buffered_events.set(events)
        self.buffered_keys.set(keys)

    def timed(self, phase: str, seconds: float) -> None:
        self.durations.labels(phase).observe(seconds)

    def flushed(self, report: FlushReport) -> None:
        self.writing_since = None
        self.batches.labels("ok").inc()
        self.durations.labels("decode").observe(report.decode_s)
        self.durations.labels("flush").observe(report.total_s)
        result = report.result
        newest: float | None = None
        if result is not None:
            self.durations.labels("write").observe(result.write_s)
            for outcome, count in zip(
                ROW_OUTCOMES,
                (result.inserted, result.updated, result.deleted, result.skipped_stale),
                strict=True,
            ):
                self.rows.labels(outcome).inc(count)
            if result.max_op_time is not None:
                newest = _epoch_s(result.max_op_time)
        with self.lock:
            for r in report.ranges:
                self.committed[r.partition] = r.next_offset
                # What the window held is applied; the windows consumed after it (the loop
                # consumes while a window is written) are still pending.
                entries = [e for e in self.pending.get(r.partition, ()) if e[0] >= r.next_offset]
                if entries:
                    self.pending[r.partition] = entries
                else:
                    self.pending.pop(r.partition, None)
                    self.in_open_window.discard(r.partition)
            self.last_flush_ok = True
            if newest is not None and (self.newest_op_time_s is None
                                       or newest > self.newest_op_time_s):
                self.newest_op_time_s = newest
        self.last_success.set(self.clock())

    def flush_failed(self, error: BaseException) -> None:
        self.writing_since = None
        self.batches.labels("failed").inc()
        with self.lock:
            self.last_flush_ok = False

    def assignment(self, partitions: frozenset[int]) -> None:
        with self.lock:
            self.assigned = partitions
            for known in (self.committed, self.high, self.pending):
                for partition in [p for p in known if p not in partitions]:
                    del known[partition]
            self.in_open_window &= partitions
        self.assigned_partitions.set(len(partitions))

    def tick(self, consumer: Consumer) -> None:
        now = self.monotonic()
        if now < self.next_refresh:
            return
        self.next_refresh = now + REFRESH_S
        try:
            self._refresh(consumer, now)
        except Exception as err:  # a hook must not raise; lag is refreshed on the next tick
            log.debug("lag refresh failed: %s", err)

    def _refresh(self, consumer: Consumer, now: float) -> None:
        with self.lock:
            assigned = sorted(self.assigned)
            unknown = [p for p in assigned if p not in self.committed]
        highs = {}
        for partition in assigned:
            marks = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True
            )
            if marks is not None and marks[1] >= 0:
                highs[partition] = int(marks[1])
        starts = {}
        if unknown and now >= self.next_committed_query:
            self.next_committed_query = now + COMMITTED_RETRY_S
            for tp in consumer.committed(
                [TopicPartition(self.topic, p) for p in unknown], timeout=1.0
            ):
                if tp.offset >= 0:
                    starts[tp.partition] = tp.offset
                else:  # nothing committed: the group starts at the earliest offset
                    low, _ = consumer.get_watermark_offsets(tp, timeout=1.0)
                    starts[tp.partition] = int(low)
        with self.lock:
            self.high.update({p: h for p, h in highs.items() if p in self.assigned})
            for partition, start in starts.items():
                if partition in self.assigned:
                    self.committed.setdefault(partition, start)

    def polled(self) -> None:
        self.last_poll = self.monotonic()

    # -- liveness and readiness --------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive while the loop completes a poll within ``stall_after_s`` and no window's write
        has run longer: it polls at least every ``kafka.poll_timeout_s`` when idle and while it
        waits to retry, so only a call that hangs (a warehouse statement, a commit) stops it —
        past ``max.poll.interval.ms`` the group has dropped this member anyway. The loop goes
        on polling while a window is written, so a hung write is told apart by its age."""
        now = self.monotonic()
        quiet = now - self.last_poll
        if quiet > self.stall_after_s:
            return False, (f"the loop has not polled Kafka for {quiet:.0f}s "
                           f"(limit {self.stall_after_s:g}s)")
        since = self.writing_since
        if since is not None and now - since > self.stall_after_s:
            return False, (f"a window has been written for {now - since:.0f}s "
                           f"(limit {self.stall_after_s:g}s)")
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        with self.lock:
            if not self.assigned:
                return False, "no partitions assigned"
            if not self.last_flush_ok:
                return False, "the last flush failed"
            return True, f"ready ({len(self.assigned)} partitions assigned)"

    # -- computed at scrape time -------------------------------------------------------------

    def computed(self) -> Iterator[Metric]:
        now = self.clock()
        with self.lock:
            assigned = sorted(self.assigned)
            committed, high = dict(self.committed), dict(self.high)
            pending = {p: entries[0][1] for p, entries in self.pending.items() if entries}
            newest = self.newest_op_time_s
        lag_messages = GaugeMetricFamily(
            PREFIX + "partition_lag_messages",
            "Log-end offset minus committed offset, per assigned partition.",
            labels=["partition"])
        lag_seconds = GaugeMetricFamily(
            PREFIX + "partition_lag_seconds",
            "Age of the oldest message not yet committed, per assigned partition (0 without "
            "lag).", labels=["partition"])
        ages: list[float] = []
        for partition in assigned:
            if partition not in committed or partition not in high:
                continue
            lag = max(0, high[partition] - committed[partition])
            lag_messages.add_metric([str(partition)], lag)
            if lag == 0:
                ages.append(0.0)
            elif pending.get(partition, -1) >= 0:
                ages.append(max(0.0, now - pending[partition] / 1000))
            else:
                continue
            lag_seconds.add_metric([str(partition)], ages[-1])
        freshness = GaugeMetricFamily(
            PREFIX + "freshness_seconds",
            "Age of the oldest event this instance consumed and has not applied yet (0 when "
            "none waits): a quiet topic stays at 0, a stuck flush grows. The lag exporter's "
            "kyc_sync_group_freshness_seconds also counts events not consumed yet.")
        newest_op = GaugeMetricFamily(
            PREFIX + "newest_op_time_timestamp_seconds",
            "Unix time of the newest op_time this instance applied.")
        if ages:
            freshness.add_metric([], max(ages))
        if newest is not None:
            newest_op.add_metric([], newest)
        yield from (lag_messages, lag_seconds, freshness, newest_op)


def _epoch_s(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


class _ComputedCollector(Collector):
    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterable[Metric]:
        return list(self.observer.computed())

    def describe(self) -> Iterable[Metric]:
        return []


# -- the HTTP endpoint ---------------------------------------------------------------------


class Exposed(Protocol):
    """What the endpoint serves: a registry for /metrics, a readiness answer for /readyz (the
    run loop's observer, the lag exporter, the progress of a long operation)."""

    @property
    def registry(self) -> CollectorRegistry: ...

    def readiness(self) -> tuple[bool, str]: ...


@runtime_checkable
class Live(Protocol):
    """What has a loop that can hang answers /healthz from ``liveness`` (others: 200)."""

    def liveness(self) -> tuple[bool, str]: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], observer: Exposed) -> None:
        self.observer = observer
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        observer = self.server.observer
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(observer.registry), content_type)
        elif path == "/healthz":
            alive, reason = observer.liveness() if isinstance(observer, Live) else (True, "ok")
            self._reply(200 if alive else 503, f"{reason}\n".encode())
        elif path == "/readyz":
            ready, reason = observer.readiness()
            self._reply(200 if ready else 503, f"{reason}\n".encode())
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
               ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on a daemon thread."""

    def __init__(self, observer: Exposed, host: str, port: int) -> None:
        self.observer = observer
        self.host = host
        self.port = port
        self.httpd: _Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve; returns the bound port. Raises ``OSError`` if it cannot bind."""
        self.httpd = _Server((self.host, self.port), self.observer)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="kyc-sync-metrics", daemon=True
        )
        self.thread.start()
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None


@contextmanager
def serving(
    settings: MetricsSettings, topic: str, stall_after_s: float = 300.0
) -> Iterator[PrometheusObserver | None]:
    """The observer for ``SyncLoop`` with its endpoint running; None when metrics are off.
    ``/healthz`` answers 503 once the loop has not polled for ``stall_after_s``. A port that
    cannot be bound is logged as an error and the sync runs on without it."""
    if not settings.enabled:
        yield None
        return
    observer = PrometheusObserver(topic, stall_after_s=stall_after_s)
    with exposing(settings, observer):
        yield observer


@contextmanager
def exposing(settings: MetricsSettings, exposed: Exposed) -> Iterator[MetricsServer | None]:
    """Serve ``exposed`` on the configured address while the block runs (None: metrics off,
    or the port could not be bound, which is logged and otherwise ignored)."""
    if not settings.enabled:
        yield None
        return
    server = MetricsServer(exposed, settings.host, settings.port)
    try:
        server.start()
    except OSError as err:
        log.error("metrics endpoint not started on %s:%d: %s (set metrics.port, 0 for any free "
                  "port, or metrics.enabled=false)", settings.host, settings.port, err)
        yield None
        return
    log.info("metrics on %s/metrics (also /healthz, /readyz)", server.url)
    try:
        yield server
    finally:
        server.stop()
