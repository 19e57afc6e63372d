"""Progress of the long operations (full refresh, verify): events read of those planned, rate,
ETA and phase — a progress bar on a terminal, plain periodic log lines otherwise, and metrics.

``Progress`` is an ``Observer`` of a loop that reads planned offset ranges: each partition's
position is the highest offset seen + 1, capped at the range's end, so a re-read never counts
twice. On a terminal (stderr a TTY and text logs) it draws a ``tqdm`` bar and routes log lines
above it; otherwise (a pipe, a container, ``--log-format json``) it logs one INFO line every
``interval_s`` and one per phase. Its gauges (``kyc_sync_progress_*``, labelled by operation)
can be served like the run loop's metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import IO, TYPE_CHECKING, NoReturn

from prometheus_client import CollectorRegistry, Gauge
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from batcher.ranges import PartitionRange
from consumer.run.observer import Observer

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger("kyc_sync.progress")

PREFIX = "kyc_sync_progress_"


def show_bar(stream: IO[str], log_format: str) -> bool:
    """A bar only where a person watches: stderr is a terminal with a width, logs are text."""
    try:
        return (log_format == "text" and stream.isatty()
                and os.get_terminal_size(stream.fileno()).columns > 0)
    except (AttributeError, ValueError, OSError):
        return False


class Progress(Observer):
    """Events read of those planned in ``bounds``, the current phase, an ETA."""

    def __init__(
        self,
        operation: str,
        bounds: Sequence[PartitionRange],
        phases: Sequence[str],
        *,
        stream: IO[str] | None = None,
        bar: bool = False,
        interval_s: float = 10.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.operation = operation
        self.bounds = {r.partition: r for r in bounds}
        self.planned = sum(max(0, r.count) for r in bounds)
        self.phases = tuple(phases)
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self.lock = threading.Lock()
        self.positions: dict[int, int] = {r.partition: r.first for r in bounds}
        self.read = 0
        self.phase_name = ""
        self.started = clock()
        self.next_line = self.started + interval_s
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.read_gauge = Gauge(PREFIX + "events_read",
                                "Events read so far by a long operation, of those planned.",
                                ["operation"], registry=r).labels(operation)
        self.planned_gauge = Gauge(PREFIX + "events_planned",
                                   "Events a long operation plans to read.",
                                   ["operation"], registry=r).labels(operation)
        self.phase_gauge = Gauge(PREFIX + "phase",
                                 "1 for the phase a long operation is in, 0 for the others.",
                                 ["operation", "phase"], registry=r)
        self.planned_gauge.set(self.planned)
        for name in self.phases:
            self.phase_gauge.labels(operation, name).set(0)
        self.bar: tqdm[NoReturn] | None = None  # no iterable: updated by hand
        if bar:
            self.bar = tqdm(total=self.planned, desc=operation, unit=" events",
                            unit_scale=True, file=stream, dynamic_ncols=True, mininterval=0.5)

    # -- what the caller says ------------------------------------------------------------------

    def phase(self, name: str) -> None:
        """Enter phase ``name`` (one of ``phases``)."""
        with self.lock:
            self.phase_name = name
        for other in self.phases:
            self.phase_gauge.labels(self.operation, other).set(1 if other == name else 0)
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        log.info("%s: %s", self.operation, name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        """Log lines go above the bar while it is drawn; the bar is closed at the end."""
        with ExitStack() as stack:
            if self.bar is not None:
                stack.enter_context(logging_redirect_tqdm())
            try:
                yield self
            finally:
                self.close()

    # -- the loop's hooks ----------------------------------------------------------------------

    def consumed(self, messages: list[Message], decoded: int) -> None:
        added = 0
        with self.lock:
            for msg in messages:
                partition, offset = msg.partition(), msg.offset()
                if msg.error() is not None or partition is None or offset is None:
                    continue
                bound = self.bounds.get(partition)
                if bound is None:
                    continue
                position = min(offset + 1, bound.next_offset)
                if position > self.positions[partition]:
                    added += position - self.positions[partition]
                    self.positions[partition] = position
            self.read += added
            read = self.read
        if added:
            self.read_gauge.set(read)
            if self.bar is not None:
                self.bar.update(added)
        if self.bar is None and self.clock() >= self.next_line:
            self.next_line = self.clock() + self.interval_s
            log.info("%s", self.line())

    def line(self) -> str:
        """``full refresh: read 1200 of 6000 events (20%), 530/s, ETA 9s, phase build``."""
        elapsed = max(self.clock() - self.started, 1e-9)
        with self.lock:
            read, phase = self.read, self.phase_name
        rate = read / elapsed
        share = 100.0 if not self.planned else 100.0 * read / self.planned
        left = self.planned - read
        eta = "-" if rate <= 0 else f"{left / rate:.0f}s"
        return (f"{self.operation}: read {read} of {self.planned} events ({share:.0f}%), "
                f"{rate:.0f}/s, ETA {eta}, phase {phase or '-'}")

    def readiness(self) -> tuple[bool, str]:
        """For the metrics endpoint's /readyz: always ready, the line as the reason."""
        return True, self.line()
