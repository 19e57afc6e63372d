"""The peer of the benchmark: the same job written as a Quix Streams application.

What a Python user would write instead of kyc-sync: a ``StreamingDataFrame`` over the audit topic
with Quix's Avro deserializer (fastavro ``schemaless_reader``, logical types on, so timestamps are
``datetime``), and a sink that keeps the latest event per ``kyc_profile_id`` and, when Quix
checkpoints, applies them to DuckDB with the same guarded MERGE (same tables, same guard) in one
transaction. Quix commits the Kafka offsets only after the sink's ``flush`` returned, which is
kyc-sync's commit protocol. ``commit_interval`` is the window: one checkpoint covers the topic.

quixstreams pins confluent-kafka < 2.13 and pydantic < 2.14, so it cannot share kyc-sync's
environment: it runs from its own virtualenv (``make bench-peer-env``, ``.local/bench/peer-venv``)
with the repository on ``PYTHONPATH`` (for the schema and the table definitions only).

    python -m bench.peer_quix --bootstrap HOST:PORT --topic T --group G --db F --events N
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

# quixstreams lives in the peer's virtualenv only, not where mypy runs.
from quixstreams import Application  # type: ignore[import-not-found]
from quixstreams.models.serializers.avro import (  # type: ignore[import-not-found]
    AvroDeserializer,
)
from quixstreams.sinks import BaseSink  # type: ignore[import-not-found]

from schemas import audit_schema
from schemas.columns import BUSINESS_COLUMNS, KEY
from warehouse.identifiers import QualifiedName
from warehouse.sql import merge_sql
from warehouse.staging import STAGED_SCHEMA

STATE = QualifiedName.of("main", "kyc_profile_state")
DATA_FIELDS = tuple(c.name for c in BUSINESS_COLUMNS)


def naive_utc(value: datetime | None) -> datetime | None:
    """Quix/fastavro return aware UTC datetimes; the table holds naive UTC."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class LatestPerKeySink(BaseSink):  # type: ignore[misc]  # BaseSink is Any to mypy
    """Keeps the latest event per key (op_time, partition, offset); MERGEs them on flush."""

    def __init__(self, db_path: str) -> None:
        super().__init__()
        self.db_path = db_path
        self.latest: dict[int, tuple[tuple[datetime, int, int], dict[str, Any]]] = {}
        self.flushes = 0
        self.write_s = 0.0

    def add(
        self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int,
        offset: int,
    ) -> None:
        version = (value["op_time"], partition, offset)
        known = self.latest.get(value[KEY])
        if known is None or version > known[0]:
            self.latest[value[KEY]] = (version, value)

    def flush(self) -> None:
        if not self.latest:
            return
        started = time.perf_counter()
        batch_id = uuid.uuid4().hex
        synced_at = datetime.now(UTC).replace(tzinfo=None)
        rows = []
        for (op_time, partition, offset), value in self.latest.values():
            row = {name: value.get(name) for name in DATA_FIELDS}
            row["created_date"] = naive_utc(row["created_date"])
            row["updated_date"] = naive_utc(row["updated_date"])
            row.update(
                op_type=value["op_type"], op_time=naive_utc(op_time), src_partition=partition,
                src_offset=offset, is_deleted=value["op_type"] == "DELETE", batch_id=batch_id,
                synced_at=synced_at,
            )
            rows.append(row)
        staged = pa.Table.from_pylist(rows, schema=STAGED_SCHEMA)
        con = duckdb.connect(self.db_path)
        try:
            con.begin()
            con.register("peer_staged", staged)
            con.execute(merge_sql(STATE, "peer_staged", "duckdb"))
            con.unregister("peer_staged")
            con.commit()
        finally:
            con.close()
        self.latest = {}
        self.flushes += 1
        self.write_s += time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--db", required=True, help="DuckDB file with kyc-sync's tables")
    parser.add_argument("--events", type=int, required=True, help="stop after this many")
    parser.add_argument("--window-s", type=float, default=3600.0, help="commit_interval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    started = time.perf_counter()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.window_s,
        use_changelog_topics=False,
        auto_create_topics=False,
        loglevel="WARNING",
    )
    topic = app.topic(
        args.topic, key_deserializer="str", value_deserializer=AvroDeserializer(audit_schema())
    )
    sink = LatestPerKeySink(args.db)
    sdf = app.dataframe(topic)
    sdf.sink(sink)
    app.run(count=args.events, timeout=60.0)
    seconds = time.perf_counter() - started
    print(
        f"peer: {args.events} events in {seconds:.2f}s, {sink.flushes} flush(es), "
        f"write_s={sink.write_s:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
