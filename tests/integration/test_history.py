"""Profile history on the real broker and a DuckDB file, through the real CLI: the seed scenario
and ``show --as-of``, late events and replays, turning history on for an existing table,
``check`` and ``replay --full-refresh`` rebuilding history."""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest

from tests.integration.harness import (
    BASE_US,
    Event,
    Produced,
    cli_env,
    history,
    history_oracle,
    oracle,
    produce,
    read_current,
    read_history,
    run_cli,
)
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

HISTORY_ON = {"KYC_SYNC_HISTORY__ENABLED": "true"}


def env_for(bootstrap: str, topic: str, db: Path, **extra: str) -> dict[str, str]:
    """History on; the offsets saved by ``replay --execute`` go next to the database."""
    return cli_env(bootstrap, topic, db, f"g-{topic}", KYC_SYNC_REPLAY__BACKUP_DIR=str(db.parent),
                   **{**HISTORY_ON, **extra})


def ok(env: dict[str, str], *args: str) -> str:
    result = run_cli(env, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def listed(table: str) -> list[list[str]]:
    """The rows of ``show``'s text table, cells stripped."""
    lines = table.splitlines()
    return [[cell.strip() for cell in line.split("|")] for line in lines[2:-1]]


def test_seed_scenario_history_and_show_as_of(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    ok(env, "produce-sample", "--partitions", "3", "--seed", "7")
    ok(env, "run", "--until-caught-up")

    rows = read_history(db)
    assert {k: len(v) for k, v in rows.items()} == {1: 3, 2: 2, 3: 1, 4: 2}
    assert [(r[1], r[2], r[5]) for r in rows[4]] == [
        ("GT-0004-v1", False, False), ("GT-0004-v2", True, True)]
    assert [r[1] for r in rows[1]] == ["GT-0001-v1", "GT-0001-v2", "GT-0001-v3"]

    shown = ok(env, "show", "--as-of", "2024-01-15T12:00:00Z")
    assert [(r[0], r[1]) for r in listed(shown)] == [
        ("1", "GT-0001-v2"), ("2", "GT-0002-v1"), ("3", "GT-0003-v1"), ("4", "GT-0004-v1")]
    assert shown.splitlines()[0].split(" | ")[0] == "kyc_profile_id"
    assert "valid_from" in shown.splitlines()[0]
    assert shown.splitlines()[-1] == "(4 rows)"
    # 13:00 is the DELETE of 4: live until just before, gone at the instant.
    before = ok(env, "show", "--as-of", "2024-01-15T12:59:59.999999Z")
    assert [r[0] for r in listed(before)] == ["1", "2", "3", "4"]
    at = ok(env, "show", "--as-of", "2024-01-15T14:00:00+01:00")
    assert [(r[0], r[1]) for r in listed(at)] == [
        ("1", "GT-0001-v2"), ("2", "GT-0002-v2"), ("3", "GT-0003-v1")]
    one = ok(env, "show", "--as-of", "2024-01-15T12:00:00Z", "--id", "1")
    assert [(r[0], r[1]) for r in listed(one)] == [("1", "GT-0001-v2")]
    assert listed(ok(env, "show", "--as-of", "2024-01-15T06:00:00Z")) == []
    assert [r[0] for r in listed(ok(env, "show", "--id", "2"))] == ["2"]

    checked = json.loads(ok(env, "check", "--json"))
    assert {c["name"]: c["ok"] for c in checked["checks"]} == {
        "freshness": True, "unique_key": True, "not_null": True, "history_intervals": True,
        "history_current": True, "history_state": True}


def test_show_as_of_needs_history(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}")
    refused = run_cli(env, "show", "--as-of", "2024-01-15T12:00:00Z")
    assert refused.returncode == 2
    assert "show --as-of reads the history table: set history.enabled" in refused.stderr
    bad = run_cli(env, "show", "--as-of", "yesterday")
    assert bad.returncode == 2
    assert "invalid date-time 'yesterday'" in bad.stderr


def test_late_events_and_replays_converge(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    rng = random.Random(14)
    produced = produce(kafka_bootstrap, topic_name, history(rng, 400, 30, 3))
    ok(env, "run", "--until-caught-up")
    # Late versions (between existing ones), then the whole topic again from the start.
    late = [Event(k, "UPDATE", BASE_US + rng.randrange(1_000_000) * 1_000 + 1, f"LATE-{k}",
                  k % 3) for k in range(30)]
    produce(kafka_bootstrap, topic_name, late, produced)
    ok(env, "run", "--until-caught-up")
    ok(env, "replay", "--to-earliest", "--execute")
    ok(env, "run", "--until-caught-up", "--window-seconds", "0.2")

    assert read_history(db) == history_oracle(produced)
    assert read_current(db) == oracle(produced)
    ok(env, "check")


def test_history_turned_on_later_starts_from_the_state_table(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    off = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}")
    first = produce(kafka_bootstrap, topic_name, history(random.Random(15), 100, 20, 2))
    ok(off, "run", "--until-caught-up")
    on = env_for(kafka_bootstrap, topic_name, db)
    second = produce(kafka_bootstrap, topic_name, history(random.Random(16), 50, 20, 2))
    ok(on, "run", "--until-caught-up")

    # History starts with the version each profile's state row held when history was turned on,
    # then every version read since (late ones included).
    latest: dict[int, tuple[Event, int, int]] = {}
    for event, partition, offset in first.events:
        known = latest.get(event.kyc_profile_id)
        if known is None or (event.op_time, partition, offset) > (known[0].op_time, *known[1:]):
            latest[event.kyc_profile_id] = (event, partition, offset)
    seen = Produced([*latest.values(), *second.events])
    assert read_history(db) == history_oracle(seen)
    ok(on, "check")

    everything = Produced([*first.events, *second.events])
    expected = history_oracle(everything)
    # A full refresh rebuilds every version from the topic.
    ok(on, "replay", "--full-refresh", "--execute")
    assert read_history(db) == expected
    ok(on, "check")


def test_full_refresh_rebuilds_a_damaged_history(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = env_for(kafka_bootstrap, topic_name, db)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(17), 200, 25, 3))
    ok(env, "run", "--until-caught-up")
    con = duckdb.connect(str(db))
    try:
        con.execute("DELETE FROM kyc_profile_history WHERE kyc_profile_id < 5")
        con.execute("UPDATE kyc_profile_history SET valid_to = NULL")
    finally:
        con.close()
    broken = run_cli(env, "check")
    assert broken.returncode == 1
    assert "FAIL history_intervals" in broken.stdout
    assert "FAIL history_current" in broken.stdout

    done = ok(env, "replay", "--full-refresh", "--execute")

    assert "swapped in" in done
    assert read_history(db) == history_oracle(produced)
    ok(env, "check")
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    assert tables == {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger",
                      "kyc_sync_columns", "kyc_profile_history"}  # no rebuild leftovers
