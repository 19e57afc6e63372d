"""End to end on the Snowflake writer: real broker -> ``kyc-sync run --until-caught-up`` -> the
real Snowflake connector over HTTP -> the Snowflake test double (fakesnow's server with
Snowflake's locks and SWAP WITH) -> the expected rows; also after an instance was killed
mid-transaction, and through a full refresh beside a running instance and a producer."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import snowflake.connector

from tests.integration.harness import (
    Produced,
    cli_env,
    history,
    oracle,
    produce,
    run_cli,
    start_cli,
)
from tests.integration.test_online_ops import Writer, wait_caught_up
from tests.integration.test_operations import log_match, ok, stop, wait_for
from tests.warehouse.fakesnow_process import FAKESNOW_HOST, start_fakesnow, stop_fakesnow
from tests.warehouse.killed_writer import HOLDING
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

SLOW_ABORT_S = 25.0
"""The double's idle time before it aborts a blocking transaction, in the test of a killed
instance: longer than the next instance's start-up, so that its MERGE does wait on the lock."""


@pytest.fixture(scope="module")
def slow_abort_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    proc, port = start_fakesnow(tmp_path_factory.mktemp("slow-abort"), SLOW_ABORT_S)
    try:
        yield FAKESNOW_HOST, port
    finally:
        stop_fakesnow(proc)


def connection(server: tuple[str, int], database: str) -> dict[str, object]:
    host, port = server
    return {"account": "fakesnow", "user": "fake", "password": "snow", "host": host,
            "port": port, "protocol": "http", "database": database}


def snowflake_env(
    kafka_bootstrap: str, topic: str, tmp_path: Path, server: tuple[str, int], database: str,
    **extra: str,
) -> dict[str, str]:
    host, port = server
    with snowflake.connector.connect(**connection(server, database)) as con:
        con.cursor().execute(f'CREATE SCHEMA IF NOT EXISTS "{database}"."KYC"')
    return cli_env(
        kafka_bootstrap, topic, tmp_path / "unused.duckdb", f"g-{topic}",
        KYC_SYNC_WAREHOUSE__KIND="snowflake",
        KYC_SYNC_SNOWFLAKE__ACCOUNT="fakesnow",
        KYC_SYNC_SNOWFLAKE__USER="fake",
        KYC_SYNC_SNOWFLAKE__PASSWORD="snow",
        KYC_SYNC_SNOWFLAKE__DATABASE=database,
        KYC_SYNC_SNOWFLAKE__SCHEMA_NAME="KYC",
        KYC_SYNC_SNOWFLAKE__HOST=host,
        KYC_SYNC_SNOWFLAKE__PORT=str(port),
        KYC_SYNC_SNOWFLAKE__PROTOCOL="http",
        **extra,
    )


def current(server: tuple[str, int], database: str) -> dict[int, tuple[str, int]]:
    with snowflake.connector.connect(**connection(server, database)) as con:
        cursor = con.cursor()
        cursor.execute(
            'SELECT "KYC_PROFILE_ID", "GOLDTIER_ID", '
            'DATE_PART(EPOCH_MICROSECOND, "OP_TIME") FROM "KYC"."KYC_PROFILE_CURRENT"'
        )
        return {int(k): (str(g), int(t)) for k, g, t in cursor.fetchall()}


def test_run_keeps_a_snowflake_table(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path,
    fakesnow_server: tuple[str, int], snowflake_database: str,
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(11), 300, 40, 3))
    env = snowflake_env(kafka_bootstrap, topic_name, tmp_path, fakesnow_server, snowflake_database)

    done = run_cli(env, "run", "--until-caught-up", timeout=300)

    assert done.returncode == 0, done.stderr
    assert current(fakesnow_server, snowflake_database) == oracle(produced)
    assert not (tmp_path / "unused.duckdb").exists()


def test_run_after_an_instance_killed_mid_transaction(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path,
    slow_abort_server: tuple[str, int], snowflake_database: str,
) -> None:
    """The dead instance's transaction holds the state table's lock until the warehouse aborts
    it; the next instance retries its MERGE as a lock wait, past ``retry_max_s`` (1 s here) and
    within ``lock_wait_max_s``, and exits 0: no crash loop, and nothing of the dead transaction
    in the table (it wrote its keys with op_times in 2100, which the guard would keep)."""
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produced: Produced = produce(
        kafka_bootstrap, topic_name, history(random.Random(12), 200, 30, 3))
    env = snowflake_env(
        kafka_bootstrap, topic_name, tmp_path, slow_abort_server, snowflake_database,
        KYC_SYNC_WAREHOUSE__RETRY_MAX_S="1",
        KYC_SYNC_WAREHOUSE__LOCK_WAIT_MAX_S="60",
        KYC_SYNC_SNOWFLAKE__LOCK_TIMEOUT_S="2",
    )
    keys = sorted({event.kyc_profile_id for event, _, _ in produced.events})[:5]
    host, port = slow_abort_server
    dead = subprocess.Popen(
        [sys.executable, "-m", "tests.warehouse.killed_writer", host, str(port),
         snowflake_database, *map(str, keys)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert dead.stdout is not None
        assert dead.stdout.readline().split()[0] == HOLDING
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        started = time.monotonic()
        done = run_cli(env, "run", "--until-caught-up", timeout=120)
        took = time.monotonic() - started
    finally:
        dead.kill()
        dead.wait()

    assert done.returncode == 0, done.stderr
    assert "warehouse apply failed" in done.stderr, done.stderr
    # It waited on the lock, as a lock wait, more than once: for longer than retry_max_s.
    assert done.stderr.count("625 (57014)") >= 2, done.stderr
    assert took < 60, took
    assert current(slow_abort_server, snowflake_database) == oracle(produced)


class Sampler:
    """Reads the live profiles of the view every ``every_s`` in a thread, through the connector."""

    def __init__(self, server: tuple[str, int], database: str, every_s: float = 0.1) -> None:
        self.server, self.database, self.every_s = server, database, every_s
        self.samples: list[set[int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with snowflake.connector.connect(**connection(self.server, self.database)) as con:
            cursor = con.cursor()
            while not self.stopped.is_set():
                cursor.execute('SELECT "KYC_PROFILE_ID" FROM "KYC"."KYC_PROFILE_CURRENT"')
                self.samples.append({int(k) for (k,) in cursor.fetchall()})
                self.stopped.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def test_full_refresh_beside_a_running_instance_and_a_producer(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path,
    fakesnow_server: tuple[str, int], snowflake_database: str,
) -> None:
    """The rebuild is swapped in with ``ALTER TABLE ... SWAP WITH`` while an instance keeps
    applying a producer's events: the view never misses a profile, the live group's writes
    during the refresh are kept, and the table equals the stream after it."""
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produced = produce(kafka_bootstrap, topic_name, history(random.Random(13), 300, 60, 3))
    env = snowflake_env(kafka_bootstrap, topic_name, tmp_path, fakesnow_server, snowflake_database,
                        KYC_SYNC_REPLAY__BACKUP_DIR=str(tmp_path))
    log = tmp_path / "live.log"
    live = start_cli(env, "run", log=log)
    try:
        wait_for("an assignment", partial(log_match, log, r"assigned partitions \[\d"), 60)
        wait_caught_up(kafka_bootstrap, topic_name, f"g-{topic_name}", 3)
        stable = sorted(current(fakesnow_server, snowflake_database))
        with Sampler(fakesnow_server, snowflake_database) as sampler, Writer(
                kafka_bootstrap, topic_name, stable, produced) as writer:
            wait_for("the writer", lambda: writer.count > 50 or None)
            started = datetime.now(UTC).replace(tzinfo=None)
            done = ok(run_cli(env, "replay", "--full-refresh", "--execute", timeout=300))
            ended = datetime.now(UTC).replace(tzinfo=None)
            time.sleep(1)  # a few writes after the swap too
        wait_caught_up(kafka_bootstrap, topic_name, f"g-{topic_name}", 3)
    finally:
        stop(live, log)

    assert "swapped in" in done.stdout
    with snowflake.connector.connect(**connection(fakesnow_server, snowflake_database)) as con:
        cursor = con.cursor()
        cursor.execute('SELECT "COMMITTED_AT" FROM "KYC"."KYC_SYNC_LEDGER" '
                       'WHERE "CONSUMER_GROUP" = %s', (f"g-{topic_name}",))
        committed = [at for (at,) in cursor.fetchall()]
        cursor.execute("SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES "
                       "WHERE TABLE_SCHEMA = 'KYC' AND TABLE_TYPE = 'BASE TABLE'")
        tables = {name for (name,) in cursor.fetchall()}
    assert any(started <= at <= ended for at in committed)  # the live group kept applying
    assert len(sampler.samples) > 10
    missing = [sorted(set(stable) - s)[:5] for s in sampler.samples if not set(stable) <= s]
    assert missing == []  # never empty, never without a profile live before and after
    assert current(fakesnow_server, snowflake_database) == oracle(produced)
    assert tables == {"KYC_PROFILE_STATE", "KYC_SYNC_LEDGER", "KYC_SYNC_COLUMNS"}
