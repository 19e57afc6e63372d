"""``make bench``: throughput of kyc-sync against the raw Kafka consume loop, in one run.

    python -m bench.run                      # 5,000,000 events over 1,000,000 profiles
    python -m bench.run --quick              # 20,000 over 5,000: a smoke run (make test)
    python -m bench.run --events N --profiles P [--bootstrap HOST:PORT] [--peer quix|none]

Steps, all on the same topic (loaded once, so warm in the page cache) and the same machine:

1. load the topic (``bench.load``): ``events`` Avro events on ``partitions`` partitions;
2. B0: a raw ``Consumer.consume(num_messages=10000)`` loop touching only key and value;
3. decode + reduce: the consumer's real ingest path (``SyncLoop.ingest``) over the buffered
   messages of the whole topic (consumed in chunks; only ``ingest`` is timed); then decode only,
   in memory, of the packaged 8-field schema next to a 16-field evolved one (``bench.evolved``);
4. end to end: ``kyc-sync run --until-caught-up`` with one window covering the topic, into a
   DuckDB file whose state table already holds ``profiles`` rows; process wall time, flush
   included; its peak RSS from ``wait4`` (exact ``ru_maxrss`` of the process);
5. end to end with profile history on (``--history on``, the default; ``off`` skips it): step 4
   again into another copy of the seeded file with ``history.enabled``, so that events/s and
   peak RSS compare both ways; the history table is checked (one row per seeded profile and
   per event, and ``kyc-sync check``'s three history invariants hold);
6. MERGE vs CTAS: the staged Arrow table of step 3 (the reduced winners) written into fresh
   copies of the seeded file by the guarded MERGE, by the DuckDB writer's DELETE + INSERT, and by
   ``CREATE TABLE AS``;
7. the peer (``bench.peer_quix``, Quix Streams) on the same topic into another copy.

Every end-to-end run is checked against the oracle (``bench.load.expected_current``).
Writes ``bench/results/latest.json`` (or ``--results``) and prints a table of figures and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from batcher.window import WindowPolicy
from bench import wire_format
from bench.evolved import decode_rates
from bench.load import (
    LoadReport,
    Spec,
    expected_table,
    load,
    mismatches,
    seed_warehouse,
    table_names,
)
from consumer.decode.decoder import PlainAvroDecoder
from consumer.run.gc_tuning import tune_gc
from consumer.run.loop import LoopOptions, SyncLoop
from consumer.source.client import FETCH_QUEUE_BACKOFF_MS, QUEUED_MIN_MESSAGES
from schemas import audit_schema
from schemas.columns import BASE_SCHEMA
from schemas.evolution import TableState
from tools.localkafka import REPO_ROOT, LocalKafka
from warehouse import history_sql
from warehouse.base import ApplyResult, Batch
from warehouse.identifiers import QualifiedName
from warehouse.schema_changes import physical_columns_sql, table_state
from warehouse.sql import delete_superseded_sql, insert_new_sql, merge_sql
from warehouse.tables import STATE_COLUMNS, state_columns

FULL = (5_000_000, 1_000_000)
QUICK = (20_000, 5_000)
RESULTS = REPO_ROOT / "bench" / "results" / "latest.json"
WORK_DIR = REPO_ROOT / ".local" / "bench" / "run"
PEER_VENV = REPO_ROOT / ".local" / "bench" / "peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_READY = PEER_VENV / ".installed"
"""Written by ``make bench-peer-env`` once the peer's packages are installed."""
CONSUME_BATCH = 10_000
FETCH_OPTIONS: dict[str, Any] = {
    "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS, "queued.min.messages": QUEUED_MIN_MESSAGES}
"""The fetch options kyc-sync's consumer sets over librdkafka's defaults."""
BUFFER_CHUNK = 500_000
"""Messages buffered at a time for the decode + reduce measurement (bounds its memory)."""

STEPS: tuple[str, ...] = (
    "b0", "decode", "evolved", "e2e", "wire", "windows", "history", "writes", "peer",
)
"""The measuring steps ``--steps`` picks from (loading the topic and seeding the file always run,
unless ``--topic`` names a topic already loaded). ``writes`` needs ``decode``'s staged table,
``wire`` compares with ``e2e``."""

EVOLVED_EVENTS = 200_000
"""Events of the in-memory 8- vs 16-field decode figure (fewer with --quick)."""
EVOLVED_REPEAT = 3

REQUIRED_KEYS: tuple[str, ...] = (
    "b0_msgs_per_s", "decode_reduce_per_s", "e2e_per_s", "peak_rss_bytes", "merge_s", "ctas_s",
    "peer_e2e_per_s", "events", "profiles", "e2e_history_per_s", "peak_rss_history_bytes",
    "decode_8_fields_per_s", "decode_16_fields_per_s",
)

# Targets of the issue, as (label, key of the measured ratio, comparison, bound).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("end to end >= 0.9 x B0", "e2e_vs_b0", ">=", 0.9),
    ("decode + reduce >= 2.5 x B0", "decode_reduce_vs_b0", ">=", 2.5),
    ("peak RSS <= 600 MiB (5M / 1M window)", "peak_rss_mib", "<=", 600.0),
    ("MERGE <= 3 x CTAS", "merge_vs_ctas", "<=", 3.0),
    ("the writer's DELETE+INSERT <= 3 x CTAS", "upsert_vs_ctas", "<=", 3.0),
    (">= 4 x the peer's end to end", "e2e_vs_peer", ">=", 4.0),
)
WINDOWS = 5
"""The ``windows`` step cuts the topic into this many windows (``window.max_events``)."""


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class Measured:
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    log: str
    started_at: float = 0.0
    """``time.time()`` when the command was started (log lines carry wall-clock times)."""


def run_measured(
    command: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float
) -> Measured:
    """Run ``command`` to its end; wall time and its exact peak RSS (``wait4``'s ru_maxrss, taken
    by ``bench.peak_rss`` so that the benchmark's own peak does not leak into the figure)."""
    rss_file = log_path.with_suffix(".rss")
    rss_file.unlink(missing_ok=True)
    with log_path.open("wb") as log:
        started_at = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peak_rss", str(rss_file), "--", *command],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            start_new_session=True,
        )
        killer = threading.Timer(timeout_s, os.killpg, (proc.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    peak = int(rss_file.read_text()) if rss_file.exists() else 0
    return Measured(proc.returncode, wall, peak, log_path.read_text(errors="replace"), started_at)


# --------------------------------------------------------------------------- B0


def _consumer(bootstrap: str, **extra: Any) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **extra,
    })


def _assign_all(consumer: Consumer, topic: str, partitions: int) -> None:
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])


def batches(bootstrap: str, topic: str, partitions: int) -> Iterator[list[Message]]:
    """Every ``consume()`` result from the start of each partition to its end."""
    consumer = _consumer(bootstrap)
    try:
        _assign_all(consumer, topic, partitions)
        at_end: set[int] = set()
        while len(at_end) < partitions:
            messages = consumer.consume(CONSUME_BATCH, 1.0)
            for msg in messages:
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())  # type: ignore[arg-type]
            if messages:
                yield messages
    finally:
        consumer.close()


def raw_consume(bootstrap: str, topic: str, partitions: int, **extra: Any) -> tuple[int, float]:
    """B0: the raw consume loop touching key and value, with librdkafka's defaults or the
    ``extra`` options. Returns (messages, seconds)."""
    consumer = _consumer(bootstrap, **extra)
    try:
        _assign_all(consumer, topic, partitions)
        count = 0
        eof = 0
        started = time.perf_counter()
        while eof < partitions:
            for msg in consumer.consume(CONSUME_BATCH, 1.0):
                error = msg.error()
                if error is None:
                    msg.key()
                    msg.value()
                    count += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    eof += 1
                else:
                    raise RuntimeError(f"consume: {error}")
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    return count, seconds


# --------------------------------------------------------------------------- decode + reduce


class _NoWarehouse:
    """The ingest path never writes; a stand-in for the loop's warehouse."""

    def open(self) -> None:
        return None

    def table_state(self) -> TableState:
        return TableState(BASE_SCHEMA, None, False)

    def apply(self, batch: Batch) -> ApplyResult:
        raise AssertionError("the benchmark's loop does not flush")

    def close(self) -> None:
        return None


def _no_consumer(**_callbacks: Any) -> Consumer:
    raise AssertionError("the benchmark's loop is fed by the harness")


@dataclass(frozen=True, slots=True)
class IngestResult:
    events: int
    ingest_s: float
    decode_only_events: int
    decode_only_s: float
    keys: int
    stage_s: float
    staged: pa.Table


def decode_reduce(bootstrap: str, topic: str, partitions: int) -> IngestResult:
    """The consumer's real path (``SyncLoop.ingest``) over buffered messages; ``ingest`` only is
    timed. The first chunk is also decoded alone (``decoder.decode_batch``, no reducer) for the
    split.
    Returns the staged Arrow table of the winners (``SyncLoop.stage``), as a flush builds it."""
    tune_gc()  # as ``build_loop`` does for the consumer's process
    loop = SyncLoop(
        LoopOptions(topic=topic, group_id="bench", on_invalid="fail"),
        _no_consumer,
        PlainAvroDecoder(audit_schema()),
        _NoWarehouse(),
        None,
        WindowPolicy(max_age_s=1e9, max_events=1 << 40, max_bytes=1 << 50),
    )
    ingest = loop.ingest
    ingest_s = 0.0
    decode_only_events = 0
    decode_only_s = 0.0
    chunk: list[list[Message]] = []
    buffered = 0

    def drain_chunk() -> None:
        nonlocal ingest_s, decode_only_events, decode_only_s, chunk, buffered
        if not decode_only_events:
            decode_only_events, decode_only_s = _decode_only(loop, chunk)
        started = time.perf_counter()
        for messages in chunk:
            ingest(messages)
        loop.settle_ingest()  # the last batch, held for the next poll
        ingest_s += time.perf_counter() - started
        chunk, buffered = [], 0

    for messages in batches(bootstrap, topic, partitions):
        chunk.append(messages)
        buffered += len(messages)
        if buffered >= BUFFER_CHUNK:
            drain_chunk()
    if chunk:
        drain_chunk()
    events = loop.reducer.events
    started = time.perf_counter()
    reduced = loop.reducer.drain()
    assert reduced.rows is not None
    keys = reduced.rows.height
    batch = loop.stage(reduced, ingest_s)
    assert batch is not None
    stage_s = time.perf_counter() - started
    return IngestResult(
        events, ingest_s, decode_only_events, decode_only_s, keys, stage_s, batch.rows
    )


def _decode_only(loop: SyncLoop, chunk: list[list[Message]]) -> tuple[int, float]:
    decode_batch = loop.decoder.decode_batch
    count = 0
    started = time.perf_counter()
    for messages in chunk:
        kept = [m for m in messages if m.error() is None]
        decode_batch([m.value() for m in kept], [m.key() for m in kept])
        count += len(kept)
    return count, time.perf_counter() - started


# --------------------------------------------------------------------------- MERGE vs CTAS


@dataclass(frozen=True, slots=True)
class WriteTimes:
    merge_s: float
    upsert_s: float
    ctas_s: float


WRITE_ROUNDS = 3
"""Rounds of the MERGE vs CTAS step; each write's figure is its median."""


def merge_vs_ctas(seeded: Path, work: Path, staged: pa.Table) -> WriteTimes:
    """Seconds to write ``staged`` (the reduced winners) into a fresh copy of the seeded file:
    the guarded ``MERGE`` statement; the DuckDB writer's equivalent ``UPDATE`` + ``INSERT`` (what
    ``DuckDBWarehouse.apply`` runs); and a ``CREATE TABLE AS`` of the same Arrow table. Each is
    one transaction with its commit, on a new connection to its own copy. Each is the median of
    ``WRITE_ROUNDS`` rounds, the three taking turns: one write of about a second is at the mercy
    of the machine's other work (one run's CTAS took 0.97 s, every other 1.25 s)."""

    def timed(name: str, statements: list[str]) -> float:
        path = work / f"{name}.duckdb"
        shutil.copyfile(seeded, path)
        con = duckdb.connect(str(path))
        try:
            con.register("staged", staged)
            started = time.perf_counter()
            con.begin()
            for sql in statements:
                con.execute(sql)
            con.commit()
            return time.perf_counter() - started
        finally:
            con.close()
            path.unlink(missing_ok=True)

    from bench.load import table_names

    state = table_names().state
    cols = ", ".join(f'"{c.name}"' for c in STATE_COLUMNS)
    writes = {
        "ctas": [f"CREATE TABLE staged_copy AS SELECT {cols} FROM staged"],
        "merge": [merge_sql(state, "staged", "duckdb")],
        "upsert": [delete_superseded_sql(state, "staged", "duckdb"),
                   insert_new_sql(state, "staged", "duckdb")],
    }
    rounds: dict[str, list[float]] = {name: [] for name in writes}
    for _ in range(WRITE_ROUNDS):
        for name, statements in writes.items():
            rounds[name].append(timed(name, statements))
    merge, upsert, ctas = (statistics.median(rounds[n]) for n in ("merge", "upsert", "ctas"))
    return WriteTimes(merge, upsert, ctas)


# --------------------------------------------------------------------------- end to end


FLUSH_LINE = re.compile(r"flush batch_id=\S+ .*")


def kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+ (.*)$", re.MULTILINE)


def timeline(measured: Measured) -> dict[str, float | None]:
    """When things happened in an end-to-end run, in seconds from its start, from its log: the
    first assignment, the end of consuming (the last flush's start: its end minus its
    ``total_s``) and the last flush's length."""
    assigned: float | None = None
    last_flush: tuple[float, float] | None = None
    for match in LOG_LINE.finditer(measured.log):
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if assigned is None and message.startswith("assigned partitions"):
            assigned = at - measured.started_at
        elif FLUSH_LINE.match(message):
            last_flush = (at - measured.started_at, float(kv(message).get("total_s", 0)))
    return {
        "startup_s": assigned,
        "consume_s": None if last_flush is None else last_flush[0] - last_flush[1],
        "final_flush_s": None if last_flush is None else last_flush[1],
    }


def e2e(bootstrap: str, topic: str, db: Path, spec: Spec, log: Path, timeout_s: float,
        history: bool = False, window_events: int | None = None,
        ) -> tuple[Measured, list[dict[str, str]]]:
    """``kyc-sync run --until-caught-up`` into ``db``: one window over the whole topic, or
    windows of ``window_events`` events."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
    env["KYC_SYNC_HISTORY__ENABLED"] = "true" if history else "false"
    env.update(
        KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        KYC_SYNC_KAFKA__TOPIC=topic,
        KYC_SYNC_KAFKA__GROUP_ID=f"bench-e2e-{uuid.uuid4().hex[:8]}",
        KYC_SYNC_KAFKA__CONSUME_BATCH=str(CONSUME_BATCH),
        KYC_SYNC_DUCKDB__PATH=str(db),
        KYC_SYNC_WINDOW__SECONDS="86400",
        KYC_SYNC_WINDOW__MAX_EVENTS=str(window_events or 2 * spec.events + 1),
        KYC_SYNC_WINDOW__MAX_BYTES=str(1 << 50),
        KYC_SYNC_LOG_LEVEL="INFO",
        KYC_SYNC_METRICS__PORT="0",  # metrics stay on (the real path), on a free port
    )
    measured = run_measured(
        [sys.executable, "-m", "consumer.cli", "run", "--until-caught-up"], env, log, timeout_s
    )
    flushes = [kv(m.group(0)) for m in FLUSH_LINE.finditer(measured.log)]
    return measured, flushes


HISTORY_TABLE = QualifiedName.of("main", "kyc_profile_history")


def history_findings(db: Path) -> tuple[int, int]:
    """The history table of an end-to-end run: (rows, findings of the three history checks)."""
    state = table_names().state
    con = duckdb.connect(str(db), read_only=True)
    try:
        count = con.execute(f"SELECT count(*) FROM {HISTORY_TABLE.sql()}").fetchone()
        columns_sql, params = physical_columns_sql(state, "duckdb")
        physical = con.execute(columns_sql, params).fetchall()
        schema = table_state(physical, [], False, upper=False).schema
        found = sum(len(con.execute(sql).fetchall()) for sql in (
            history_sql.intervals_sql(HISTORY_TABLE, "duckdb"),
            history_sql.current_rows_sql(HISTORY_TABLE, state, "duckdb"),
            history_sql.state_agreement_sql(HISTORY_TABLE, state, "duckdb",
                                            state_columns(schema)),
        ))
    finally:
        con.close()
    assert count is not None
    return int(count[0]), found


def peer(python: Path, bootstrap: str, topic: str, db: Path, spec: Spec, log: Path,
         timeout_s: float) -> Measured:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONWARNINGS"] = "ignore"
    return run_measured(
        [str(python), "-m", "bench.peer_quix", "--bootstrap", bootstrap, "--topic", topic,
         "--group", f"bench-peer-{uuid.uuid4().hex[:8]}", "--db", str(db),
         "--events", str(spec.events)],
        env, log, timeout_s,
    )


# --------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, key, op, bound in TARGETS:
        value = results.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": label, "value": value, "met": met})
    return out


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} /s"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def fmt_mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def render(results: dict[str, Any]) -> str:
    r = results
    b0 = r["b0_msgs_per_s"]
    keys = "n/a" if r["keys"] is None else f"{r['keys']:,}"
    rows: list[tuple[str, str, str]] = [
        ("B0 raw consume (key+value)", fmt_rate(b0), "1.00"),
        ("  the same, kyc-sync's fetch settings", fmt_rate(r["b0_fetch_tuned_msgs_per_s"]),
         fmt_ratio(ratio(r["b0_fetch_tuned_msgs_per_s"], b0))),
        ("decode + reduce (SyncLoop.ingest)", fmt_rate(r["decode_reduce_per_s"]),
         fmt_ratio(r["decode_reduce_vs_b0"])),
        ("  decode only (decode_batch)", fmt_rate(r["decode_only_per_s"]),
         fmt_ratio(ratio(r["decode_only_per_s"], b0))),
        ("  decode only, 8 fields, in memory", fmt_rate(r["decode_8_fields_per_s"]),
         fmt_ratio(ratio(r["decode_8_fields_per_s"], b0))),
        ("  decode only, 16-field evolved schema", fmt_rate(r["decode_16_fields_per_s"]),
         fmt_ratio(ratio(r["decode_16_fields_per_s"], b0))),
        ("end to end (kyc-sync run)", fmt_rate(r["e2e_per_s"]), fmt_ratio(r["e2e_vs_b0"])),
        ("  consuming: start to last event", fmt_rate(r["e2e_consume_per_s"]),
         fmt_ratio(r["e2e_consume_vs_b0"])),
        (f"end to end, windows of {r['window_events'] or 0:,} events",
         fmt_rate(r["e2e_windows_per_s"]), fmt_ratio(r["e2e_windows_vs_b0"])),
        (f"peer end to end ({r['peer']})", fmt_rate(r["peer_e2e_per_s"]),
         fmt_ratio(ratio(r["peer_e2e_per_s"], b0))),
        ("end to end, history on", fmt_rate(r["e2e_history_per_s"]),
         fmt_ratio(ratio(r["e2e_history_per_s"], b0))),
        ("peak RSS, end to end", fmt_mib(r["peak_rss_bytes"]), ""),
        ("peak RSS, end to end, history on", fmt_mib(r["peak_rss_history_bytes"]), ""),
        ("peak RSS, end to end in windows", fmt_mib(r["peak_rss_windows_bytes"]), ""),
        ("peak RSS, peer", fmt_mib(r["peer_peak_rss_bytes"]), ""),
        (f"MERGE {keys} rows into {r['seeded_rows']:,} (file)", fmt_s(r["merge_s"]), ""),
        ("writer's DELETE + INSERT, same rows (file)", fmt_s(r["upsert_s"]), ""),
        ("CTAS of the same Arrow table (file)", fmt_s(r["ctas_s"]), ""),
        ("e2e flush: write (classify+upsert+ledger)", fmt_s(r["e2e_write_s"]), ""),
        ("e2e flush: total (stage+write+commit)", fmt_s(r["e2e_flush_s"]), ""),
        ("e2e start-up (start to partitions assigned)", fmt_s(r["e2e_startup_s"]), ""),
        ("e2e windows: writes behind consuming", fmt_s(r["e2e_windows_behind_s"]), ""),
        ("e2e windows: last flush (not overlapped)", fmt_s(r["e2e_windows_final_flush_s"]),
         ""),
        ("e2e flush, history on: write", fmt_s(r["e2e_history_write_s"]), ""),
        ("load (produce the topic)", fmt_rate(r["load_per_s"]), ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    lines = [
        f"kyc-sync benchmark: {r['events']:,} events over {r['profiles']:,} profiles, "
        f"{r['partitions']} partitions"
        + ("" if r["payload_avg_bytes"] is None
           else f", {r['payload_avg_bytes']:.0f} B avg payload"),
        f"{'figure'.ljust(width)}  {'value':>16}  x B0",
        f"{'-' * width}  {'-' * 16}  ----",
    ]
    lines += [f"{a.ljust(width)}  {b:>16}  {c}" for a, b, c in rows]
    lines.append("")
    lines.append(f"MERGE / CTAS = {fmt_ratio(r['merge_vs_ctas'])}; "
                 f"DELETE+INSERT / CTAS = {fmt_ratio(r['upsert_vs_ctas'])}; "
                 f"e2e / peer = {fmt_ratio(r['e2e_vs_peer'])}; "
                 f"history on / off = {fmt_ratio(r['e2e_history_vs_off'])}; "
                 f"correct: e2e={r['e2e_correct']} windows={r['e2e_windows_correct']} "
                 f"history={r['e2e_history_correct']} "
                 f"peer={r['peer_correct']}")
    lines.append(f"end to end / B0 with kyc-sync's fetch settings = "
                 f"{fmt_ratio(r['e2e_vs_b0_fetch_tuned'])}")
    lines.append(f"load average {r['loadavg_start']} -> {r['loadavg_end']} on {r['cpus']} cpus")
    lines.append("")
    if r["quick"]:
        lines.append("  smoke size: start-up dominates every rate; judge targets on the full size")
    for t in r["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"  [{mark:>7}] {t['target']} (measured {value})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> dict[str, str]:
    import confluent_kafka
    import fastavro

    return {
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "duckdb": duckdb.__version__,
        "pyarrow": pa.__version__,
    }


def selected_steps(args: argparse.Namespace) -> set[str]:
    """The steps to run: ``--steps`` (all by default), less the history run with
    ``--history off``; ``writes`` brings ``decode`` (it writes decode's staged table), ``wire``
    brings ``e2e`` (its figure is a ratio to it)."""
    steps = set(STEPS if args.steps is None else args.steps.split(","))
    unknown = steps - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown step(s) {sorted(unknown)}; choose among {', '.join(STEPS)}")
    if args.history == "off":
        steps.discard("history")
    if "writes" in steps:
        steps.add("decode")
    if "wire" in steps:
        steps.add("e2e")
    return steps


def loaded_events(bootstrap: str, topic: str, partitions: int) -> int:
    """Messages in ``topic`` (sum of its high watermarks; the benchmark's topics start at 0)."""
    consumer = _consumer(bootstrap)
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(partitions))
    finally:
        consumer.close()


def empty_results() -> dict[str, Any]:
    """Every key of ``latest.json`` a step fills, null until it runs."""
    keys = (
        "load_s", "load_per_s", "load_workers", "payload_avg_bytes", "b0_msgs_per_s", "b0_s",
        "b0_fetch_tuned_msgs_per_s",
        "decode_reduce_per_s", "decode_reduce_s", "decode_only_per_s", "stage_s", "keys",
        "e2e_per_s", "e2e_wall_s", "e2e_flushes", "e2e_ingest_s", "e2e_flush_s", "e2e_write_s",
        "e2e_mismatches", "e2e_correct", "peak_rss_bytes", "e2e_history_per_s",
        "e2e_history_wall_s", "e2e_history_flush_s", "e2e_history_write_s",
        "peak_rss_history_bytes", "e2e_history_rows", "e2e_history_rows_expected",
        "e2e_history_correct", "merge_s", "upsert_s", "ctas_s", "peer_e2e_per_s", "peer_wall_s",
        "peer_peak_rss_bytes", "peer_mismatches", "peer_correct", "e2e_startup_s",
        "e2e_consume_s", "e2e_consume_per_s", "e2e_final_flush_s", "window_events",
        "e2e_windows_per_s", "e2e_windows_wall_s", "e2e_windows_flushes", "e2e_windows_write_s",
        "e2e_windows_behind_s", "e2e_windows_final_flush_s", "peak_rss_windows_bytes",
        "e2e_windows_mismatches", "e2e_windows_correct", "decode_8_fields_per_s",
        "decode_16_fields_per_s", "decode_16_fields_one_by_one",
    )
    return dict.fromkeys(keys)


def run(args: argparse.Namespace) -> dict[str, Any]:
    events, profiles = QUICK if args.quick else FULL
    spec = Spec(args.events or events, args.profiles or profiles, args.partitions)
    steps = selected_steps(args)
    work: Path = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)  # profile data and offsets: owner only
    timeout = args.timeout
    peer_python: Path = args.peer_python
    peer_kind = args.peer if "peer" in steps else "none"
    if peer_kind == "auto":
        peer_kind = "quix" if peer_python == PEER_PYTHON and PEER_READY.exists() else "none"
    if peer_kind == "quix" and not peer_python.exists():
        raise SystemExit(f"no peer environment at {peer_python}: run `make bench-peer-env`")
    r = empty_results()

    with ExitStack() as stack:
        bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            if args.topic:
                raise SystemExit("--topic names a topic of a running broker: give --bootstrap")
            broker = stack.enter_context(LocalKafka(work_dir=work / "kafka"))
            bootstrap = broker.bootstrap
            say(f"local broker on {bootstrap} (started in {broker.startup_seconds:.1f}s)")
        loadavg_start = _loadavg()
        if args.topic:
            topic = args.topic
            found = loaded_events(bootstrap, topic, spec.partitions)
            if found != spec.events:
                raise SystemExit(f"topic {topic} holds {found:,} messages, not {spec.events:,}: "
                                 "load it with `python -m bench.load` and the same sizes")
            say(f"reusing {topic}: {spec.events:,} events over {spec.profiles:,} profiles")
        else:
            topic = f"bench-{spec.events}-{spec.profiles}-{uuid.uuid4().hex[:8]}"
            say(f"loading {spec.events:,} events over {spec.profiles:,} profiles into {topic}")
            loaded: LoadReport = load(bootstrap, topic, spec, args.load_workers)
            say(f"  {loaded.seconds:.1f}s, {loaded.per_s:,.0f} events/s")
            r.update(load_s=loaded.seconds, load_per_s=loaded.per_s, load_workers=loaded.workers,
                     payload_avg_bytes=loaded.payload_bytes / loaded.events)
        if args.pin_cpu is not None:
            os.sched_setaffinity(0, {args.pin_cpu})  # inherited by the e2e and peer processes

        seeded = work / "seeded.duckdb"
        seed_s = seed_warehouse(seeded, spec)
        seeded_rows = len(spec.seeded_ids)
        say(f"seeded table: {seeded_rows:,} rows in {seed_s:.1f}s")
        expected = expected_table(spec) if steps & {"e2e", "history", "peer"} else None

        if "b0" in steps:
            say(f"B0: raw consume loop (load average {_loadavg()})")
            b0_count, b0_s = raw_consume(bootstrap, topic, spec.partitions)
            if b0_count != spec.events:
                raise RuntimeError(f"B0 read {b0_count} messages, expected {spec.events}")
            r.update(b0_msgs_per_s=b0_count / b0_s, b0_s=b0_s)
            say(f"  {r['b0_msgs_per_s']:,.0f} msg/s")
            say("B0 with kyc-sync's fetch settings (consumer.source.client)")
            tuned_count, tuned_s = raw_consume(bootstrap, topic, spec.partitions, **FETCH_OPTIONS)
            if tuned_count != spec.events:
                raise RuntimeError(f"B0 read {tuned_count} messages, expected {spec.events}")
            r.update(b0_fetch_tuned_msgs_per_s=tuned_count / tuned_s)
            say(f"  {r['b0_fetch_tuned_msgs_per_s']:,.0f} msg/s")

        ingested: IngestResult | None = None
        if "decode" in steps:
            say(f"decode + reduce: SyncLoop.ingest over buffered messages (load average "
                f"{_loadavg()})")
            ingested = decode_reduce(bootstrap, topic, spec.partitions)
            if ingested.events != spec.events:
                raise RuntimeError(f"ingest saw {ingested.events} events, expected {spec.events}")
            r.update(decode_reduce_per_s=ingested.events / ingested.ingest_s,
                     decode_reduce_s=ingested.ingest_s, keys=ingested.keys,
                     decode_only_per_s=ingested.decode_only_events / ingested.decode_only_s,
                     stage_s=ingested.stage_s)
            say(f"  {r['decode_reduce_per_s']:,.0f} events/s, {ingested.keys:,} keys; "
                f"staged in {ingested.stage_s:.2f}s")

        if "evolved" in steps:
            evolved_events = min(spec.events, EVOLVED_EVENTS)
            say(f"decode only, in memory: 8-field schema vs a 16-field evolved one "
                f"({evolved_events:,} events, best of {EVOLVED_REPEAT})")
            eight, sixteen = decode_rates(evolved_events, repeat=EVOLVED_REPEAT)
            r.update(decode_8_fields_per_s=eight.per_s, decode_16_fields_per_s=sixteen.per_s,
                     decode_16_fields_one_by_one=sixteen.singles)
            say(f"  {eight.per_s:,.0f} vs {sixteen.per_s:,.0f} events/s; one by one: "
                f"{eight.singles} / {sixteen.singles}")

        if "e2e" in steps:
            assert expected is not None
            say(f"end to end: kyc-sync run --until-caught-up (load average {_loadavg()})")
            e2e_db = work / "e2e.duckdb"
            shutil.copyfile(seeded, e2e_db)
            run_e2e, flushes = e2e(bootstrap, topic, e2e_db, spec, work / "e2e.log", timeout)
            if run_e2e.returncode != 0:
                raise RuntimeError(f"kyc-sync exited {run_e2e.returncode}:\n{run_e2e.log[-4000:]}")
            e2e_bad = mismatches(e2e_db, expected)
            when = timeline(run_e2e)
            r.update(
                e2e_startup_s=when["startup_s"], e2e_consume_s=when["consume_s"],
                e2e_consume_per_s=ratio(spec.events, when["consume_s"]),
                e2e_final_flush_s=when["final_flush_s"],
            )
            r.update(
                e2e_per_s=spec.events / run_e2e.wall_s, e2e_wall_s=run_e2e.wall_s,
                e2e_flushes=len(flushes),
                e2e_ingest_s=sum(float(f.get("decode_s", 0)) for f in flushes),
                e2e_flush_s=sum(float(f.get("total_s", 0)) for f in flushes),
                e2e_write_s=sum(float(f.get("write_s", 0)) for f in flushes),
                e2e_mismatches=e2e_bad, e2e_correct=e2e_bad == 0,
                peak_rss_bytes=run_e2e.peak_rss_bytes,
            )
            say(f"  {r['e2e_per_s']:,.0f} events/s in {run_e2e.wall_s:.1f}s, peak RSS "
                f"{run_e2e.peak_rss_bytes / 2**20:,.0f} MiB, {len(flushes)} flush(es), "
                f"{e2e_bad} mismatching rows")

        if "wire" in steps:
            assert r["e2e_per_s"] is not None
            r.update(wire_format.stage(bootstrap, spec, seeded, work, timeout, r["e2e_per_s"]))

        if "windows" in steps:
            assert expected is not None
            window_events = -(-spec.events // WINDOWS)
            say(f"end to end in windows of {window_events:,} events: kyc-sync run "
                f"--until-caught-up (load average {_loadavg()})")
            windows_db = work / "e2e-windows.duckdb"
            shutil.copyfile(seeded, windows_db)
            run_windows, window_flushes = e2e(bootstrap, topic, windows_db, spec,
                                              work / "e2e-windows.log", timeout,
                                              window_events=window_events)
            if run_windows.returncode != 0:
                raise RuntimeError(f"kyc-sync (windows) exited {run_windows.returncode}:\n"
                                   f"{run_windows.log[-4000:]}")
            windows_bad = mismatches(windows_db, expected)
            r.update(
                window_events=window_events,
                e2e_windows_per_s=spec.events / run_windows.wall_s,
                e2e_windows_wall_s=run_windows.wall_s,
                e2e_windows_flushes=len(window_flushes),
                e2e_windows_write_s=sum(float(f.get("write_s", 0)) for f in window_flushes),
                # Every write but the last one's ran while the next window was consumed.
                e2e_windows_behind_s=sum(float(f.get("write_s", 0)) for f in window_flushes
                                         if f.get("reason") == "events"),
                e2e_windows_final_flush_s=timeline(run_windows)["final_flush_s"],
                peak_rss_windows_bytes=run_windows.peak_rss_bytes,
                e2e_windows_mismatches=windows_bad, e2e_windows_correct=windows_bad == 0,
            )
            say(f"  {r['e2e_windows_per_s']:,.0f} events/s in {run_windows.wall_s:.1f}s, peak "
                f"RSS {run_windows.peak_rss_bytes / 2**20:,.0f} MiB, {len(window_flushes)} "
                f"flushes, {r['e2e_windows_behind_s']:.1f}s of writes behind consuming, "
                f"{windows_bad} mismatching rows")

        if "history" in steps:
            assert expected is not None
            say(f"end to end with history on: kyc-sync run --until-caught-up (load average "
                f"{_loadavg()})")
            history_db = work / "e2e-history.duckdb"
            shutil.copyfile(seeded, history_db)
            history_run, history_flushes = e2e(bootstrap, topic, history_db, spec,
                                               work / "e2e-history.log", timeout, history=True)
            if history_run.returncode != 0:
                raise RuntimeError(f"kyc-sync (history on) exited {history_run.returncode}:\n"
                                   f"{history_run.log[-4000:]}")
            history_bad = mismatches(history_db, expected)
            history_rows, history_problems = history_findings(history_db)
            r.update(
                e2e_history_per_s=spec.events / history_run.wall_s,
                e2e_history_wall_s=history_run.wall_s,
                e2e_history_flush_s=sum(float(f.get("total_s", 0)) for f in history_flushes),
                e2e_history_write_s=sum(float(f.get("write_s", 0)) for f in history_flushes),
                peak_rss_history_bytes=history_run.peak_rss_bytes,
                e2e_history_rows=history_rows, e2e_history_rows_expected=seeded_rows + spec.events,
                e2e_history_correct=history_bad == 0 and history_problems == 0
                and history_rows == seeded_rows + spec.events,
            )
            say(f"  {r['e2e_history_per_s']:,.0f} events/s in {history_run.wall_s:.1f}s, peak "
                f"RSS {history_run.peak_rss_bytes / 2**20:,.0f} MiB, {history_rows:,} history "
                f"rows, {history_problems} history findings, {history_bad} mismatching rows")

        if "writes" in steps:
            assert ingested is not None
            say(f"MERGE vs CTAS of the staged winners (load average {_loadavg()})")
            writes = merge_vs_ctas(seeded, work, ingested.staged)
            r.update(merge_s=writes.merge_s, upsert_s=writes.upsert_s, ctas_s=writes.ctas_s)
            say(f"  MERGE {writes.merge_s:.2f}s, DELETE+INSERT {writes.upsert_s:.2f}s, "
                f"CTAS {writes.ctas_s:.2f}s")

        if peer_kind == "quix":
            assert expected is not None
            say(f"peer: Quix Streams application (load average {_loadavg()})")
            peer_db = work / "peer.duckdb"
            shutil.copyfile(seeded, peer_db)
            peer_run = peer(peer_python, bootstrap, topic, peer_db, spec, work / "peer.log",
                            timeout)
            if peer_run.returncode != 0:
                raise RuntimeError(f"peer exited {peer_run.returncode}:\n{peer_run.log[-4000:]}")
            peer_bad = mismatches(peer_db, expected)
            r.update(peer_e2e_per_s=spec.events / peer_run.wall_s, peer_wall_s=peer_run.wall_s,
                     peer_peak_rss_bytes=peer_run.peak_rss_bytes, peer_mismatches=peer_bad,
                     peer_correct=peer_bad == 0)
            say(f"  {r['peer_e2e_per_s']:,.0f} events/s in {peer_run.wall_s:.1f}s, "
                f"peak RSS {peer_run.peak_rss_bytes / 2**20:,.0f} MiB, "
                f"{peer_bad} mismatching rows")
        loadavg_end = _loadavg()

    results: dict[str, Any] = {
        "events": spec.events,
        "profiles": spec.profiles,
        "partitions": spec.partitions,
        "quick": bool(args.quick),
        "steps": sorted(steps, key=STEPS.index),
        "seeded_rows": seeded_rows,
        **r,
        "history": "on" if "history" in steps else "off",
        "peer": "quixstreams" if peer_kind == "quix" else "none",
        "e2e_vs_b0": ratio(r["e2e_per_s"], r["b0_msgs_per_s"]),
        "e2e_vs_b0_fetch_tuned": ratio(r["e2e_per_s"], r["b0_fetch_tuned_msgs_per_s"]),
        "e2e_history_vs_off": ratio(r["e2e_history_per_s"], r["e2e_per_s"]),
        "decode_reduce_vs_b0": ratio(r["decode_reduce_per_s"], r["b0_msgs_per_s"]),
        "peak_rss_gb": None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 1e9,
        "peak_rss_mib": None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 2**20,
        "e2e_consume_vs_b0": ratio(r["e2e_consume_per_s"], r["b0_msgs_per_s"]),
        "e2e_windows_vs_b0": ratio(r["e2e_windows_per_s"], r["b0_msgs_per_s"]),
        "merge_vs_ctas": ratio(r["merge_s"], r["ctas_s"]),
        "upsert_vs_ctas": ratio(r["upsert_s"], r["ctas_s"]),
        "e2e_vs_peer": ratio(r["e2e_per_s"], r["peer_e2e_per_s"]),
        "cpus": os.cpu_count(),
        "pinned_cpu": args.pin_cpu,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "versions": versions(),
        "topic": topic,
        "work_dir": str(work),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results["targets"] = targets(results)
    return results


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke size: {QUICK[0]:,} events over {QUICK[1]:,} profiles")
    parser.add_argument("--events", type=int, default=0, help=f"default {FULL[0]:,}")
    parser.add_argument("--profiles", type=int, default=0, help=f"default {FULL[1]:,}")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--bootstrap", default="",
                        help="use this broker (default: KAFKA_BOOTSTRAP_SERVERS, else a local one)")
    parser.add_argument("--peer", choices=["auto", "quix", "none"], default="auto",
                        help="auto: the Quix Streams peer when `make bench-peer-env` was run")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--history", choices=["on", "off"], default="on",
                        help="also run end to end with profile history on (default), or skip it")
    parser.add_argument("--steps", default=None,
                        help=f"comma-separated steps to run, among {','.join(STEPS)} (default: "
                        "all); the others' keys are null")
    parser.add_argument("--topic", default="",
                        help="measure this topic, already loaded on --bootstrap with the same "
                        "--events/--profiles (`python -m bench.load`), instead of loading one")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--load-workers", type=int, default=2)
    parser.add_argument("--pin-cpu", type=int, default=None,
                        help="pin the measured processes (not the broker) to this CPU")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="limit of each end-to-end process, seconds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    results_path: Path = args.results
    results_path.parent.mkdir(parents=True, exist_ok=True)
    # The other stages' figures (bench.scale, bench.scale_out, bench.latency) stay beside.
    kept: dict[str, Any] = (json.loads(results_path.read_text())
                            if results_path.exists() else {})
    results_path.write_text(json.dumps({**kept, **results}, indent=2) + "\n")
    print(render(results))
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
