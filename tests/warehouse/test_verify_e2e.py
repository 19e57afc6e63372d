"""``kyc-sync verify`` end to end, on DuckDB and on Snowflake (the real connector over HTTP to
fakesnow's server): clean after a sync; after a row is changed, deleted or added behind
kyc-sync's back, exactly that row is reported; the verdict of a scheduled run as metrics."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import snowflake.connector

from tests.integration.harness import cli_env, history, produce, run_cli
from tools.localkafka import create_topic
from warehouse.tables import STATE_COLUMNS

pytestmark = pytest.mark.integration


@dataclass
class Behind:
    """A warehouse reached around kyc-sync: its CLI settings, a SQL runner, the state table's
    name and how a column is written there."""

    env: dict[str, str]
    run: Callable[[str], list[tuple[Any, ...]]]
    state: str
    upper: bool

    def col(self, name: str) -> str:
        return f'"{name.upper()}"' if self.upper else f'"{name}"'


@pytest.fixture(params=["duckdb", "snowflake"])
def behind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Behind]:
    if request.param == "duckdb":
        db = tmp_path / "kyc.duckdb"

        def on_duckdb(sql: str) -> list[tuple[Any, ...]]:
            con = duckdb.connect(str(db))
            try:
                cursor = con.execute(sql)
                return cursor.fetchall() if cursor.description else []
            finally:
                con.close()

        yield Behind({"KYC_SYNC_DUCKDB__PATH": str(db)}, on_duckdb, '"kyc_profile_state"', False)
        return
    host, port = request.getfixturevalue("fakesnow_server")
    database = request.getfixturevalue("snowflake_database")
    connection: dict[str, Any] = {"account": "fakesnow", "user": "fake", "password": "snow",
                                  "host": host, "port": port, "protocol": "http",
                                  "database": database}
    with snowflake.connector.connect(**connection) as con:
        con.cursor().execute(f'CREATE SCHEMA IF NOT EXISTS "{database}"."KYC"')

    def on_snowflake(sql: str) -> list[tuple[Any, ...]]:
        with snowflake.connector.connect(**connection) as con:
            cursor = con.cursor()
            cursor.execute(sql)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    yield Behind({
        "KYC_SYNC_WAREHOUSE__KIND": "snowflake", "KYC_SYNC_SNOWFLAKE__ACCOUNT": "fakesnow",
        "KYC_SYNC_SNOWFLAKE__USER": "fake", "KYC_SYNC_SNOWFLAKE__PASSWORD": "snow",
        "KYC_SYNC_SNOWFLAKE__DATABASE": database, "KYC_SYNC_SNOWFLAKE__SCHEMA_NAME": "KYC",
        "KYC_SYNC_SNOWFLAKE__HOST": host, "KYC_SYNC_SNOWFLAKE__PORT": str(port),
        "KYC_SYNC_SNOWFLAKE__PROTOCOL": "http",
    }, on_snowflake, f'"{database}"."KYC"."KYC_PROFILE_STATE"', True)


def test_verify_reports_exactly_the_rows_changed_behind_its_back(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, behind: Behind
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produce(kafka_bootstrap, topic_name, history(random.Random(31), 300, 60, 3))
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
                  **behind.env)
    synced = run_cli(env, "run", "--until-caught-up", timeout=300)
    assert synced.returncode == 0, synced.stderr
    textfile = tmp_path / "verify.prom"

    clean = run_cli(env, "verify", "--json", "--textfile", str(textfile), timeout=300)

    assert clean.returncode == 0, clean.stderr
    verdict = json.loads(clean.stdout)
    assert verdict["ok"] is True
    assert verdict["events"] == 300
    assert 'kyc_sync_verify_success{group="' in textfile.read_text()

    key, deleted_flag = behind.col("kyc_profile_id"), behind.col("is_deleted")
    live = sorted(int(k) for (k,) in behind.run(
        f"SELECT {key} FROM {behind.state} WHERE NOT {deleted_flag}"))
    changed, deleted = live[0], live[1]
    others = ", ".join(behind.col(c.name) for c in STATE_COLUMNS[1:])
    behind.run(f"UPDATE {behind.state} SET {behind.col('goldtier_id')} = 'BEHIND-ITS-BACK' "
               f"WHERE {key} = {changed}")
    behind.run(f"DELETE FROM {behind.state} WHERE {key} = {deleted}")
    behind.run(f"INSERT INTO {behind.state} ({key}, {others}) SELECT 999999, {others} "
               f"FROM {behind.state} WHERE {key} = {live[2]}")

    found = run_cli(env, "verify", "--json", "--textfile", str(textfile), timeout=300)

    assert found.returncode == 1, found.stderr
    result = json.loads(found.stdout)
    assert result["differences"] == {"missing": 1, "extra": 1, "stale": 0, "mismatched": 1}
    examples = {k: [e["kyc_profile_id"] for e in v] for k, v in result["examples"].items()}
    assert examples == {"missing": [deleted], "extra": [999999], "stale": [],
                        "mismatched": [changed]}
    assert "goldtier_id=BEHIND-ITS-BACK" in result["examples"]["mismatched"][0]["table"]
    metrics = textfile.read_text()
    assert (f'kyc_sync_verify_differences{{group="g-{topic_name}",kind="missing",'
            f'topic="{topic_name}"}} 1.0') in metrics
    text = run_cli(env, "verify").stdout
    assert text.splitlines()[-1] == "FAIL: 3 profile(s) differ from the stream"
