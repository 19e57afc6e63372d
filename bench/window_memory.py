"""Where the memory of one window goes, per profile: one process, phase by phase.

    python -m bench.window_memory --bootstrap HOST:PORT --topic T --partitions 6 --db FILE

Reads the whole topic through the consumer's real ingest path (``SyncLoop.ingest``, batch by
batch as ``consume()`` returns them, as ``kyc-sync run`` does), then drains and stages the window
(``Reducer.drain``, ``SyncLoop.stage``) and applies it to ``FILE`` with the DuckDB writer, in one
window. A thread samples the process's RSS every 2 ms and keeps the peak of each phase;
librdkafka's statistics give its pre-fetch queue. Prints one JSON object:

- ``baseline_bytes``: RSS after the imports and the consumer's creation;
- ``ingest_peak_bytes``: peak RSS over the baseline while reading and reducing (the reducer's
  state and pending frames, a compaction's temporaries, the decoded batch, librdkafka's queue);
- ``fetch_queue_peak_bytes``: the largest pre-fetch queue librdkafka reported (payloads);
- ``reduced_bytes``: the reduced frame (one row per profile), polars' estimate;
- ``staged_bytes``: the staged Arrow table built from it;
- ``stage_peak_bytes``: peak RSS over the baseline while draining and staging;
- ``write_peak_bytes``: peak RSS over the RSS before the write, while the DuckDB writer applies
  the staged table (its hash joins per slice, the table's pages it reads and writes);
- ``keys``, ``events``, and the seconds of each phase.

Run by ``bench.scale`` in a process of its own, so that its peaks are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from batcher.window import WindowPolicy
from bench.load import table_names
from consumer.decode.decoder import PlainAvroDecoder
from consumer.run.loop import LoopOptions, SyncLoop
from schemas import audit_schema
from schemas.evolution import TableState
from warehouse.base import ApplyResult, Batch
from warehouse.duckdb_writer import DuckDBWarehouse

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PhasePeaks:
    """Samples RSS in a thread; ``phase(name)`` marks which phase the samples belong to."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s = every_s
        self.current = "idle"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes()
            name = self.current
            if rss > self.peaks.get(name, 0):
                self.peaks[name] = rss
            time.sleep(self.every_s)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.current = name
        self.peaks[name] = rss_bytes()
        try:
            yield
        finally:
            self.peaks[name] = max(self.peaks[name], rss_bytes())
            self.current = "idle"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _NoWarehouse:
    """The loop only ingests here; the write is timed apart, by the writer itself."""

    def open(self) -> None:
        return None

    def table_state(self) -> TableState:
        raise AssertionError("not used")

    def apply(self, batch: Batch) -> ApplyResult:
        raise AssertionError("not used")

    def close(self) -> None:
        return None


def _no_consumer(**_callbacks: Any) -> Consumer:
    raise AssertionError("the loop is fed by this module")


def measure(bootstrap: str, topic: str, partitions: int, db: Path) -> dict[str, Any]:
    queue_peak = [0, 0]

    def on_stats(text: str) -> None:
        stats = json.loads(text)
        size = count = 0
        for topic_stats in stats.get("topics", {}).values():
            for part in topic_stats.get("partitions", {}).values():
                size += int(part.get("fetchq_size", 0))
                count += int(part.get("fetchq_cnt", 0))
        queue_peak[0] = max(queue_peak[0], size)
        queue_peak[1] = max(queue_peak[1], count)

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-window-memory",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "statistics.interval.ms": 500, "stats_cb": on_stats,
    })
    loop = SyncLoop(
        LoopOptions(topic=topic, group_id="bench", on_invalid="fail"), _no_consumer,
        PlainAvroDecoder(audit_schema()), _NoWarehouse(), None,
        WindowPolicy(max_age_s=1e9, max_events=1 << 40, max_bytes=1 << 50),
    )
    writer = DuckDBWarehouse(str(db), table_names())
    peaks = PhasePeaks()
    baseline = rss_bytes()
    seconds: dict[str, float] = {}
    try:
        with peaks.phase("ingest"):
            started = time.perf_counter()
            consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
            at_end: set[int] = set()
            while len(at_end) < partitions:
                messages = consumer.consume(10_000, 1.0)
                for msg in messages:
                    error = msg.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())  # type: ignore[arg-type]
                if messages:
                    loop.ingest(messages)
                    loop.settle_ingest()  # decoded and reduced here, as the loop does
            consumer.poll(0)  # a last statistics callback
            seconds["ingest_s"] = time.perf_counter() - started
        consumer.close()
        with peaks.phase("stage"):
            started = time.perf_counter()
            reduced = loop.reducer.drain()
            assert reduced.rows is not None
            keys = reduced.rows.height
            reduced_bytes = int(reduced.rows.estimated_size())
            batch = loop.stage(reduced, 0.0)
            del reduced
            assert batch is not None
            staged_bytes = int(batch.rows.nbytes)
            seconds["stage_s"] = time.perf_counter() - started
        before_write = rss_bytes()
        with peaks.phase("write"):
            started = time.perf_counter()
            writer.apply(batch)
            seconds["write_s"] = time.perf_counter() - started
    finally:
        peaks.close()
    return {
        "events": batch.events_in,
        "keys": keys,
        "baseline_bytes": baseline,
        "ingest_peak_bytes": peaks.peaks["ingest"] - baseline,
        "fetch_queue_peak_bytes": queue_peak[0],
        "fetch_queue_peak_messages": queue_peak[1],
        "reduced_bytes": reduced_bytes,
        "staged_bytes": staged_bytes,
        "stage_peak_bytes": peaks.peaks["stage"] - baseline,
        "write_peak_bytes": peaks.peaks["write"] - before_write,
        "peak_bytes": max(peaks.peaks.values()),
        **seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.window_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--db", type=Path, required=True,
                        help="a DuckDB file with kyc-sync's tables (written to)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bootstrap, args.topic, args.partitions, args.db)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
