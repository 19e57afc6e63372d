"""Operations without downtime, on the real broker through the real CLI: the full refresh beside
two running instances and a producer (and killed midway), the refresh reading its planned offsets
whatever ``auto.offset.reset`` says, the lag exporter outliving the consumers, ``lag --members``,
and replays undone from their offsets file."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.decode.encoder import AuditEncoder, message_key
from consumer.ops.offsets import KafkaOffsets
from consumer.ops.rebuild import RefreshError, full_refresh, plan_refresh
from consumer.settings import load_settings
from schemas import audit_schema
from tests.integration.harness import (
    BASE_US,
    Event,
    Produced,
    cli_env,
    committed,
    history,
    ledger,
    oracle,
    produce,
    read_current,
    run_cli,
    start_cli,
)
from tests.integration.test_operations import log_match, ok, scrape, stop, wait_for
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

HOUR_US = 3_600 * 1_000_000

LIVE_OBJECTS = {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger", "kyc_sync_columns"}
"""The live objects kyc-sync creates (the rebuild's are gone once a refresh ends)."""


def env_for(bootstrap: str, topic: str, db: Path, **extra: str) -> dict[str, str]:
    return cli_env(bootstrap, topic, db, f"g-{topic}", KYC_SYNC_METRICS__PORT="0",
                   KYC_SYNC_REPLAY__BACKUP_DIR=str(db.parent), **extra)


def log_end(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-high"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partitions)}
    finally:
        consumer.close()


def state_rows(db: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT * FROM kyc_profile_state ORDER BY kyc_profile_id").fetchall()
    finally:
        con.close()


def table_names(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


class Sampler:
    """Reads the live profiles of ``kyc_profile_current`` every ``every_s`` in a thread (a
    sample is skipped while a writer holds the DuckDB file)."""

    def __init__(self, db: Path, every_s: float = 0.05) -> None:
        self.db = db
        self.every_s = every_s
        self.samples: list[set[int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                con = duckdb.connect(str(self.db), read_only=True)
            except duckdb.Error:
                time.sleep(0.01)
                continue
            try:
                keys = {int(k) for (k,) in con.execute(
                    "SELECT kyc_profile_id FROM kyc_profile_current").fetchall()}
                self.samples.append(keys)
            finally:
                con.close()
            self.stopped.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


class Writer:
    """A producer thread: every 50 ms, 10 events — UPDATEs of ``stable`` keys (they stay live)
    and INSERT/UPDATE/DELETE of keys 1000-1099 — with op_times after every earlier one."""

    def __init__(self, bootstrap: str, topic: str, stable: list[int], sink: Produced) -> None:
        self.bootstrap, self.topic, self.stable, self.sink = bootstrap, topic, stable, sink
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0

    def _run(self) -> None:
        rng = random.Random(99)
        encoder = AuditEncoder(audit_schema())
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        tick = 0
        while not self.stopped.is_set():
            for _ in range(10):
                tick += 1
                op_time = BASE_US + 10 * HOUR_US + tick * 1_000
                if rng.random() < 0.5:
                    key, op = rng.choice(self.stable), "UPDATE"
                else:
                    key = 1000 + rng.randrange(100)
                    op = rng.choices(("INSERT", "UPDATE", "DELETE"), (3, 4, 3))[0]
                event = Event(key, op, op_time, f"W-{tick}", key % 3)

                def delivered(err: object, msg: object, event: Event = event) -> None:
                    assert err is None, err
                    self.sink.events.append((event, msg.partition(), msg.offset()))  # type: ignore[attr-defined]

                producer.produce(self.topic, key=message_key(key), value=encoder.encode(
                    event.record()), partition=event.partition, on_delivery=delivered)
                self.count += 1
            producer.poll(0)
            self.stopped.wait(0.05)
        assert producer.flush(30) == 0

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


def wait_caught_up(bootstrap: str, topic: str, group: str, partitions: int,
                   timeout_s: float = 90) -> None:
    def probe() -> bool | None:
        return committed(bootstrap, group, topic, partitions) == log_end(
            bootstrap, topic, partitions) or None

    wait_for("the group to catch up", probe, timeout_s)


# --------------------------------------------------------------------------- full refresh


def test_full_refresh_beside_two_running_instances_and_a_producer(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(21), 3000, 300, 3))
    ok(run_cli(env, "run", "--until-caught-up"))
    before = read_current(db)
    stable = sorted(before)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    instances = [start_cli(env, "run", log=log) for log in logs]
    try:
        for log in logs:
            wait_for("an assignment", partial(log_match, log, r"assigned partitions \[\d"))
        with Sampler(db) as sampler, Writer(kafka_bootstrap, topic_name, stable,
                                            produced) as writer:
            wait_for("the writer", lambda: writer.count > 50 or None)
            started = datetime.now(UTC).replace(tzinfo=None)
            done = ok(run_cli(env, "replay", "--full-refresh", "--execute", timeout=300))
            ended = datetime.now(UTC).replace(tzinfo=None)
            time.sleep(1)  # a few writes after the swap too
        wait_caught_up(kafka_bootstrap, topic_name, f"g-{topic_name}", 3)
        time.sleep(0.5)
    finally:
        for proc, log in zip(instances, logs, strict=True):
            stop(proc, log)

    assert "swapped in" in done.stdout
    assert writer.count > 50
    during = [b for b in ledger(db) if b["consumer_group"] == f"g-{topic_name}"
              and started <= b["committed_at"] <= ended]
    assert during  # the live group kept applying while the refresh ran
    assert len(sampler.samples) > 10
    missing = [sorted(set(stable) - s)[:5] for s in sampler.samples if not set(stable) <= s]
    assert missing == []  # never empty, never without a profile live before and after
    assert read_current(db) == oracle(produced)
    assert table_names(db) == LIVE_OBJECTS
    clean = ok(run_cli(env, "verify"))
    assert clean.stdout.splitlines()[-1] == "OK: the table equals the stream"


def test_a_killed_full_refresh_leaves_the_live_table_and_the_next_one_completes(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(22), 4000, 400, 2))
    ok(run_cli(env, "run", "--until-caught-up"))
    con = duckdb.connect(str(db))
    con.execute("UPDATE kyc_profile_state SET goldtier_id = 'DRIFT' WHERE kyc_profile_id < 50")
    con.close()
    untouched = state_rows(db)
    log = tmp_path / "refresh.log"
    refresh = start_cli({**env, "KYC_SYNC_WINDOW__MAX_EVENTS": "100"},
                        "replay", "--full-refresh", "--execute", log=log)
    try:
        wait_for("a flush into the rebuild", lambda: log_match(log, r"flush batch_id="), 120)
    finally:
        os.kill(refresh.pid, signal.SIGKILL)
        refresh.wait(30)

    assert "swapped in" not in log.read_text()
    assert "kyc_profile_state__rebuild" in table_names(db)  # killed midway
    assert state_rows(db) == untouched

    ok(run_cli(env, "replay", "--full-refresh", "--execute", timeout=300))

    assert read_current(db) == oracle(produced)
    assert table_names(db) == LIVE_OBJECTS


def test_refresh_reads_its_planned_offsets_whatever_auto_offset_reset_says(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Issue 12 item 1: with ``auto.offset.reset=latest`` the rebuild consumer once started at
    the log end, read nothing and swapped an empty table in."""
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    latest = '{"auto.offset.reset": "latest"}'
    env = env_for(kafka_bootstrap, topic_name, db, KYC_SYNC_KAFKA__CLIENT_OPTIONS=latest)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(23), 60, 20, 3))

    done = ok(run_cli(env, "replay", "--full-refresh", "--execute"))

    ends = log_end(kafka_bootstrap, topic_name, 3)
    assert f"read per partition 0:{ends[0]}/{ends[0]}, 1:{ends[1]}/{ends[1]}, " \
           f"2:{ends[2]}/{ends[2]}" in done.stdout
    assert read_current(db) == oracle(produced)


def test_a_short_read_refuses_the_swap_and_keeps_the_live_table(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Records deleted between the plan and the read: the rebuild, at the planned start, finds
    it gone and ``latest`` sends it to the log end; the check sees the shortfall and refuses."""
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produce(kafka_bootstrap, topic_name, history(random.Random(24), 80, 30, 2))
    ok(run_cli(env, "run", "--until-caught-up"))
    untouched = state_rows(db)
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic": topic_name,
               "group_id": f"g-{topic_name}",
               "client_options": {"auto.offset.reset": "latest"}},
        duckdb={"path": str(db)}, metrics={"enabled": False})
    kafka = KafkaOffsets(settings.kafka)
    try:
        plan = plan_refresh(kafka, settings.kafka.group_id)
    finally:
        kafka.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_records([TopicPartition(topic_name, 0, 10)],
                                       operation_timeout=30).values():
        future.result(30)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(RefreshError) as refused:
            full_refresh(settings, plan, allow_partial=False)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)

    planned = plan.ranges[0]
    assert f"partition 0: planned offsets 0-{planned.next_offset - 1} ({planned.count} events), " \
           "read 0" in str(refused.value)
    assert "the live table and the group's offsets are unchanged" in str(refused.value)
    assert state_rows(db) == untouched
    assert table_names(db) == LIVE_OBJECTS


# --------------------------------------------------------------------------- lag exporter


@pytest.fixture
def exporter_env(kafka_bootstrap: str, topic_name: str, tmp_path: Path
                 ) -> tuple[dict[str, str], Path]:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    return env_for(kafka_bootstrap, topic_name, db, KYC_SYNC_EXPORTER__INTERVAL_S="0.5"), db


def test_the_exporter_reports_lag_while_the_consumers_are_stopped(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path,
    exporter_env: tuple[dict[str, str], Path],
) -> None:
    env, _db = exporter_env
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(25), 60, 20, 3))
    ok(run_cli(env, "run", "--until-caught-up"))
    produce(kafka_bootstrap, topic_name, history(random.Random(26), 30, 20, 3), produced)
    log = tmp_path / "exporter.log"
    exporter = start_cli(env, "lag", "--serve", log=log)
    try:
        port = wait_for("the exporter", lambda: log_match(
            log, r"metrics on http://127\.0\.0\.1:(\d+)/metrics"))[1]
        url = f"http://127.0.0.1:{port}/metrics"

        def total(name: str) -> float:
            return sum(v for (n, _), v in scrape(url).items() if n == name)

        wait_for("the lag", lambda: total("kyc_sync_group_lag_messages") == 30 or None)
        figures = json.loads(run_cli(env, "lag", "--json").stdout)
        samples = scrape(url)
        for p in figures["partitions"]:
            labels = (("group", f"g-{topic_name}"), ("partition", str(p["partition"])),
                      ("topic", topic_name))
            assert samples[("kyc_sync_group_committed_offset", labels)] == p["committed"]
            assert samples[("kyc_sync_group_log_end_offset", labels)] == p["log_end"]
            assert samples[("kyc_sync_group_lag_messages", labels)] == p["lag"]
            assert samples[("kyc_sync_group_lag_seconds", labels)] == pytest.approx(
                p["lag_seconds"], abs=5)
        group = (("group", f"g-{topic_name}"), ("topic", topic_name))
        assert samples[("kyc_sync_group_members", group)] == 0
        assert samples[("kyc_sync_group_state", (*group[:1], ("state", "EMPTY"), group[1]))] == 1
        assert samples[("kyc_sync_group_freshness_seconds", group)] == pytest.approx(
            figures["max_lag_seconds"], abs=5)
        assert samples[("kyc_sync_group_last_batch_timestamp_seconds", group)] > time.time() - 120

        run_log = tmp_path / "run.log"
        running = start_cli(env, "run", log=run_log)
        try:
            wait_for("the consumer back, caught up", lambda: (
                total("kyc_sync_group_lag_messages") == 0
                and total("kyc_sync_group_members") == 1) or None, 60)
            members = json.loads(run_cli(env, "lag", "--members", "--json").stdout)["members"]
            assert [m["partitions"] for m in members] == [[0, 1, 2]]
            assert members[0]["consumer_id"]
            assert members[0]["host"]
            text = run_cli(env, "lag", "--members").stdout
            assert "group state STABLE, 1 member(s)" in text
            assert re.search(r"consumer id\s+host\s+client id\s+partitions", text)
        finally:
            stop(running, run_log)
        produce(kafka_bootstrap, topic_name, history(random.Random(27), 10, 20, 3), produced)
        wait_for("the lag without consumers", lambda: (
            total("kyc_sync_group_lag_messages") == 10
            and total("kyc_sync_group_members") == 0) or None, 60)
    finally:
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=30) == 0, log.read_text()


# --------------------------------------------------------------------------- undo a replay


def test_export_replay_and_restore_from_the_file(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    group = f"g-{topic_name}"
    produce(kafka_bootstrap, topic_name, history(random.Random(28), 90, 30, 3))
    ok(run_cli(env, "run", "--until-caught-up"))
    exported = tmp_path / "before.csv"
    before = committed(kafka_bootstrap, group, topic_name, 3)

    ok(run_cli(env, "replay", "--export", str(exported)))

    assert exported.read_text() == "".join(
        f"{topic_name},{p},{o}\n" for p, o in sorted(before.items()))
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600

    moved = ok(run_cli(env, "replay", "--to-earliest", "--execute"))

    saved = Path(re.search(r"previous offsets saved to (\S+) \(undo", moved.stdout)[1])  # type: ignore[index]
    assert saved.parent == tmp_path
    assert saved.read_text() == exported.read_text()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert committed(kafka_bootstrap, group, topic_name, 3) == {0: 0, 1: 0, 2: 0}

    dry = ok(run_cli(env, "replay", "--from-file", str(exported)))
    assert "dry run: nothing changed" in dry.stdout
    assert committed(kafka_bootstrap, group, topic_name, 3) == {0: 0, 1: 0, 2: 0}

    ok(run_cli(env, "replay", "--from-file", str(exported), "--execute"))

    assert committed(kafka_bootstrap, group, topic_name, 3) == before

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("another-topic,0,1\n")
    refused = run_cli(env, "replay", "--from-file", str(wrong), "--execute")
    assert refused.returncode == 2
    assert "offsets of topic 'another-topic'" in refused.stderr

