"""The sub-commands behind the CLI."""

from __future__ import annotations

import argparse
import json
import logging

from consumer.app import build_loop, table_names, writer_schema
from consumer.client import new_producer
from consumer.deadletter import DeadLetterError
from consumer.encoding import AuditEncoder
from consumer.loop import StopRun
from consumer.sample import produce_sample
from consumer.settings import Settings
from consumer.topics import TopicError, ensure_topic, preflight
from warehouse.errors import WarehouseError

log = logging.getLogger("kyc_sync")


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        return run(settings, args.until_caught_up)
    if args.command == "produce-sample":
        return sample(settings, args.partitions, args.create_topic, args.seed)
    if args.command == "show":
        return show(settings)
    raise AssertionError(args.command)


def run(settings: Settings, until_caught_up: bool) -> int:
    log.info("settings %s", json.dumps(settings.redacted(), sort_keys=True))
    try:
        preflight(settings.kafka, settings.decoding.on_invalid == "dlq")
        loop = build_loop(settings, until_caught_up)
        loop.install_signal_handlers()
        return loop.run()
    except (WarehouseError, StopRun, TopicError, DeadLetterError) as err:
        log.error("stopped without committing the open window: %s", err)
        return 1


def sample(settings: Settings, partitions: int, create: bool, seed: int | None) -> int:

    if create:
        ensure_topic(settings.kafka, settings.kafka.topic, partitions)
    producer = new_producer(settings.kafka)
    count = produce_sample(
        producer, settings.kafka.topic, AuditEncoder(writer_schema(settings)), partitions, seed
    )
    print(f"produced {count} sample events to {settings.kafka.topic} ({partitions} partitions)")
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
