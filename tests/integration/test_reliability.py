"""Bad input, shutdown and rebalances on the real broker, through the real CLI."""

from __future__ import annotations

import hashlib
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer

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
from tests.integration.test_operations import log_match, scrape
from tests.integration.test_operations import wait_for as wait_until
from tools.localkafka import TEST_JVM_OPTS, LocalKafka, create_topic

pytestmark = pytest.mark.integration

METRICS_AT = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"


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


def consumed(log: Path) -> float:
    """``kyc_sync_events_consumed_total`` of the running instance that writes ``log``."""
    port = wait_until("its metrics port", partial(log_match, log, METRICS_AT))[1]
    return sum(v for (name, _), v in scrape(f"http://127.0.0.1:{port}/metrics").items()
               if name == "kyc_sync_events_consumed_total")


def wait_consumed(logs: list[Path], count: int, timeout_s: float = 60) -> None:
    """Until the instances writing ``logs`` have read ``count`` messages between them."""
    wait_until(f"{count} messages consumed",
               lambda: sum(consumed(log) for log in logs) >= count or None, timeout_s)


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
    wait_consumed([log], 300)  # consumed into the open 10-minute window, nothing written yet
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
    wait_consumed(logs[:1], 400)  # buffered in the open window

    second = start_cli(env, "run", log=logs[1])  # takes partitions away from the first
    wait_for(logs[0], "revoked: flushing what is buffered")
    wait_for(logs[1], "assigned partitions")
    produce(kafka_bootstrap, topic_name, history(rng, 400, 60, 4), produced)
    wait_consumed(logs, 800)  # the second 400 read by the two instances between them
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
    wait_consumed(logs[:1], 400)  # buffered in the open window

    second = start_cli(env, "run", log=logs[1])
    wait_for(logs[0], "reason=revoke")
    wait_for(logs[1], "assigned partitions")
    time.sleep(1)  # the first lives on after its retried flush
    assert first.poll() is None, logs[0].read_text()
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
    codes = [first.wait(timeout=60), second.wait(timeout=60)]

    assert codes == [0, 0], [p.read_text() for p in logs]
    assert "injected transient warehouse fault" in logs[0].read_text()
    assert read_current(db) == oracle(produced)


# -- dead letters always fit ------------------------------------------------------------------


def big_garbage(size: int) -> bytes:
    return bytes((i * 7919) % 251 for i in range(size))


def produce_big(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1_048_576})
    producer.produce(topic, key=message_key(7), value=value, partition=0)
    assert producer.flush(60) == 0


def test_a_garbage_value_near_the_broker_limit_is_dead_lettered_whole(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """1,010,000 bytes: above librdkafka's default message.max.bytes (1,000,000), below the
    topic's max.message.bytes (1,048,588). The dead-letter producer is sized from the topic."""
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    value = big_garbage(1_010_000)
    produce_big(kafka_bootstrap, topic_name, value)
    produced = produce(kafka_bootstrap, topic_name, [Event(8, "INSERT", 1_700_000_000_000_000,
                                                           "GT-8", 0)])

    done = run_cli(cli_env(kafka_bootstrap, topic_name, db, group), "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    [dead] = read_all(kafka_bootstrap, f"{topic_name}.dlq", 1)
    assert dead.value() == value
    assert header_map(dead)["kyc_sync.error_class"] == "decode"
    assert "kyc_sync.truncated" not in header_map(dead)
    assert read_current(db) == oracle(produced)
    assert committed(kafka_bootstrap, group, topic_name, 1) == {0: 2}


def test_a_copy_larger_than_the_dead_letter_topic_takes_is_sent_truncated(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    dlq = f"{topic_name}.dead"
    create_topic(kafka_bootstrap, dlq, partitions=1, config={"max.message.bytes": "200000"})
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    value = big_garbage(1_010_000)
    produce_big(kafka_bootstrap, topic_name, value)
    env = cli_env(kafka_bootstrap, topic_name, db, group, KYC_SYNC_KAFKA__DLQ_TOPIC=dlq,
                  KYC_SYNC_KAFKA__CREATE_DLQ_TOPIC="false")

    done = run_cli(env, "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    [dead] = read_all(kafka_bootstrap, dlq, 1)
    headers = header_map(dead)
    copy = dead.value() or b""
    assert headers["kyc_sync.truncated"] == "true"
    assert headers["kyc_sync.original_value_size"] == "1010000"
    assert headers["kyc_sync.original_value_sha256"] == hashlib.sha256(value).hexdigest()
    assert headers["kyc_sync.source_offset"] == "0"
    assert 150_000 < len(copy) < 200_000
    assert value.startswith(copy)
    assert committed(kafka_bootstrap, group, topic_name, 1) == {0: 1}


# -- a message set the client cannot deliver stops the run before it ---------------------------


@contextmanager
def broker_with_files(local_kafka: LocalKafka | None, tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker whose log files the test can reach: the session's when it is local, else a
    private one."""
    if local_kafka is not None:
        yield local_kafka
        return
    with LocalKafka(work_dir=tmp_path / "kafka", jvm_opts=TEST_JVM_OPTS) as private:
        yield private


def corrupt_batch(data_dir: Path, topic: str, base_offset: int) -> None:
    """Flip one byte inside the records of the batch starting at ``base_offset`` of partition 0,
    in the broker's segment file (as a failing disk would): the broker serves it as it is."""
    segment = next(data_dir.rglob(f"{topic}-0/00000000000000000000.log"))
    data = segment.read_bytes()
    position = 0
    while position < len(data):
        base, length = struct.unpack(">qi", data[position:position + 12])
        if base == base_offset:
            target = position + 12 + length - 4  # in the last record's bytes
            with segment.open("r+b") as handle:
                handle.seek(target)
                handle.write(bytes([data[target] ^ 0xFF]))
            return
        position += 12 + length
    raise AssertionError(f"no batch at offset {base_offset} in {segment}")


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_corrupt_message_set_stops_the_run_naming_it(
    local_kafka: LocalKafka | None, tmp_path: Path, topic_name: str, compression: str
) -> None:
    """gzip: librdkafka cannot decompress the set; none: its CRC does not match (kyc-sync has
    the client check CRCs). Either way the run stops naming partition and offset, and nothing
    from that offset on is committed, now or on a restart."""
    with broker_with_files(local_kafka, tmp_path) as kafka:
        bootstrap = kafka.bootstrap
        create_topic(bootstrap, topic_name, partitions=1)
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": compression,
                             "linger.ms": 0})
        encoder = AuditEncoder(audit_schema())
        for i in range(10):  # one batch per event
            event = Event(i, "INSERT", 1_700_000_000_000_000 + i, f"GT-{i}", 0)
            producer.produce(topic_name, key=message_key(i), value=encoder.encode(event.record()),
                             partition=0)
            assert producer.flush(30) == 0
        corrupt_batch(kafka.data_dir, topic_name, 5)
        db = tmp_path / "kyc.duckdb"
        group = f"g-{topic_name}"
        env = cli_env(bootstrap, topic_name, db, group)

        runs = [run_cli(env, "run", "--until-caught-up", timeout=60) for _ in range(2)]

        for failed in runs:
            assert failed.returncode == 1, failed.stderr
            assert f"Kafka cannot deliver {topic_name}[0]@5: " in failed.stderr
            assert "Traceback" not in failed.stderr
        assert committed(bootstrap, group, topic_name, 1)[0] <= 5


# -- --until-caught-up: caught up is the group's commits, not this instance's partitions -------

MEMBER = """
import sys, time
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "partition.assignment.strategy": "cooperative-sticky",
                     "session.timeout.ms": 8000, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest"})
consumer.subscribe([topic], on_assign=lambda c, ps: print(
    "assigned", sorted(p.partition for p in ps), flush=True))
while True:  # holds its partitions, never commits
    for msg in consumer.consume(100, 0.5):
        pass
"""


def start_member(bootstrap: str, group: str, topic: str, log: Path) -> subprocess.Popen[bytes]:
    """Another member of the group that holds partitions and commits nothing."""
    handle = log.open("wb")
    return subprocess.Popen([sys.executable, "-c", MEMBER, bootstrap, group, topic],
                            stdout=handle, stderr=subprocess.STDOUT)


def test_until_caught_up_waits_for_partitions_a_killed_member_holds(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """The member is SIGKILLed while it holds half the partitions: the coordinator keeps it
    until its session times out (8 s). kyc-sync reads its own half, waits, gets the other half
    once the member is gone, and only then exits 0 with every partition committed."""
    create_topic(kafka_bootstrap, topic_name, partitions=6)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(11), 3000, 500, 6))
    member_log, run_log = tmp_path / "member.log", tmp_path / "run.log"
    member = start_member(kafka_bootstrap, group, topic_name, member_log)
    try:
        wait_for(member_log, "assigned [0, 1, 2, 3, 4, 5]")
        run = start_cli(cli_env(kafka_bootstrap, topic_name, db, group),
                        "run", "--until-caught-up", log=run_log)
        wait_for(run_log, "waiting for the group to commit partition(s)")
    finally:
        member.kill()
        member.wait(timeout=30)

    assert run.wait(timeout=120) == 0, run_log.read_text()
    assert read_current(db) == oracle(produced)
    ends = committed(kafka_bootstrap, group, topic_name, 6)
    assert sum(ends.values()) == 3000
    assert "caught up: the group has committed every partition" in run_log.read_text()


def test_until_caught_up_names_partitions_nobody_commits(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=4)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    produce(kafka_bootstrap, topic_name, history(random.Random(12), 400, 80, 4))
    member_log = tmp_path / "member.log"
    member = start_member(kafka_bootstrap, group, topic_name, member_log)
    try:
        wait_for(member_log, "assigned [0, 1, 2, 3]")
        stopped = run_cli(cli_env(kafka_bootstrap, topic_name, db, group,
                                  KYC_SYNC_RUN__CAUGHT_UP_WAIT_S="5"),
                          "run", "--until-caught-up")
        held = member_log.read_text()
    finally:
        member.kill()
        member.wait(timeout=30)

    assert stopped.returncode == 1, stopped.stderr
    line = next(x for x in stopped.stderr.splitlines() if "not caught up" in x)
    assert "stopped: not caught up: the group committed nothing for" in line
    assert "committed none, end" in line
    mine = {p for p, offset in committed(kafka_bootstrap, group, topic_name, 4).items()
            if offset >= 0}
    assert mine, held
    assert len(mine) < 4, held
    for partition in set(range(4)) - mine:
        assert f"{partition} (committed none, end " in line
