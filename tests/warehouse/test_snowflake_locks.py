"""Locks and dead sessions on the Snowflake test double, through the real connector: it behaves
as Snowflake does where recovering from a dead instance depends on it (lock waits bounded by
LOCK_TIMEOUT, error 000625, a closed session rolled back, the transaction of a killed client
aborted once idle and blocking, a write conflict answered as a lock error). A kyc-sync instance
killed mid-transaction is in ``test_snowflake_e2e``."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import snowflake.connector
from snowflake.connector import SnowflakeConnection
from snowflake.connector import errors as sf

from tests.warehouse.conftest import IDLE_ABORT_S
from tests.warehouse.fakesnow_process import FAKESNOW_HOST, start_fakesnow, stop_fakesnow
from tests.warehouse.killed_writer import HOLDING
from warehouse.errors import WarehouseLockWait
from warehouse.snowflake_errors import is_transient, translate

TABLE = "PUBLIC.LOCKED"


@contextmanager
def session(
    server: tuple[str, int], database: str, **parameters: object
) -> Iterator[SnowflakeConnection]:
    host, port = server
    con = snowflake.connector.connect(
        account="fakesnow", user="fake", password="snow", host=host, port=port, protocol="http",
        database=database, schema="PUBLIC", network_timeout=30, paramstyle="qmark",
        session_parameters=parameters,
    )
    con.autocommit(False)
    try:
        yield con
    finally:
        con.close()


def seeded(server: tuple[str, int], database: str) -> tuple[str, int]:
    """``server`` with the table of these tests in ``database``, one row in it."""
    with session(server, database) as con:
        con.cursor().execute(f"CREATE TABLE {TABLE} (id INT, v VARCHAR)")
        con.cursor().execute(f"INSERT INTO {TABLE} VALUES (0, 'seed')")
        con.commit()
    return server


@pytest.fixture
def server(fakesnow_server: tuple[str, int], snowflake_database: str) -> tuple[str, int]:
    return seeded(fakesnow_server, snowflake_database)


@pytest.fixture(scope="module")
def patient_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A double that aborts an idle blocking transaction only after 5 minutes, as Snowflake:
    within a test, only its owner's ROLLBACK or the end of its session frees a lock."""
    proc, port = start_fakesnow(tmp_path_factory.mktemp("patient"), idle_abort_s=300.0)
    try:
        yield FAKESNOW_HOST, port
    finally:
        stop_fakesnow(proc)


@pytest.fixture
def patient_server(patient_double: tuple[str, int], snowflake_database: str) -> tuple[str, int]:
    return seeded(patient_double, snowflake_database)


def rows(server: tuple[str, int], database: str) -> dict[int, str]:
    with session(server, database) as con:
        cur = con.cursor()
        cur.execute(f"SELECT id, v FROM {TABLE}")
        return {int(k): str(v) for k, v in cur.fetchall()}


def insert(con: SnowflakeConnection, key: int, value: str = "x") -> None:
    con.cursor().execute(f"INSERT INTO {TABLE} VALUES (?, ?)", [key, value])


def test_a_write_waits_for_the_lock_then_fails_as_a_lock_wait(
    server: tuple[str, int], snowflake_database: str
) -> None:
    with session(server, snowflake_database) as holder, \
            session(server, snowflake_database, LOCK_TIMEOUT=1) as waiter:
        insert(holder, 1)
        started = time.monotonic()
        with pytest.raises(sf.ProgrammingError) as raised:
            insert(waiter, 2)
        waited = time.monotonic() - started
        waiter.rollback()
        holder.commit()
        insert(waiter, 2)  # the lock is free now
        waiter.commit()

    assert 1.0 <= waited < IDLE_ABORT_S, waited
    assert raised.value.errno == 625
    assert isinstance(translate(raised.value), WarehouseLockWait)
    assert rows(server, snowflake_database) == {0: "seed", 1: "x", 2: "x"}


def test_closing_a_session_rolls_its_transaction_back(
    patient_server: tuple[str, int], snowflake_database: str
) -> None:
    """Nothing but the close frees the lock here (no idle abort for 5 minutes): a writer that
    got it within its LOCK_TIMEOUT proves the close rolled the transaction back, however slow
    the machine."""
    server = patient_server
    with session(server, snowflake_database) as holder:
        insert(holder, 1)
    with session(server, snowflake_database, LOCK_TIMEOUT=10) as writer:
        insert(writer, 2)  # 000625 after 10 s if the closed session still held the lock
        writer.commit()

    assert rows(server, snowflake_database) == {0: "seed", 2: "x"}


def test_a_killed_clients_transaction_is_aborted_once_idle_and_blocking(
    server: tuple[str, int], snowflake_database: str
) -> None:
    host, port = server
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, host, str(port), snowflake_database],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == HOLDING
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        with session(server, snowflake_database, LOCK_TIMEOUT=30) as writer:
            insert(writer, 2)
            writer.commit()
        waited = time.monotonic() - killed
    finally:
        holder.kill()
        holder.wait()

    assert waited < IDLE_ABORT_S + 2.0, waited
    assert rows(server, snowflake_database) == {0: "seed", 2: "x"}


HOLD_SCRIPT = f"""
import sys, time
import snowflake.connector
host, port, database = sys.argv[1:]
con = snowflake.connector.connect(
    account="fakesnow", user="fake", password="snow", host=host, port=int(port),
    protocol="http", database=database, schema="PUBLIC")
con.autocommit(False)
con.cursor().execute("INSERT INTO {TABLE} VALUES (1, 'dead')")
print({HOLDING!r}, flush=True)
time.sleep(3600)
"""


def test_an_aborted_idle_transaction_cannot_commit(
    server: tuple[str, int], snowflake_database: str
) -> None:
    with session(server, snowflake_database) as idle, \
            session(server, snowflake_database, LOCK_TIMEOUT=30) as writer:
        insert(idle, 1, "idle")
        time.sleep(IDLE_ABORT_S + 0.2)
        insert(writer, 2)  # aborts the idle holder at once
        writer.commit()
        with pytest.raises(sf.Error) as raised:
            idle.commit()
        idle.rollback()
        insert(idle, 3)  # the session goes on after its ROLLBACK
        idle.commit()

    assert is_transient(raised.value), raised.value
    assert rows(server, snowflake_database) == {0: "seed", 2: "x", 3: "x"}


@pytest.fixture(scope="module")
def unlocked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A double that takes no table locks: concurrent writes meet DuckDB's conflicts."""
    proc, port = start_fakesnow(tmp_path_factory.mktemp("unlocked"), table_locks=False)
    try:
        yield FAKESNOW_HOST, port
    finally:
        stop_fakesnow(proc)


def test_a_write_conflict_is_a_lock_error_not_http_500(
    unlocked_server: tuple[str, int], snowflake_database: str
) -> None:
    server = unlocked_server
    with session(server, snowflake_database) as con:
        con.cursor().execute(f"CREATE TABLE {TABLE} (id INT, v VARCHAR)")
        con.cursor().execute(f"INSERT INTO {TABLE} VALUES (0, 'seed')")
        con.commit()
    with session(server, snowflake_database) as first, \
            session(server, snowflake_database) as second:
        first.cursor().execute(f"UPDATE {TABLE} SET v = 'first' WHERE id = 0")
        started = time.monotonic()
        with pytest.raises(sf.ProgrammingError) as raised:
            second.cursor().execute(f"UPDATE {TABLE} SET v = 'second' WHERE id = 0")
        answered = time.monotonic() - started
        second.rollback()
        first.commit()

    assert answered < 5.0, answered  # not retried as an HTTP 500 until network_timeout (30 s)
    assert raised.value.errno == 625
    assert isinstance(translate(raised.value), WarehouseLockWait)
    assert rows(server, snowflake_database) == {0: "first"}


def test_temporary_stages_belong_to_their_session(
    server: tuple[str, int], snowflake_database: str
) -> None:
    """Two sessions put a file of the same name on their temporary stage of the same name:
    each loads its own (fakesnow alone keeps one stage per name for every session)."""
    loaded = {}
    with session(server, snowflake_database) as one, session(server, snowflake_database) as two:
        for con, value in ((one, "one"), (two, "two")):
            con.cursor().execute('CREATE TEMPORARY STAGE IF NOT EXISTS "ST"')
            con.cursor().execute('CREATE TEMPORARY TABLE "LOADED" (v VARCHAR)')
            con.cursor().execute(
                'PUT file://data.csv @"ST" AUTO_COMPRESS = FALSE OVERWRITE = TRUE',
                file_stream=io.BytesIO(f"{value}\n".encode()),
            )
        for con, value in ((one, "one"), (two, "two")):
            con.cursor().execute('COPY INTO "LOADED" FROM @"ST"/data.csv')
            cur = con.cursor()
            cur.execute('SELECT v FROM "LOADED"')
            loaded[value] = [r[0] for r in cur.fetchall()]

    assert loaded == {"one": ["one"], "two": ["two"]}
