"""The whole pipeline on the real broker and a DuckDB file, through the real CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from consumer.ops.sample import expected_current
from tests.integration.harness import (
    Event,
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
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration


def test_seed_scenario(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}")
    produced = run_cli(env, "produce-sample", "--partitions", "3", "--seed", "7")
    assert produced.returncode == 0, produced.stderr

    done = run_cli(env, "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    table = read_current(tmp_path / "kyc.duckdb")
    expected = {
        k: (e["goldtier_id"], int(e["op_time"].timestamp() * 1_000_000))
        for k, e in expected_current().items()
    }
    assert table == expected
    assert sorted(table) == [1, 2, 3]
    assert committed(kafka_bootstrap, f"g-{topic_name}", topic_name, 3) != {}
    assert sum(r["events_in"] for r in ledger(tmp_path / "kyc.duckdb")) == 8


def test_restart_resumes_from_committed_offsets(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}")
    rng = random.Random(1)
    first = produce(kafka_bootstrap, topic_name, history(rng, 300, 40, 3))
    assert run_cli(env, "run", "--until-caught-up").returncode == 0
    assert read_current(db) == oracle(first)

    # Second run: newer events and stale replays of older ones (op_time in the past).
    stale = [Event(e.kyc_profile_id, "INSERT", e.op_time - 10**9, "STALE", e.partition)
             for e, _, _ in first.events[:50]]
    both = produce(kafka_bootstrap, topic_name, history(rng, 100, 40, 3) + stale, first)
    second = run_cli(env, "run", "--until-caught-up")

    assert second.returncode == 0, second.stderr
    assert read_current(db) == oracle(both)
    assert "STALE" not in {g for g, _ in read_current(db).values()}
    batches = ledger(db)
    assert sum(b["events_in"] for b in batches) == 450  # nothing re-read
    assert sum(b["skipped_stale"] for b in batches) >= 1


def test_failed_flush_commits_nothing_and_next_run_converges(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(2), 200, 30, 3))
    failing = cli_env(kafka_bootstrap, topic_name, db, group,
                      KYC_SYNC_FAULTS__WAREHOUSE="terminal")

    failed = run_cli(failing, "run", "--until-caught-up")

    assert failed.returncode == 1
    assert "injected terminal warehouse fault" in failed.stderr
    assert all(offset < 0 for offset in committed(kafka_bootstrap, group, topic_name, 3).values())
    assert read_current(db) == {}  # the MERGE ran and was rolled back
    assert ledger(db) == []

    again = run_cli(cli_env(kafka_bootstrap, topic_name, db, group), "run", "--until-caught-up")

    assert again.returncode == 0, again.stderr
    assert read_current(db) == oracle(produced)


def test_transient_faults_are_retried(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(3), 100, 20, 2))
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}",
                  KYC_SYNC_FAULTS__WAREHOUSE="transient", KYC_SYNC_FAULTS__TIMES="2")

    done = run_cli(env, "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    assert done.stderr.count("injected transient warehouse fault") == 2
    assert read_current(db) == oracle(produced)


def test_two_instances_in_one_group_converge(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(4), 3000, 200, 3))
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}",
                  KYC_SYNC_WINDOW__MAX_EVENTS="250", KYC_SYNC_KAFKA__CONSUME_BATCH="100")

    procs = [start_cli(env, "run", "--until-caught-up", log=tmp_path / f"run{i}.log")
             for i in range(2)]
    codes = [p.wait(timeout=180) for p in procs]

    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert read_current(db) == oracle(produced)
    assert sum(b["events_in"] for b in ledger(db)) >= 3000
