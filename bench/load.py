"""The benchmark's data: a deterministic audit history, its oracle, a fast topic loader and the
pre-existing warehouse table.

The history (``Spec``): ``events`` changes over ``profiles`` profiles. Every profile is created by
an INSERT among the first ``profiles`` events; later events pick a profile at random and are
mostly UPDATEs, some DELETEs (``DELETE_SHARE``) and re-INSERTs. About ``LATE_SHARE`` of the events
carry an op_time earlier than events produced before them (out of order within a partition,
since a profile always maps to one partition). op_times are unique, so the latest event of a
profile is well defined without looking at Kafka positions, and the oracle needs no offsets.

Events are generated in chunks of ``CHUNK`` with one random stream per chunk, so any chunk can be
produced (or re-generated for the oracle) on its own, in any process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from confluent_kafka import Producer

from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from tools.localkafka import create_topic
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.tables import TableNames

BASE_US = 1_700_000_000_000_000
"""op_time of event 0, microseconds since the epoch."""
SEED_OP_TIME_US = BASE_US - 86_400_000_000
"""op_time of the rows already in the table: older than every event of the topic."""
CHUNK = 100_000
LATE_SHARE = 0.05
DELETE_SHARE = 0.05
REINSERT_SHARE = 0.05

# (kyc_profile_id, event index, op_type, op_time)
Change = tuple[int, int, str, int]


@dataclass(frozen=True, slots=True)
class Spec:
    """What the benchmark topic holds."""

    events: int
    profiles: int
    partitions: int = 6
    seed: int = 20_240_115

    def __post_init__(self) -> None:
        if not 0 < self.profiles <= self.events:
            raise ValueError("need 0 < profiles <= events")

    @property
    def step(self) -> int:
        """op_time spacing: a power of two above ``events`` keeps every op_time unique."""
        return 1 << self.events.bit_length()

    @property
    def seeded_ids(self) -> range:
        """Profiles already in the table before the run: as many as the topic has, shifted by a
        fifth, so a fifth of the topic's profiles are new and the MERGE mostly updates."""
        return range(self.profiles // 5, self.profiles // 5 + self.profiles)


def chunk_changes(spec: Spec, chunk: int) -> Iterator[Change]:
    """The changes of events ``chunk * CHUNK`` .. (exclusive) the next chunk, in produce order."""
    rng = random.Random(spec.seed * 1_000_003 + chunk)
    rand = rng.random
    randrange = rng.randrange
    step = spec.step
    start = chunk * CHUNK
    for i in range(start, min(start + CHUNK, spec.events)):
        if i < spec.profiles:
            key, op = i, "INSERT"
        else:
            key = randrange(spec.profiles)
            draw = rand()
            op = ("DELETE" if draw < DELETE_SHARE
                  else "INSERT" if draw < DELETE_SHARE + REINSERT_SHARE else "UPDATE")
        late = randrange(1, min(i, 200_000) + 1) if i and rand() < LATE_SHARE else 0
        yield key, i, op, BASE_US + (i - late) * step + i


def changes(spec: Spec) -> Iterator[Change]:
    for chunk in range((spec.events + CHUNK - 1) // CHUNK):
        yield from chunk_changes(spec, chunk)


def record(change: Change) -> dict[str, Any]:
    """The Avro record of a change, with realistic field sizes (about 75 bytes encoded)."""
    key, i, op, op_time = change
    return {
        "kyc_profile_id": key,
        "goldtier_id": goldtier_id(i),
        "cid": f"CID-{key:09d}",
        "party_id": f"PTY-{key:09d}-{i % 97:02d}",
        "created_date": BASE_US - 3_600_000_000 + key,
        "updated_date": op_time,
        "op_type": op,
        "op_time": op_time,
    }


def goldtier_id(event_index: int) -> str:
    """Unique per event, so a wrong winner shows in the table."""
    return f"GT-{event_index:010d}"


# --------------------------------------------------------------------------- oracle


def latest_changes(spec: Spec) -> dict[int, Change]:
    """The latest change of every profile of the topic (greatest op_time)."""
    latest: dict[int, Change] = {}
    get = latest.get
    for change in changes(spec):
        known = get(change[0])
        if known is None or change[3] > known[3]:
            latest[change[0]] = change
    return latest


def expected_current(spec: Spec) -> dict[int, tuple[str, int]]:
    """``kyc_profile_current`` after the whole topic is applied to the seeded table:
    kyc_profile_id -> (goldtier_id, op_time µs)."""
    current = {k: (seed_goldtier_id(k), SEED_OP_TIME_US) for k in spec.seeded_ids}
    for key, (_, i, op, op_time) in latest_changes(spec).items():
        if op == "DELETE":
            current.pop(key, None)
        else:
            current[key] = (goldtier_id(i), op_time)
    return current


def expected_table(spec: Spec) -> pa.Table:
    current = expected_current(spec)
    return pa.table({
        "kyc_profile_id": pa.array(list(current), pa.int64()),
        "goldtier_id": pa.array([v[0] for v in current.values()], pa.string()),
        "op_time_us": pa.array([v[1] for v in current.values()], pa.int64()),
    })


def mismatches(db_path: Path, expected: pa.Table, view: str = "kyc_profile_current") -> int:
    """Rows that differ between ``view`` and the oracle (both directions); 0 means equal."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        con.register("expected_rows", expected)
        row = con.execute(
            f"""
            WITH actual AS (
                SELECT kyc_profile_id, goldtier_id, epoch_us(op_time) AS op_time_us FROM {view}
            )
            SELECT (SELECT count(*) FROM (SELECT * FROM actual EXCEPT ALL
                                          SELECT * FROM expected_rows))
                 + (SELECT count(*) FROM (SELECT * FROM expected_rows EXCEPT ALL
                                          SELECT * FROM actual))
            """
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- the seeded table


def table_names() -> TableNames:
    """kyc-sync's default table names in schema ``main`` (what the benchmark runs with)."""
    return TableNames(
        state=QualifiedName.of("main", "kyc_profile_state"),
        current=QualifiedName.of("main", "kyc_profile_current"),
        ledger=QualifiedName.of("main", "kyc_sync_ledger"),
    )


def seed_goldtier_id(key: int) -> str:
    return f"SEED-{key:010d}"


def seed_warehouse(db_path: Path, spec: Spec) -> float:
    """Create kyc-sync's tables in ``db_path`` and fill the state table with one older row per
    ``spec.seeded_ids``. Returns the seconds it took."""
    started = time.perf_counter()
    names = table_names()
    DuckDBWarehouse(str(db_path), names).open()
    ids = spec.seeded_ids
    con = duckdb.connect(str(db_path))
    try:
        con.execute(
            f"""
            INSERT INTO {names.state.sql()}
            SELECT i, 'SEED-' || lpad(i::VARCHAR, 10, '0'), 'CID-' || lpad(i::VARCHAR, 9, '0'),
                   'PTY-' || lpad(i::VARCHAR, 9, '0') || '-00',
                   make_timestamp($seed_us - 3600000000), make_timestamp($seed_us),
                   'INSERT', make_timestamp($seed_us), 0, 0, false, 'seed',
                   make_timestamp($seed_us)
            FROM range($first, $stop) AS r(i)
            """,
            {"seed_us": SEED_OP_TIME_US, "first": ids.start, "stop": ids.stop},
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class LoadReport:
    events: int
    payload_bytes: int
    seconds: float
    workers: int

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def producer_config(bootstrap: str) -> dict[str, Any]:
    """Throughput settings: big batches, long linger, keyed partitioning (Java's murmur2)."""
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 200,
        "batch.size": 4 * 1024 * 1024,
        "batch.num.messages": 200_000,
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
        "message.max.bytes": 8 * 1024 * 1024,
        "compression.type": "none",
        "acks": "1",
        "enable.idempotence": False,
        "partitioner": "murmur2_random",
    }


def _produce_chunks(args: tuple[str, str, Spec, list[int], int | None]) -> tuple[int, int]:
    """Produce some chunks (one worker). Returns (events, payload bytes)."""
    bootstrap, topic, spec, chunks, schema_id = args
    encode = AuditEncoder(audit_schema(), schema_id).encode
    producer = Producer(producer_config(bootstrap))
    produce = producer.produce
    count = size = 0
    for chunk in chunks:
        for change in chunk_changes(spec, chunk):
            value = encode(record(change))
            key = message_key(change[0])
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
            size += len(value)
        producer.poll(0)
    remaining = producer.flush(300)
    if remaining:
        raise RuntimeError(f"{remaining} benchmark events were not acknowledged")
    return count, size


def load(
    bootstrap: str, topic: str, spec: Spec, workers: int = 2, schema_id: int | None = None
) -> LoadReport:
    """Create ``topic`` and produce the history to it; ``workers`` processes share the chunks.
    ``schema_id`` set: in the Confluent wire format, with that registry id in each message.

    Order within a partition follows the event index inside one worker's chunks only; the oracle
    does not depend on it (op_times are unique).
    """
    create_topic(bootstrap, topic, spec.partitions)
    n_chunks = (spec.events + CHUNK - 1) // CHUNK
    workers = max(1, min(workers, n_chunks))
    plan = [(bootstrap, topic, spec, list(range(w, n_chunks, workers)), schema_id)
            for w in range(workers)]
    started = time.perf_counter()
    if workers == 1:
        results = [_produce_chunks(plan[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_produce_chunks, plan)
    seconds = time.perf_counter() - started
    events = sum(r[0] for r in results)
    if events != spec.events:
        raise RuntimeError(f"produced {events} events, expected {spec.events}")
    return LoadReport(events, sum(r[1] for r in results), seconds, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description="Load the benchmark topic (and nothing else).")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    spec = Spec(args.events, args.profiles, args.partitions)
    report = load(args.bootstrap, args.topic, spec, args.workers)
    print(f"loaded {report.events} events ({report.payload_bytes / report.events:.1f} B avg) "
          f"in {report.seconds:.1f}s: {report.per_s:,.0f} events/s with {report.workers} workers")


if __name__ == "__main__":
    main()
