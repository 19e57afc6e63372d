"""The sub-commands behind the CLI."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from consumer.app import (
    UnsupportedWarehouse,
    build_loop,
    open_inspector,
    table_names,
    writer_schema,
)
from consumer.ops import rebuild
from consumer.ops import replay as offset_replay
from consumer.ops.checks import render as render_checks
from consumer.ops.checks import run_checks
from consumer.ops.checks import to_json as checks_json
from consumer.ops.durations import format_duration
from consumer.ops.lag import LagReport, Thresholds, measure
from consumer.ops.ledger import last_batch
from consumer.ops.offsets import KafkaOffsets
from consumer.ops.replay import Reset, ResetKind
from consumer.ops.sample import produce_sample, sample_encoder
from consumer.run.loop import StopRun
from consumer.run.retry import RetriesExhausted
from consumer.settings import Settings
from consumer.source.client import new_producer
from consumer.source.deadletters import DeadLetterError
from consumer.source.topics import TopicError, ensure_topic, preflight
from consumer.telemetry.metrics import serving
from schemas.errors import KycSyncError, UsageError
from warehouse.errors import WarehouseError

log = logging.getLogger("kyc_sync")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``kyc-sync run``: exit 0 when stopped cleanly or caught up, 1 on a terminal error."""
    log.info("settings %s", json.dumps(settings.redacted(), sort_keys=True))
    try:
        with serving(settings.metrics, settings.kafka.topic) as metrics:
            preflight(settings.kafka, settings.decoding.on_invalid == "dlq")
            loop = build_loop(settings, args.until_caught_up, [metrics] if metrics else [])
            loop.install_signal_handlers()
            return loop.run()
    except KycSyncError as err:
        log.error("stopped without committing the open window: %s", err)
        return 1


def sample(settings: Settings, args: argparse.Namespace) -> int:
    partitions: int = args.partitions
    if args.create_topic:
        ensure_topic(settings.kafka, settings.kafka.topic, partitions)
    try:
        encoder = sample_encoder(settings, writer_schema(settings))
    except OSError as err:
        print(f"kyc-sync: registering the schema failed: {err}", file=sys.stderr)
        return 1
    producer = new_producer(settings.kafka)
    count = produce_sample(producer, settings.kafka.topic, encoder, partitions, args.seed)
    wire = "" if encoder.schema_id is None else f", schema id {encoder.schema_id}"
    print(f"produced {count} sample events to {settings.kafka.topic} ({partitions} partitions"
          f"{wire})")
    return 0


def show(settings: Settings, _args: argparse.Namespace) -> int:
    import duckdb

    if settings.warehouse.kind != "duckdb":
        raise UsageError("show reads the DuckDB table; use your Snowflake client for Snowflake")
    names = table_names(settings, False, settings.duckdb.schema_name)
    con = duckdb.connect(settings.duckdb.path, read_only=True)
    try:
        cursor = con.execute(f"SELECT * FROM {names.current.sql()} ORDER BY kyc_profile_id")
        header = [d[0] for d in cursor.description]
        print(format_table(header, cursor.fetchall()))
    finally:
        con.close()
    return 0


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
    if args.to_earliest:
        return Reset(ResetKind.EARLIEST)
    if args.to_latest:
        return Reset(ResetKind.LATEST)
    if args.to_datetime is not None:
        return Reset(ResetKind.DATETIME, args.to_datetime)
    if args.by_duration is not None:
        since_ms = int((time.time() - args.by_duration) * 1000)
        return Reset(ResetKind.DURATION, since_ms, format_duration(args.by_duration))
    if args.shift_by is not None:
        return Reset(ResetKind.SHIFT, args.shift_by, str(args.shift_by))
    return Reset(ResetKind.OFFSET, args.to_offset, str(args.to_offset))


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


def replay(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: planned or moved; 1: refused or failed; 2: usage."""
    if args.full_refresh:
        return full_refresh(settings, args)
    if args.allow_partial:
        raise UsageError("--allow-partial goes with --full-refresh")
    group = settings.kafka.group_id
    with closing(KafkaOffsets(settings.kafka)) as kafka:
        plan = offset_replay.prepare(kafka, group, _reset(args), args.partitions)
        if args.execute:
            offset_replay.execute(kafka, plan)
    _emit(args.json, plan.to_json(args.execute), plan.render(args.execute))
    return 0


def full_refresh(settings: Settings, args: argparse.Namespace) -> int:
    if args.partitions is not None:
        raise UsageError("--full-refresh rebuilds from every partition; drop --partitions")
    with closing(KafkaOffsets(settings.kafka)) as kafka:
        plan = rebuild.plan_refresh(kafka, settings.kafka.group_id)
        if not args.execute:
            _emit(args.json, plan.to_json(False), plan.render(False, args.allow_partial))
            return 0
        try:
            result = rebuild.full_refresh(settings, kafka, plan, args.allow_partial)
        except (WarehouseError, StopRun, TopicError, DeadLetterError, RetriesExhausted) as err:
            log.error("full refresh stopped, the live table is unchanged: %s", err)
            return 1
    data = {**plan.to_json(True), "events": result.events, "batches": result.batches,
            "offsets": dict(result.offsets)}
    _emit(args.json, data, f"{plan.render(True, args.allow_partial)}\n{result.render()}")
    return 0


def lag(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: within the thresholds; 1: over one, or Kafka unreadable."""
    kafka_settings = settings.kafka
    with closing(KafkaOffsets(kafka_settings)) as kafka:
        partitions, now_ms = measure(kafka, kafka_settings.group_id)
    batch, error = None, None
    try:
        with open_inspector(settings) as inspector:
            batch = last_batch(inspector, inspector.names, settings.warehouse.kind,
                               kafka_settings.topic)
    except (WarehouseError, UnsupportedWarehouse) as err:
        error = str(err)
    report = LagReport(kafka_settings.topic, kafka_settings.group_id, partitions, now_ms,
                       batch, error, Thresholds(args.max_lag, args.max_age))
    _emit(args.json, report.to_json(), report.render())
    return 1 if report.problems() else 0


def check(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: every check passed; 1: one failed (one line each)."""
    max_age = settings.checks.freshness_max_age_s if args.max_age is None else args.max_age
    now = datetime.now(UTC).replace(tzinfo=None)
    with open_inspector(settings) as inspector:
        results = run_checks(inspector, settings.warehouse.kind, settings.kafka.topic,
                             settings.checks.not_null, max_age, now)
    _emit(args.json, checks_json(results), render_checks(results))
    return 0 if all(r.ok for r in results) else 1
