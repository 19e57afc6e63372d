"""The sub-commands behind the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import write_to_textfile

from batcher.ranges import PartitionRange
from consumer.app import (
    build_loop,
    build_registry,
    open_inspector,
    table_names,
    writer_schema,
)
from consumer.ops import rebuild
from consumer.ops import replay as offset_replay
from consumer.ops import verify as verification
from consumer.ops.checks import render as render_checks
from consumer.ops.checks import run_checks
from consumer.ops.checks import to_json as checks_json
from consumer.ops.durations import format_duration
from consumer.ops.exporter import LagExporter, stop_on_signals
from consumer.ops.exporter import serve as serve_exporter
from consumer.ops.lag import PartitionLag, Thresholds, gather, measure
from consumer.ops.ledger import READ_RETRY_S, LastBatch, last_batch
from consumer.ops.offsets import KafkaOffsets
from consumer.ops.offsets_file import backup_path, read_offsets, render_csv, write_private
from consumer.ops.replay import Reset, ResetKind
from consumer.ops.sample import check_partitions, produce_sample, sample_encoder
from consumer.run.loop import StopRun, SyncLoop
from consumer.run.retry import RetriesExhausted
from consumer.settings import Settings
from consumer.source.client import new_producer
from consumer.source.deadletters import DeadLetterError
from consumer.source.topics import (
    StartAbandoned,
    TopicError,
    admin_client,
    ensure_topic,
    partition_count,
    preflight,
)
from consumer.telemetry.metrics import exposing, serving
from consumer.telemetry.progress import Progress, show_bar
from schemas.columns import KEY
from schemas.errors import KycSyncError, TerminalError, UsageError
from warehouse.errors import WarehouseError
from warehouse.history_sql import as_of_columns, as_of_sql
from warehouse.identifiers import QualifiedName
from warehouse.schema_changes import physical_columns_sql, table_state
from warehouse.tables import col, state_columns

log = logging.getLogger("kyc_sync")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``kyc-sync run``: exit 0 when stopped cleanly or caught up, 1 on a terminal error."""
    log.info("settings %s", json.dumps(settings.redacted(), sort_keys=True))
    loop: SyncLoop | None = None
    stop = threading.Event()
    try:
        with serving(settings.metrics, settings.kafka.topic,
                     settings.kafka.max_poll_interval_s) as metrics:

            def waiting() -> bool:
                """Between attempts to reach Kafka at start: alive, unless asked to stop."""
                if metrics is not None:
                    metrics.polled()
                return stop.is_set()

            with _stop_sets(stop):
                topics = preflight(settings.kafka, settings.decoding.on_invalid == "dlq",
                                   timeout_s=None, stopped=waiting)
            loop = build_loop(settings, args.until_caught_up, [metrics] if metrics else [],
                              topics=topics)
            loop.install_signal_handlers()
            return loop.run()
    except StartAbandoned as err:
        log.info("%s", err)
        return 0
    except KycSyncError as err:
        dropped = 0 if loop is None else loop.dropped_events
        if dropped:
            log.error("stopped without committing the open window (%d event(s), read again "
                      "at the next start): %s", dropped, err)
        else:
            log.error("stopped: %s", err)
        return 1


@contextmanager
def _stop_sets(stop: threading.Event) -> Iterator[None]:
    """While starting: SIGTERM or SIGINT sets ``stop`` (the run loop installs its own)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda _signum, _frame: stop.set()) for s in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def sample(settings: Settings, args: argparse.Namespace) -> int:
    partitions: int = args.partitions
    topic = settings.kafka.topic
    if args.create_topic:
        ensure_topic(settings.kafka, topic, partitions)
    try:
        available = partition_count(admin_client(settings.kafka), topic)
    except KafkaException as err:
        raise TopicError(f"cannot read metadata of topic {topic!r}: {err}") from None
    check_partitions(topic, partitions, available)
    try:
        registry = build_registry(settings) if settings.decoding.format == "confluent" else None
        encoder = sample_encoder(settings, writer_schema(settings), registry)
    except OSError as err:
        print(f"kyc-sync: registering the schema failed: {err}", file=sys.stderr)
        return 1
    producer = new_producer(settings.kafka)
    count = produce_sample(producer, settings.kafka.topic, encoder, partitions, args.seed)
    wire = "" if encoder.schema_id is None else f", schema id {encoder.schema_id}"
    print(f"produced {count} sample events to {settings.kafka.topic} ({partitions} partitions"
          f"{wire})")
    return 0


def show(settings: Settings, args: argparse.Namespace) -> int:
    """``kyc-sync show [--as-of T] [--id N]``: the live profiles now (the view), or at ``T``
    (the history table; docs/operations.md has the same query for Snowflake)."""
    import duckdb

    if settings.warehouse.kind != "duckdb":
        raise UsageError("show reads the DuckDB table; use your Snowflake client for Snowflake "
                         "(docs/operations.md has the as-of query)")
    as_of: datetime | None = getattr(args, "as_of", None)
    key: int | None = getattr(args, "id", None)
    names = table_names(settings, False, settings.duckdb.schema_name)
    params: list[object] = [] if key is None else [key]
    if as_of is not None and names.history is None:  # a usage error before the file is looked at
        raise UsageError("show --as-of reads the history table: set history.enabled "
                         "(KYC_SYNC_HISTORY__ENABLED=true)")
    path = settings.duckdb.path
    if path != ":memory:" and not Path(path).is_file():
        raise TerminalError(f"no DuckDB database at {path} (duckdb.path): nothing synced yet?")
    try:
        con = duckdb.connect(path, read_only=True)
        try:
            if as_of is None or names.history is None:
                only = "" if key is None else f" WHERE {col(KEY, 'duckdb')} = ?"
                sql = f"SELECT * FROM {names.current.sql()}{only} ORDER BY {col(KEY, 'duckdb')}"
            else:
                sql = as_of_sql(names.history, "duckdb", _as_of_columns(con, names.history),
                                by_key=key is not None)
                params = [as_of, as_of, *params]
            cursor = con.execute(sql, params)
            header = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        finally:
            con.close()
    except duckdb.Error as err:
        raise TerminalError(f"cannot read the table from {path}: {err}") from None
    print(format_table(header, rows))
    return 0


def _as_of_columns(con: Any, history: QualifiedName) -> tuple[str, ...]:
    """What ``show --as-of`` prints of the history table as it is: its columns follow the state
    table's (schema changes, column policy), read from the table, not from the packaged
    schema."""
    sql, params = physical_columns_sql(history, "duckdb")
    physical = con.execute(sql, params).fetchall()
    if not physical:
        raise TerminalError(f"cannot read the table: {history.sql()} does not exist (kyc-sync "
                            "run with history on creates it)")
    return as_of_columns(state_columns(table_state(physical, [], False, upper=False).schema))


def format_table(header: list[str], rows: list[tuple[object, ...]]) -> str:
    """A plain aligned text table."""
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines)


# -- operations: replay, lag, check (docs/operations.md) ------------------------------------------


def _reset(args: argparse.Namespace) -> Reset:
    if args.by_duration is not None:
        since_ms = int((time.time() - args.by_duration) * 1000)
        return Reset(ResetKind.DURATION, since_ms, format_duration(args.by_duration))
    simple = [(args.to_earliest, ResetKind.EARLIEST, 0, ""),
              (args.to_latest, ResetKind.LATEST, 0, "")]
    valued = [(args.to_datetime, ResetKind.DATETIME, args.to_datetime, ""),
              (args.shift_by, ResetKind.SHIFT, args.shift_by, str(args.shift_by)),
              (args.from_file, ResetKind.FROM_FILE, 0, str(args.from_file)),
              (args.to_offset, ResetKind.OFFSET, args.to_offset, str(args.to_offset))]
    for given, kind, value, label in simple:
        if given:
            return Reset(kind, value, label)
    for option, kind, value, label in valued:
        if option is not None:
            return Reset(kind, value, label)
    raise UsageError("name where to move the offsets, e.g. --to-earliest")


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


def replay(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: planned, moved, exported or rebuilt; 1: refused or failed; 2: usage."""
    if args.full_refresh:
        return full_refresh(settings, args)
    if args.allow_partial:
        raise UsageError("--allow-partial goes with --full-refresh")
    group = settings.kafka.group_id
    if args.export is not None:
        return export_offsets(settings, args)
    targets = None
    reset = _reset(args)
    if reset.kind is ResetKind.FROM_FILE:
        targets = read_offsets(args.from_file, settings.kafka.topic, group)
    with closing(KafkaOffsets(settings.kafka)) as kafka:
        plan = offset_replay.prepare(kafka, group, reset, args.partitions, targets)
        if args.execute:
            saved: list[Path] = []
            offset_replay.execute(kafka, plan, lambda offsets: saved.append(
                _save_offsets(settings, offsets)))
            plan = replace(plan, saved_to=str(saved[0]))
    _emit(args.json, plan.to_json(args.execute), plan.render(args.execute))
    return 0


def _save_offsets(settings: Settings, offsets: dict[int, int]) -> Path:
    """The undo file of a ``replay --execute``: the group's committed offsets, owner-only."""
    directory = settings.replay.backup_dir
    path = backup_path(directory, settings.kafka.group_id, datetime.now(UTC))
    write_private(path, render_csv(settings.kafka.topic, offsets))
    log.info("saved the group's committed offsets to %s", path)
    return path


def export_offsets(settings: Settings, args: argparse.Namespace) -> int:
    """``replay --export FILE``: the group's committed offsets, as kafka-consumer-groups
    writes them."""
    if args.execute or args.partitions is not None:
        raise UsageError("--export writes the committed offsets of every partition; it takes "
                         "neither --execute nor --partitions")
    kafka_settings = settings.kafka
    with closing(KafkaOffsets(kafka_settings)) as kafka:
        partitions = kafka.partitions()
        committed = kafka.committed(kafka_settings.group_id, partitions)
    offsets = {p: o for p, o in committed.items() if o is not None}
    missing = sorted(p for p, o in committed.items() if o is None)
    path: Path = args.export
    write_private(path, render_csv(kafka_settings.topic, offsets))
    text = (f"exported the committed offsets of group {kafka_settings.group_id} on "
            f"{kafka_settings.topic} ({len(offsets)} partition(s)) to {path}")
    if missing:
        text += (f"\nnote: partition(s) {missing} have no committed offset and are not in "
                 "the file")
    _emit(args.json, {"topic": kafka_settings.topic, "group": kafka_settings.group_id,
                      "file": str(path), "offsets": {str(p): o for p, o in offsets.items()},
                      "no_committed_offset": missing}, text)
    return 0


def _progress(settings: Settings, operation: str, bounds: tuple[PartitionRange, ...],
              phases: tuple[str, ...]) -> Progress:
    return Progress(operation, bounds, phases, stream=sys.stderr,
                    bar=show_bar(sys.stderr, settings.log_format))


def full_refresh(settings: Settings, args: argparse.Namespace) -> int:
    if args.partitions is not None:
        raise UsageError("--full-refresh rebuilds from every partition; drop --partitions")
    with closing(KafkaOffsets(settings.kafka)) as kafka:
        plan = rebuild.plan_refresh(kafka, settings.kafka.group_id)
    if not args.execute:
        _emit(args.json, plan.to_json(False), plan.render(False, args.allow_partial))
        return 0
    if not args.json:
        print(plan.render(True, args.allow_partial), flush=True)
    progress = _progress(settings, "full refresh", plan.ranges, rebuild.PHASES)
    try:
        with exposing(settings.metrics, progress), progress.shown():
            result = rebuild.full_refresh(settings, plan, args.allow_partial, progress)
    except (WarehouseError, StopRun, TopicError, DeadLetterError, RetriesExhausted) as err:
        log.error("full refresh stopped, the live table is unchanged: %s", err)
        return 1
    if args.json:
        print(json.dumps({**plan.to_json(True), **result.to_json()}, indent=2))
    else:
        print(result.render())
    return 0


def lag(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: within the thresholds; 1: over one, or Kafka unreadable."""
    if args.serve:
        return serve_lag(settings, args)
    kafka_settings = settings.kafka
    with closing(KafkaOffsets(kafka_settings)) as kafka:
        report = gather(kafka, kafka_settings.group_id, lambda: _read_last_batch(settings),
                        Thresholds(args.max_lag, args.max_age), args.members)
    _emit(args.json, report.to_json(), report.render())
    return 1 if report.problems() else 0


def _read_last_batch(settings: Settings, retry_s: float = READ_RETRY_S) -> LastBatch | None:
    with open_inspector(settings) as inspector:
        return last_batch(inspector, inspector.names, settings.warehouse.kind,
                          settings.kafka.topic, retry_s)


def serve_lag(settings: Settings, args: argparse.Namespace) -> int:
    """``lag --serve``: export the group's lag until SIGTERM/SIGINT (exit 0), or exit 1 when
    the metrics endpoint cannot be served."""
    if args.json or args.members or args.max_lag is not None or args.max_age is not None:
        raise UsageError("--serve exports every figure as metrics; it takes no other option")
    kafka_settings = settings.kafka
    interval = settings.exporter.interval_s
    if not settings.metrics.enabled:
        raise UsageError("lag --serve needs metrics.enabled=true (it serves /metrics)")
    with closing(KafkaOffsets(kafka_settings, timeout_s=min(30.0, interval * 2))) as kafka:
        exporter = LagExporter(
            kafka_settings.topic, kafka_settings.group_id,
            lambda: gather(kafka, kafka_settings.group_id,
                           lambda: _read_last_batch(settings, retry_s=min(5.0, interval))),
        )
        with exposing(settings.metrics, exporter) as server:
            if server is None:
                return 1
            log.info("lag exporter for group %s on %s: reading every %.0fs",
                     kafka_settings.group_id, kafka_settings.topic, interval)
            stop = threading.Event()
            stop_on_signals(stop)
            serve_exporter(exporter, interval, stop)
    return 0


def check(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: every check passed; 1: one failed (one line each)."""
    max_age = settings.checks.freshness_max_age_s if args.max_age is None else args.max_age
    kafka_error = None
    partitions: tuple[PartitionLag, ...] | None = None
    now_ms = int(time.time() * 1000)
    try:
        with closing(KafkaOffsets(settings.kafka)) as kafka:
            partitions, now_ms = measure(kafka, settings.kafka.group_id)
    except KycSyncError as err:
        kafka_error = str(err)
    with open_inspector(settings) as inspector:
        results = run_checks(inspector, settings.warehouse.kind, settings.kafka.topic,
                             settings.checks.not_null, max_age,
                             (partitions, now_ms, kafka_error))
    _emit(args.json, checks_json(results), render_checks(results))
    return 0 if all(r.ok for r in results) else 1


def verify(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: the table equals the stream; 1: it differs, or no verdict could be reached."""
    kafka_settings = settings.kafka
    result = None
    try:
        with closing(KafkaOffsets(kafka_settings)) as kafka:
            plan = verification.plan_verify(kafka, kafka_settings.group_id)
        progress = _progress(settings, "verify", plan.ranges, verification.PHASES)
        with exposing(settings.metrics, progress), progress.shown():
            result = verification.verify(settings, plan, progress)
    except (WarehouseError, StopRun, TopicError, RetriesExhausted) as err:
        log.error("verify stopped without a verdict: %s", err)
        return 1
    finally:
        if args.textfile is not None:
            write_to_textfile(str(args.textfile), verification.verdict_metrics(
                kafka_settings.topic, kafka_settings.group_id, result, time.time()))
    _emit(args.json, result.to_json(), result.render())
    return 0 if result.ok else 1


# -- the dead-letter topic: inspect, redrive (docs/operations.md) -----------------------------


def dlq_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.ops import dlq

    summary = dlq.inspect(settings)
    _emit(args.json, summary.to_json(), summary.render())
    return 0


def dlq_redrive(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: planned or applied (still-invalid messages are not a failure); 1: failed."""
    from consumer.app import build_decoder, build_warehouse
    from consumer.ops import dlq

    plan = dlq.redrive(
        settings, build_decoder(settings), build_warehouse(settings), args.error_class,
        args.from_start, args.execute,
    )
    _emit(args.json, plan.to_json(args.execute), plan.render(args.execute))
    return 0
