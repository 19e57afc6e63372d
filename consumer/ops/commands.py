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

from consumer.app import build_loop, table_names, writer_schema
from consumer.capabilities import UnsupportedWarehouse, open_inspector
from consumer.ops import rebuild
from consumer.ops import replay as offset_replay
from consumer.ops.checks import render as render_checks
from consumer.ops.checks import run_checks
from consumer.ops.checks import to_json as checks_json
from consumer.ops.durations import format_duration
from consumer.ops.lag import LagReport, Thresholds, measure
from consumer.ops.ledger import last_batch
from consumer.ops.offsets import KafkaOffsets, OffsetsError
from consumer.ops.replay import GroupActiveError, Reset, ResetKind
from consumer.ops.sample import produce_sample, sample_encoder
from consumer.run.loop import StopRun
from consumer.settings import Settings
from consumer.source.client import new_producer
from consumer.source.deadletters import DeadLetterError
from consumer.source.topics import TopicError, ensure_topic, preflight
from consumer.telemetry.metrics import serving
from warehouse.errors import WarehouseError

log = logging.getLogger("kyc_sync")


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        return run(settings, args.until_caught_up)
    if args.command == "produce-sample":
        return sample(settings, args.partitions, args.create_topic, args.seed)
    if args.command == "show":
        return show(settings)
    if args.command == "replay":
        return replay(settings, args)
    if args.command == "lag":
        return lag(settings, args.json, Thresholds(args.max_lag, args.max_age))
    if args.command == "check":
        return check(settings, args.json, args.max_age)
    raise AssertionError(args.command)


def run(settings: Settings, until_caught_up: bool) -> int:
    log.info("settings %s", json.dumps(settings.redacted(), sort_keys=True))
    try:
        with serving(settings.metrics, settings.kafka.topic) as observer:
            preflight(settings.kafka, settings.decoding.on_invalid == "dlq")
            loop = build_loop(settings, until_caught_up, observer)
            loop.install_signal_handlers()
            return loop.run()
    except (WarehouseError, StopRun, TopicError, DeadLetterError) as err:
        log.error("stopped without committing the open window: %s", err)
        return 1


def sample(settings: Settings, partitions: int, create: bool, seed: int | None) -> int:

    if create:
        ensure_topic(settings.kafka, settings.kafka.topic, partitions)
    try:
        encoder = sample_encoder(settings, writer_schema(settings))
    except OSError as err:
        print(f"kyc-sync: registering the schema failed: {err}", file=sys.stderr)
        return 1
    producer = new_producer(settings.kafka)
    count = produce_sample(producer, settings.kafka.topic, encoder, partitions, seed)
    wire = "" if encoder.schema_id is None else f", schema id {encoder.schema_id}"
    print(f"produced {count} sample events to {settings.kafka.topic} ({partitions} partitions"
          f"{wire})")
    return 0


def show(settings: Settings) -> int:
    import duckdb

    if settings.warehouse.kind != "duckdb":
        print("show reads the DuckDB table; use your Snowflake client for Snowflake")
        return 2
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
        print("kyc-sync: --allow-partial goes with --full-refresh", file=sys.stderr)
        return 2
    group = settings.kafka.group_id
    try:
        with closing(KafkaOffsets(settings.kafka)) as kafka:
            plan = offset_replay.prepare(kafka, group, _reset(args), args.partitions)
            if args.execute:
                offset_replay.execute(kafka, plan)
    except ValueError as err:
        print(f"kyc-sync: {err}", file=sys.stderr)
        return 2
    except (GroupActiveError, OffsetsError) as err:
        print(f"kyc-sync: {err}", file=sys.stderr)
        return 1
    _emit(args.json, plan.to_json(args.execute), plan.render(args.execute))
    return 0


def full_refresh(settings: Settings, args: argparse.Namespace) -> int:
    if args.partitions is not None:
        print("kyc-sync: --full-refresh rebuilds from every partition; drop --partitions",
              file=sys.stderr)
        return 2
    try:
        with closing(KafkaOffsets(settings.kafka)) as kafka:
            plan = rebuild.plan_refresh(kafka, settings.kafka.group_id)
            if not args.execute:
                _emit(args.json, plan.to_json(False), plan.render(False, args.allow_partial))
                return 0
            result = rebuild.full_refresh(settings, kafka, plan, args.allow_partial)
    except (GroupActiveError, rebuild.RefreshError, OffsetsError, UnsupportedWarehouse) as err:
        print(f"kyc-sync: {err}", file=sys.stderr)
        return 1
    except (WarehouseError, StopRun, TopicError, DeadLetterError) as err:
        log.error("full refresh stopped, the live table is unchanged: %s", err)
        return 1
    data = {**plan.to_json(True), "events": result.events, "batches": result.batches,
            "offsets": dict(result.offsets)}
    _emit(args.json, data, f"{plan.render(True, args.allow_partial)}\n{result.render()}")
    return 0


def lag(settings: Settings, as_json: bool, thresholds: Thresholds) -> int:
    """Exit 0: within the thresholds; 1: over one, or Kafka unreadable."""
    kafka_settings = settings.kafka
    try:
        with closing(KafkaOffsets(kafka_settings)) as kafka:
            partitions, now_ms = measure(kafka, kafka_settings.group_id)
    except OffsetsError as err:
        print(f"kyc-sync: {err}", file=sys.stderr)
        return 1
    batch, error = None, None
    try:
        with open_inspector(settings) as inspector:
            batch = last_batch(inspector, inspector.names, settings.warehouse.kind,
                               kafka_settings.topic)
    except (WarehouseError, UnsupportedWarehouse) as err:
        error = str(err)
    report = LagReport(kafka_settings.topic, kafka_settings.group_id, partitions, now_ms,
                       batch, error, thresholds)
    _emit(as_json, report.to_json(), report.render())
    return 1 if report.problems() else 0


def check(settings: Settings, as_json: bool, max_age_s: float | None) -> int:
    """Exit 0: every check passed; 1: one failed (one line each)."""
    max_age = settings.checks.freshness_max_age_s if max_age_s is None else max_age_s
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with open_inspector(settings) as inspector:
            results = run_checks(inspector, settings.warehouse.kind, settings.kafka.topic,
                                 settings.checks.not_null, max_age, now)
    except UnsupportedWarehouse as err:
        print(f"kyc-sync: {err}", file=sys.stderr)
        return 2
    _emit(as_json, checks_json(results), render_checks(results))
    return 0 if all(r.ok for r in results) else 1
