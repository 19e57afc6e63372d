"""Operations on the real broker, through the real CLI: ``replay`` (offset moves and the full
refresh), ``lag``, ``check``, and the metrics endpoint of ``run`` scraped over HTTP."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from consumer.decode.encoder import AuditEncoder, message_key
from consumer.ops.durations import format_duration
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
    produce_raw,
    read_current,
    run_cli,
    start_cli,
)
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOUR_US = 3_600 * 1_000_000

LIVE_OBJECTS = {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger", "kyc_sync_columns"}
"""The live objects kyc-sync creates (the rebuild's are gone once a refresh ends)."""


def env_for(bootstrap: str, topic: str, db: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment; the metrics endpoint on a free port (tests run side by side),
    undo files of ``replay --execute`` next to the database."""
    return cli_env(bootstrap, topic, db, f"g-{topic}", KYC_SYNC_METRICS__PORT="0",
                   KYC_SYNC_REPLAY__BACKUP_DIR=str(db.parent), **extra)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def produce_timed(
    bootstrap: str, topic: str, items: Sequence[tuple[Event, int]], sink: Produced | None = None
) -> Produced:
    """Produce each event with the given message timestamp (ms since the epoch)."""
    out = sink or Produced()
    encoder = AuditEncoder(audit_schema())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def delivered(event: Event) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            out.events.append((event, msg.partition(), msg.offset()))

        return on_delivery

    for event, ts_ms in items:
        producer.produce(topic, key=message_key(event.kyc_profile_id),
                         value=encoder.encode(event.record()), partition=event.partition,
                         timestamp=ts_ms, on_delivery=delivered(event))
    assert producer.flush(30) == 0
    return out


def offsets_for_times(bootstrap: str, topic: str, partitions: int, ts_ms: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-oft"})
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, ts_ms) for p in range(partitions)], timeout=30)
        high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partitions)}
    finally:
        consumer.close()
    # Kafka answers -1 when every message is older: the log end, as kafka-consumer-groups does
    return {tp.partition: tp.offset if tp.offset >= 0 else high[tp.partition] for tp in found}


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 120.0) -> T:
    """Poll ``probe`` until it answers. The bound only decides how long a broken run takes to
    fail: on a loaded machine (the suite's workers, other jobs) CLI start-ups alone take tens of
    seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_match(log: Path, pattern: str) -> re.Match[str] | None:
    return re.search(pattern, log.read_text(errors="replace")) if log.exists() else None


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


def execute_sql(db: Path, *statements: str) -> None:
    con = duckdb.connect(str(db))
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- replay


def test_replay_to_datetime_lands_on_offsets_for_times(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    env = env_for(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb")
    base_ms = int(time.time() * 1000) - 3_600_000
    events = [(Event(i, "INSERT", BASE_US + i, f"GT-{i}", i % 3), base_ms + i * 1000)
              for i in range(30)]
    produce_timed(kafka_bootstrap, topic_name, events)
    ok(run_cli(env, "run", "--until-caught-up"))
    group = f"g-{topic_name}"
    before = committed(kafka_bootstrap, group, topic_name, 3)
    assert before == {0: 10, 1: 10, 2: 10}
    target_ms = base_ms + 14_500  # between the 15th and the 16th message
    expected = offsets_for_times(kafka_bootstrap, topic_name, 3, target_ms)
    assert expected == {0: 5, 1: 5, 2: 5}

    dry = ok(run_cli(env, "replay", "--to-datetime", iso(target_ms), "--json"))

    plan = json.loads(dry.stdout)
    assert plan["executed"] is False
    assert {p["partition"]: p["new_offset"] for p in plan["partitions"]} == expected
    assert [p["reread"] for p in plan["partitions"]] == [5, 5, 5]
    assert committed(kafka_bootstrap, group, topic_name, 3) == before  # a dry run changes nothing

    text = ok(run_cli(env, "replay", "--to-datetime", iso(target_ms), "--partitions", "0,2",
                      "--execute"))

    assert "offsets moved" in text.stdout
    assert committed(kafka_bootstrap, group, topic_name, 3) == {0: 5, 1: 10, 2: 5}

    ok(run_cli(env, "replay", "--to-datetime", iso(target_ms), "--execute"))
    assert committed(kafka_bootstrap, group, topic_name, 3) == expected


def test_replay_execute_is_refused_while_a_consumer_runs(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produce(kafka_bootstrap, topic_name, history(random.Random(5), 20, 10, 2))
    log = tmp_path / "run.log"
    running = start_cli(env, "run", log=log)
    try:
        wait_for("the first flush", lambda: log_match(log, r"flush batch_id="))
        group = f"g-{topic_name}"
        before = committed(kafka_bootstrap, group, topic_name, 2)

        refused = run_cli(env, "replay", "--to-earliest", "--execute")
        dry = ok(run_cli(env, "replay", "--to-earliest"))

        assert refused.returncode == 1
        assert f"refusing to move offsets: consumer group '{group}' has 1 active member" \
            in refused.stderr
        assert "warning: --execute would be refused now" in dry.stdout
        assert committed(kafka_bootstrap, group, topic_name, 2) == before
        assert not list(tmp_path.glob("*.offsets.*.csv"))  # refused before anything was saved
    finally:
        stop(running, log)


def test_replay_after_newer_events_regresses_nothing(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    old = [Event(k, "INSERT", BASE_US, f"old-{k}", k % 2) for k in range(20)]
    produced = produce(kafka_bootstrap, topic_name, old)
    ok(run_cli(env, "run", "--until-caught-up"))
    newer = [Event(k, "UPDATE", BASE_US + HOUR_US, f"new-{k}", k % 2) for k in range(20)]
    newer += [Event(k, "DELETE", BASE_US + 2 * HOUR_US, "gone", k % 2) for k in range(5)]
    produce(kafka_bootstrap, topic_name, newer, produced)
    ok(run_cli(env, "run", "--until-caught-up"))
    expected = oracle(produced)
    assert read_current(db) == expected
    assert sorted(expected) == list(range(5, 20))

    replay_started = datetime.now(UTC).replace(tzinfo=None)

    ok(run_cli(env, "replay", "--to-earliest", "--execute"))
    ok(run_cli(env, "run", "--until-caught-up"))

    assert read_current(db) == expected  # no row went back to "old-*", 0-4 stay deleted
    replayed = [b for b in ledger(db) if b["committed_at"] >= replay_started]
    assert sum(b["events_in"] for b in replayed) == 45
    assert sum(b["inserted"] + b["updated"] + b["deleted"] for b in replayed) == 0
    assert sum(b["skipped_stale"] for b in replayed) >= 20


def test_full_refresh_rebuilds_the_table_and_swaps_it_in(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(6), 300, 40, 3))
    ok(run_cli(env, "run", "--until-caught-up"))
    group = f"g-{topic_name}"
    end = committed(kafka_bootstrap, group, topic_name, 3)
    # The table drifted from the topic (a manual fix, a bug): the refresh rebuilds it.
    execute_sql(db, "UPDATE kyc_profile_state SET goldtier_id = 'DRIFT'",
                "DELETE FROM kyc_profile_state WHERE kyc_profile_id < 10")
    assert read_current(db) != oracle(produced)

    dry = ok(run_cli(env, "replay", "--full-refresh"))
    assert "dry run: nothing changed" in dry.stdout
    assert "DRIFT" in {g for g, _ in read_current(db).values()}

    done = ok(run_cli(env, "replay", "--full-refresh", "--execute"))

    assert "swapped in" in done.stdout
    assert "the group's offsets were not moved" in done.stdout
    assert read_current(db) == oracle(produced)  # the drift is gone
    assert committed(kafka_bootstrap, group, topic_name, 3) == end
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    assert names == LIVE_OBJECTS
    groups = {b["consumer_group"] for b in ledger(db)}  # the run's batches and the rebuild's
    assert len(groups) == 2
    assert group in groups
    assert re.fullmatch(re.escape(group) + r"\.full-refresh\.[0-9a-f]{8}", max(groups))

    # The group goes on from where the rebuild stopped: only new events are read.
    more = produce(kafka_bootstrap, topic_name, history(random.Random(7), 30, 40, 3), produced)
    ok(run_cli(env, "run", "--until-caught-up"))
    assert read_current(db) == oracle(more)
    assert ledger(db)[-1]["events_in"] == 30


def test_full_refresh_refuses_a_topic_missing_its_start(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produce(kafka_bootstrap, topic_name, [Event(k, "INSERT", BASE_US, f"v-{k}", k % 2)
                                          for k in range(10)])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(topic_name, 1, 2)], operation_timeout=30)
    for future in futures.values():
        future.result(30)

    refused = run_cli(env, "replay", "--full-refresh", "--execute")

    assert refused.returncode == 1
    assert "earliest offset of partition(s) 1 is above 0" in refused.stderr
    assert "--allow-partial" in refused.stderr
    assert not db.exists() or read_current(db) == {}

    ok(run_cli(env, "replay", "--full-refresh", "--execute", "--allow-partial"))
    assert sorted(read_current(db)) == [0, 2, 4, 5, 6, 7, 8, 9]  # 1 and 3 were deleted records


# --------------------------------------------------------------------------- lag


def test_lag_reports_unconsumed_messages_and_their_age(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    now_ms = int(time.time() * 1000)
    consumed = [(Event(k, "INSERT", BASE_US + k, f"v-{k}", k % 2), now_ms - 600_000)
                for k in range(12)]
    produce_timed(kafka_bootstrap, topic_name, consumed)
    ok(run_cli(env, "run", "--until-caught-up"))
    # 7 more, unconsumed: the oldest of partition 0 is 300 s old, of partition 1 30 s (far apart:
    # the CLI runs below take a while on a busy machine, and the ages grow meanwhile)
    unconsumed = [(Event(k, "UPDATE", BASE_US + 100 + k, f"w-{k}", k % 2),
                   now_ms - (300_000 if k % 2 == 0 else 30_000) + k) for k in range(7)]
    produce_timed(kafka_bootstrap, topic_name, unconsumed)

    report = ok(run_cli(env, "lag", "--json"))

    data = json.loads(report.stdout)
    rows = {p["partition"]: p for p in data["partitions"]}
    assert data["total_lag"] == 7
    assert (rows[0]["committed"], rows[0]["log_end"], rows[0]["lag"]) == (6, 10, 4)
    assert (rows[1]["committed"], rows[1]["log_end"], rows[1]["lag"]) == (6, 9, 3)
    elapsed = time.time() - now_ms / 1000
    assert 300 <= rows[0]["lag_seconds"] <= 300 + elapsed + 1
    assert 30 <= rows[1]["lag_seconds"] <= 30 + elapsed + 1
    assert data["last_batch"]["batches"] == 1
    assert data["last_batch"]["newest_op_time"] == iso_us(BASE_US + 11)
    assert data["ok"] is True

    over = run_cli(env, "lag", "--max-lag", "6", "--max-age", "1h")
    assert over.returncode == 1
    assert "FAIL lag 7 messages > --max-lag 6" in over.stdout
    old = run_cli(env, "lag", "--max-lag", "7", "--max-age", "180s", "--json")
    assert old.returncode == 1
    assert json.loads(old.stdout)["problems"] == [
        "partition 0: oldest unconsumed message is "
        f"{rows_age(json.loads(old.stdout), 0)} old > --max-age {format_duration(180)}"]


def iso_us(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).replace(tzinfo=None).isoformat(
        timespec="microseconds") + "Z"


def rows_age(data: dict[str, Any], partition: int) -> str:
    seconds = next(p["lag_seconds"] for p in data["partitions"] if p["partition"] == partition)
    return format_duration(seconds)


# --------------------------------------------------------------------------- check


def test_check_passes_on_fresh_data_and_names_each_failure(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produce(kafka_bootstrap, topic_name, history(random.Random(8), 50, 20, 2))
    ok(run_cli(env, "run", "--until-caught-up"))

    fresh = ok(run_cli(env, "check"))
    assert fresh.stdout.splitlines()[-1] == "all checks passed"

    # A quiet source is fresh: the last batch an hour ago, its op_times from 2023.
    execute_sql(db, "UPDATE kyc_sync_ledger SET committed_at = committed_at - INTERVAL 1 HOUR")
    quiet = ok(run_cli(env, "check"))
    assert "ok   freshness: no event waits to be applied (max 15m00s)" in quiet.stdout

    # A stuck sync is not: events written 20 minutes ago wait, unapplied.
    written_ms = int(time.time() * 1000) - 20 * 60_000
    produce_timed(kafka_bootstrap, topic_name, [
        (Event(k, "UPDATE", BASE_US + HOUR_US, f"late-{k}", k % 2), written_ms)
        for k in range(4)])
    stale = run_cli(env, "check")
    assert stale.returncode == 1
    assert [line.split(":")[0] for line in stale.stdout.splitlines()[:3]] == [
        "FAIL freshness", "ok   unique_key", "ok   not_null"]
    assert re.search(r"FAIL freshness: the oldest unapplied event \(partition \d, 2 event\(s\) "
                     r"behind\) is 2[0-4]m\d\ds old > 15m00s: the sync is not keeping up",
                     stale.stdout), stale.stdout

    execute_sql(
        db,
        "INSERT INTO kyc_profile_state SELECT * FROM kyc_profile_state WHERE NOT is_deleted "
        "ORDER BY kyc_profile_id LIMIT 1",
        "ALTER TABLE kyc_profile_state ALTER COLUMN kyc_profile_id DROP NOT NULL",
        "INSERT INTO kyc_profile_state SELECT * REPLACE (NULL AS kyc_profile_id) "
        "FROM kyc_profile_state WHERE NOT is_deleted LIMIT 1",
    )
    broken = run_cli(env, "check", "--max-age", "2h", "--json")

    assert broken.returncode == 1
    result = json.loads(broken.stdout)
    assert result["ok"] is False
    reasons = {c["name"]: (c["ok"], c["reason"]) for c in result["checks"]}
    assert reasons["freshness"][0] is True  # within --max-age 2h
    assert reasons["unique_key"][0] is False
    assert "1 kyc_profile_id value(s) appear more than once" in reasons["unique_key"][1]
    assert reasons["not_null"][0] is False
    assert re.fullmatch(r"kyc_profile_id is null in 1 of \d+ row\(s\)", reasons["not_null"][1])


# --------------------------------------------------------------------------- metrics


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
    }


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_metrics_endpoint_counts_what_the_run_did(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    log = tmp_path / "run.log"
    running = start_cli(env, "run", log=log)
    try:
        found = wait_for("the metrics address", lambda: log_match(
            log, r"metrics on (http://127\.0\.0\.1:\d+)/metrics"))
        base = found.group(1)
        assert status(f"{base}/healthz") == 200
        wait_for("the assignment", lambda: status(f"{base}/readyz") == 200 or None)

        produced = produce(kafka_bootstrap, topic_name, history(random.Random(9), 120, 30, 3))
        produce_raw(kafka_bootstrap, topic_name, [(None, b"not avro", p) for p in range(3)])

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = scrape(f"{base}/metrics")
            done = (samples.get(("kyc_sync_events_consumed_total", ())) == 123
                    and samples.get(("kyc_sync_buffered_events", ())) == 0
                    and all(samples.get(("kyc_sync_partition_lag_messages",
                                         (("partition", str(p)),))) == 0 for p in range(3)))
            return samples if done else None

        samples = wait_for("every event flushed", settled)
        batches = ledger(db)
    finally:
        stop(running, log)

    def metric(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert metric("kyc_sync_events_decoded_total") == 120
    dead = sum(v for (n, _), v in samples.items() if n == "kyc_sync_events_dead_lettered_total")
    assert dead == 3
    assert metric("kyc_sync_batches_total", outcome="ok") >= len(batches)  # + invalid-only
    assert metric("kyc_sync_batches_total", outcome="failed") == 0
    for outcome in ("inserted", "updated", "deleted", "skipped_stale"):
        assert metric("kyc_sync_rows_total", outcome=outcome) == sum(b[outcome] for b in batches)
    assert metric("kyc_sync_phase_duration_seconds_count", phase="write") == len(batches)
    assert metric("kyc_sync_assigned_partitions") == 3
    for p in range(3):
        assert metric("kyc_sync_partition_lag_seconds", partition=str(p)) == 0
    assert time.time() - 60 < metric("kyc_sync_last_success_timestamp_seconds") <= time.time()
    newest = max(e.op_time for e, _, _ in produced.events) / 1e6
    assert metric("kyc_sync_newest_op_time_timestamp_seconds") == pytest.approx(newest)
    # Caught up: nothing waits, however old the op_times (2023 here) are.
    assert metric("kyc_sync_freshness_seconds") == 0
