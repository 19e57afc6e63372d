"""End to end on the Snowflake writer: real broker -> ``kyc-sync run --until-caught-up`` -> the
real Snowflake connector over HTTP -> fakesnow's server -> the expected rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import snowflake.connector

from tests.integration.harness import cli_env, history, oracle, produce, run_cli
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration


def test_run_keeps_a_snowflake_table(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path,
    fakesnow_server: tuple[str, int], snowflake_database: str,
) -> None:
    host, port = fakesnow_server
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(11), 300, 40, 3))
    connection = {"account": "fakesnow", "user": "fake", "password": "snow", "host": host,
                  "port": port, "protocol": "http", "database": snowflake_database}
    with snowflake.connector.connect(**connection) as con:
        con.cursor().execute(f'CREATE SCHEMA IF NOT EXISTS "{snowflake_database}"."KYC"')
    env = cli_env(
        kafka_bootstrap, topic_name, tmp_path / "unused.duckdb", f"g-{topic_name}",
        KYC_SYNC_WAREHOUSE__KIND="snowflake",
        KYC_SYNC_SNOWFLAKE__ACCOUNT="fakesnow",
        KYC_SYNC_SNOWFLAKE__USER="fake",
        KYC_SYNC_SNOWFLAKE__PASSWORD="snow",
        KYC_SYNC_SNOWFLAKE__DATABASE=snowflake_database,
        KYC_SYNC_SNOWFLAKE__SCHEMA_NAME="KYC",
        KYC_SYNC_SNOWFLAKE__HOST=host,
        KYC_SYNC_SNOWFLAKE__PORT=str(port),
        KYC_SYNC_SNOWFLAKE__PROTOCOL="http",
    )

    done = run_cli(env, "run", "--until-caught-up", timeout=300)

    assert done.returncode == 0, done.stderr
    with snowflake.connector.connect(**connection) as con:
        cursor = con.cursor()
        cursor.execute(
            'SELECT "KYC_PROFILE_ID", "GOLDTIER_ID", '
            'DATE_PART(EPOCH_MICROSECOND, "OP_TIME") FROM "KYC"."KYC_PROFILE_CURRENT"'
        )
        rows = cursor.fetchall()
    assert {int(k): (str(g), int(t)) for k, g, t in rows} == oracle(produced)
    assert not (tmp_path / "unused.duckdb").exists()
