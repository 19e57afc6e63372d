"""Bad input, shutdown and rebalances on the real broker, through the real CLI."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message

from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from tests.integration.harness import (
    Event,
    cli_env,
    committed,
    history,
    ledger,
    oracle,
    produce,
    produce_raw,
    read_current,
    run_cli,
    start_cli,
)
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration


def poison(partition: int) -> list[tuple[bytes | None, bytes, int]]:
    valid = AuditEncoder(audit_schema()).encode(
        Event(7, "INSERT", 1_700_000_000_000_000, "GT", partition).record()
    )
    return [
        (message_key(7), b"\x00\x01garbage-not-avro\xff", partition),  # random bytes
        (message_key(7), valid[:-3], partition),  # truncated
        (message_key(7), valid + b"\x00", partition),  # trailing bytes
        (message_key(8), valid, partition),  # key disagrees with kyc_profile_id
        (b"not-a-number", valid, partition),  # key is not an id
        (message_key(7), b"", partition),  # empty value
    ]


def header_map(msg: Message) -> dict[str, str]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in items}


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def test_poison_events_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    first = produce(kafka_bootstrap, topic_name, history(random.Random(5), 100, 20, 2))
    bad = poison(0) + poison(1)
    produce_raw(kafka_bootstrap, topic_name, bad)
    both = produce(kafka_bootstrap, topic_name, history(random.Random(6), 100, 20, 2), first)

    done = run_cli(cli_env(kafka_bootstrap, topic_name, db, group), "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    assert read_current(db) == oracle(both)
    dead = read_all(kafka_bootstrap, f"{topic_name}.dlq", len(bad))
    assert len(dead) == len(bad)
    headers = [header_map(m) for m in dead]
    classes = sorted(h["kyc_sync.error_class"] for h in headers)
    assert classes.count("key_mismatch") == 4
    assert classes.count("decode") == 8
    assert all(h["kyc_sync.source_topic"] == topic_name for h in headers)
    assert {(m.key(), m.value()) for m in dead} == {(k, v) for k, v, _ in bad}
    assert sum(b["invalid_events"] for b in ledger(db)) == len(bad)
    ends = committed(kafka_bootstrap, group, topic_name, 2)
    assert sum(ends.values()) == 200 + len(bad)


def test_on_invalid_fail_stops_without_committing(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    produce(kafka_bootstrap, topic_name, history(random.Random(7), 50, 10, 1))
    produce_raw(kafka_bootstrap, topic_name, poison(0)[:1])

    failed = run_cli(cli_env(kafka_bootstrap, topic_name, db, group),
                     "run", "--until-caught-up", "--on-invalid", "fail")

    assert failed.returncode == 1
    assert "invalid event at" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert all(o < 0 for o in committed(kafka_bootstrap, group, topic_name, 1).values())


def wait_for(path: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text() if path.exists() else ''}")


def test_sigterm_flushes_commits_and_leaves(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    env = cli_env(kafka_bootstrap, topic_name, db, group, KYC_SYNC_WINDOW__SECONDS="600")
    log = tmp_path / "run.log"
    proc = start_cli(env, "run", log=log)
    wait_for(log, "assigned partitions")
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(8), 300, 50, 2))
    time.sleep(3)  # consumed into the open 10-minute window, nothing written yet
    assert not db.exists() or read_current(db) == {}

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)

    assert code == 0, log.read_text()
    assert "reason=shutdown" in log.read_text()
    assert read_current(db) == oracle(produced)
    assert sum(committed(kafka_bootstrap, group, topic_name, 2).values()) == 300


def test_rebalance_flushes_revoked_partitions_and_converges(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=4)
    db = tmp_path / "kyc.duckdb"
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}",
                  KYC_SYNC_WINDOW__SECONDS="600")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    first = start_cli(env, "run", log=logs[0])
    wait_for(logs[0], "assigned partitions")
    rng = random.Random(9)
    produced = produce(kafka_bootstrap, topic_name, history(rng, 400, 60, 4))
    time.sleep(2)

    second = start_cli(env, "run", log=logs[1])  # takes partitions away from the first
    wait_for(logs[0], "revoked: flushing what is buffered")
    wait_for(logs[1], "assigned partitions")
    produce(kafka_bootstrap, topic_name, history(rng, 400, 60, 4), produced)
    time.sleep(3)
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
    codes = [first.wait(timeout=60), second.wait(timeout=60)]

    assert codes == [0, 0], [p.read_text() for p in logs]
    assert "reason=revoke" in logs[0].read_text()
    assert read_current(db) == oracle(produced)


def test_revocation_flush_that_retries_survives(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """A transient warehouse failure during the flush of a revocation is retried inside the
    rebalance callback (no nested consume()), and both instances converge."""
    create_topic(kafka_bootstrap, topic_name, partitions=4)
    db = tmp_path / "kyc.duckdb"
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}",
                  KYC_SYNC_WINDOW__SECONDS="600")
    faulty = dict(env, KYC_SYNC_FAULTS__WAREHOUSE="transient", KYC_SYNC_FAULTS__TIMES="1")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    first = start_cli(faulty, "run", log=logs[0])
    wait_for(logs[0], "assigned partitions")
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(10), 400, 60, 4))
    time.sleep(2)

    second = start_cli(env, "run", log=logs[1])
    wait_for(logs[0], "reason=revoke")
    time.sleep(2)
    assert first.poll() is None, logs[0].read_text()
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
    codes = [first.wait(timeout=60), second.wait(timeout=60)]

    assert codes == [0, 0], [p.read_text() for p in logs]
    assert "injected transient warehouse fault" in logs[0].read_text()
    assert read_current(db) == oracle(produced)
