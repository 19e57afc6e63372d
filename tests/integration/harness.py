"""Helpers of the integration tests: run the real CLI, produce events, read the table, oracle."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from tests.oracles.history import build_history

BASE_US = 1_700_000_000_000_000
FIELDS = ("goldtier_id", "cid", "party_id", "created_date", "updated_date")


@dataclass(frozen=True, slots=True)
class Event:
    kyc_profile_id: int
    op_type: str
    op_time: int
    goldtier_id: str
    partition: int

    def record(self) -> dict[str, Any]:
        return {
            "kyc_profile_id": self.kyc_profile_id,
            "goldtier_id": self.goldtier_id,
            "cid": f"CID-{self.kyc_profile_id}",
            "party_id": f"P-{self.kyc_profile_id}",
            "created_date": BASE_US,
            "updated_date": self.op_time,
            "op_type": self.op_type,
            "op_time": self.op_time,
        }


@dataclass
class Produced:
    """Events with the (partition, offset) the broker gave them."""

    events: list[tuple[Event, int, int]] = field(default_factory=list)


def history(
    rng: random.Random, n_events: int, n_keys: int, partitions: int, base_us: int = BASE_US
) -> list[Event]:
    """Random changes: out-of-order op_times, some deletes, keyed partitioning."""
    events = []
    for i in range(n_events):
        key = rng.randrange(n_keys)
        op = rng.choices(("INSERT", "UPDATE", "DELETE"), weights=(3, 6, 1))[0]
        op_time = base_us + rng.randrange(1_000_000) * 1_000
        events.append(Event(key, op, op_time, f"GT-{i}", key % partitions))
    return events


def produce(bootstrap: str, topic: str, events: Iterable[Event], sink: Produced | None = None
            ) -> Produced:
    out = sink or Produced()
    encoder = AuditEncoder(audit_schema())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    def delivered(event: Event) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            out.events.append((event, msg.partition(), msg.offset()))

        return on_delivery

    for event in events:
        while True:
            try:
                producer.produce(
                    topic, key=message_key(event.kyc_profile_id), value=encoder.encode(
                        event.record()), partition=event.partition,
                    on_delivery=delivered(event),
                )
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(60) == 0
    return out


def produce_raw(bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes, int]]
                ) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value, partition in items:
        producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(60) == 0


def oracle(produced: Produced) -> dict[int, tuple[str, int]]:
    """Live profiles after every event applied once in order: key -> (goldtier_id, op_time)."""
    latest: dict[int, tuple[int, int, int, Event]] = {}
    for event, partition, offset in produced.events:
        version = (event.op_time, partition, offset, event)
        known = latest.get(event.kyc_profile_id)
        if known is None or version[:3] > known[:3]:
            latest[event.kyc_profile_id] = version
    return {
        k: (v[3].goldtier_id, v[3].op_time) for k, v in latest.items() if v[3].op_type != "DELETE"
    }


def read_current(db_path: Path) -> dict[int, tuple[str, int]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT kyc_profile_id, goldtier_id, epoch_us(op_time) FROM kyc_profile_current"
        ).fetchall()
    finally:
        con.close()
    return {int(k): (str(g), int(t)) for k, g, t in rows}


HistoryRow = tuple[tuple[int, int, int], str, bool, int, int | None, bool]
"""One history row: version, goldtier_id, is_deleted, valid_from, valid_to, is_current."""


def read_history(db_path: Path) -> dict[int, list[HistoryRow]]:
    """The history table: per key its rows, by version (times in microseconds)."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT kyc_profile_id, epoch_us(op_time), src_partition, src_offset, goldtier_id, "
            "is_deleted, epoch_us(valid_from), epoch_us(valid_to), is_current "
            "FROM kyc_profile_history ORDER BY kyc_profile_id, op_time, src_partition, src_offset"
        ).fetchall()
    finally:
        con.close()
    out: dict[int, list[HistoryRow]] = {}
    for key, t, p, o, goldtier, deleted, valid_from, valid_to, current in rows:
        out.setdefault(int(key), []).append(
            ((int(t), int(p), int(o)), str(goldtier), bool(deleted), int(valid_from),
             None if valid_to is None else int(valid_to), bool(current)))
    return out


def history_oracle(produced: Produced) -> dict[int, list[HistoryRow]]:
    """The history table after every event applied once (``tests.oracles.history``)."""
    built = build_history(
        (e.kyc_profile_id, e.op_time, p, o, e.op_type, e.goldtier_id)
        for e, p, o in produced.events
    )
    return {
        key: [((i.op_time, i.partition, i.offset), i.payload, i.op_type == "DELETE", i.op_time,
               i.valid_to, i.valid_to is None) for i in intervals]
        for key, intervals in built.items()
    }


def ledger(db_path: Path) -> list[dict[str, Any]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        cur = con.execute("SELECT * FROM kyc_sync_ledger ORDER BY committed_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


COORDINATOR_STARTING = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE})
"""Answers of a group coordinator that is still starting (a broker just started)."""


def _coordinator_starting(err: BaseException) -> bool:
    return isinstance(err, KafkaException) and err.args[0].code() in COORDINATOR_STARTING


@retry(retry=retry_if_exception(_coordinator_starting), stop=stop_after_delay(30),
       wait=wait_fixed(0.5), reraise=True)
def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (negative: none), asked again while the
    group's coordinator is starting."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def cli_env(bootstrap: str, topic: str, db_path: Path, group: str, **extra: str
            ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
    env.update(
        KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        KYC_SYNC_KAFKA__TOPIC=topic,
        KYC_SYNC_KAFKA__GROUP_ID=group,
        KYC_SYNC_DUCKDB__PATH=str(db_path),
        KYC_SYNC_WINDOW__SECONDS="1",
        KYC_SYNC_METRICS__PORT="0",
    )
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "consumer.cli", *args]


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def start_cli(env: Mapping[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(cli(*args), env=dict(env), stdout=handle, stderr=subprocess.STDOUT)
