"""``ALTER TABLE ... SWAP WITH`` on the Snowflake test double, through the real connector: the two
tables trade contents atomically, a view of the live name reads the table swapped in, both
tables must exist, the session's open transaction is committed first (DDL), the swap waits for
a writer's lock, and a transaction that wrote the old table fails as a lock error, never HTTP
500. The full refresh that relies on it is in ``test_contract`` and ``test_snowflake_e2e``."""

from __future__ import annotations

import threading
import time

import pytest
from snowflake.connector import errors as sf

from tests.warehouse.conftest import IDLE_ABORT_S
from tests.warehouse.test_snowflake_locks import session
from warehouse.errors import WarehouseLockWait
from warehouse.snowflake_errors import translate

LIVE, REBUILD, OTHER = "PUBLIC.LIVE", "PUBLIC.LIVE__REBUILD", "PUBLIC.OTHER"
SWAP = f"ALTER TABLE {LIVE} SWAP WITH {REBUILD}"


@pytest.fixture
def server(fakesnow_server: tuple[str, int], snowflake_database: str) -> tuple[str, int]:
    """``LIVE`` holds 1, ``REBUILD`` 2 and 3 (one more column), ``CURRENT`` is a view of LIVE."""
    with session(fakesnow_server, snowflake_database) as con:
        cur = con.cursor()
        cur.execute(f"CREATE TABLE {LIVE} (id INT)")
        cur.execute(f"CREATE TABLE {REBUILD} (id INT, note VARCHAR)")
        cur.execute(f"CREATE TABLE {OTHER} (id INT)")
        cur.execute(f"CREATE VIEW PUBLIC.CURRENT AS SELECT id FROM {LIVE}")
        cur.execute(f"INSERT INTO {LIVE} VALUES (1)")
        cur.execute(f"INSERT INTO {REBUILD} VALUES (2, 'b'), (3, 'c')")
        con.commit()
    return fakesnow_server


def ids(server: tuple[str, int], database: str, relation: str) -> list[int]:
    with session(server, database) as con:
        cur = con.cursor()
        cur.execute(f"SELECT id FROM {relation} ORDER BY id")
        return [int(k) for (k,) in cur.fetchall()]


def test_the_tables_trade_contents_and_the_view_reads_the_one_swapped_in(
    server: tuple[str, int], snowflake_database: str
) -> None:
    with session(server, snowflake_database) as con:
        cur = con.cursor()
        cur.execute(SWAP)
        answer = cur.fetchall()
        cur.execute(f"SELECT note FROM {LIVE} ORDER BY id")  # the columns moved too
        notes = [n for (n,) in cur.fetchall()]

    assert answer == [("Statement executed successfully.",)]
    assert notes == ["b", "c"]
    assert ids(server, snowflake_database, LIVE) == [2, 3]
    assert ids(server, snowflake_database, REBUILD) == [1]
    assert ids(server, snowflake_database, "PUBLIC.CURRENT") == [2, 3]
    with session(server, snowflake_database) as con:
        con.cursor().execute(SWAP)  # and back
    assert ids(server, snowflake_database, "PUBLIC.CURRENT") == [1]


def test_both_tables_must_exist(server: tuple[str, int], snowflake_database: str) -> None:
    with session(server, snowflake_database) as con:
        cur = con.cursor()
        with pytest.raises(sf.ProgrammingError) as missing:
            cur.execute(f"ALTER TABLE {LIVE} SWAP WITH PUBLIC.NOPE")
        with pytest.raises(sf.ProgrammingError) as missing_first:
            cur.execute(f"ALTER TABLE PUBLIC.NOPE SWAP WITH {LIVE}")
        cur.execute(f"ALTER TABLE IF EXISTS PUBLIC.NOPE SWAP WITH {LIVE}")  # nothing to swap

    assert (missing.value.errno, missing.value.sqlstate) == (2003, "42S02")
    assert "NOPE' does not exist" in str(missing.value)
    assert missing_first.value.errno == 2003
    assert ids(server, snowflake_database, LIVE) == [1]
    assert ids(server, snowflake_database, REBUILD) == [2, 3]


def test_the_swap_commits_the_sessions_open_transaction_first(
    server: tuple[str, int], snowflake_database: str
) -> None:
    with session(server, snowflake_database) as con:
        con.cursor().execute(f"INSERT INTO {LIVE} VALUES (4)")
        con.cursor().execute(SWAP)
        con.rollback()  # nothing left to roll back

    assert ids(server, snowflake_database, REBUILD) == [1, 4]
    assert ids(server, snowflake_database, LIVE) == [2, 3]


def test_the_swap_waits_for_a_writers_lock_then_fails_as_a_lock_wait(
    server: tuple[str, int], snowflake_database: str
) -> None:
    with session(server, snowflake_database) as writer, \
            session(server, snowflake_database, LOCK_TIMEOUT=1) as swapper:
        writer.cursor().execute(f"INSERT INTO {REBUILD} VALUES (5, 'e')")
        started = time.monotonic()
        with pytest.raises(sf.ProgrammingError) as raised:
            swapper.cursor().execute(SWAP)
        waited = time.monotonic() - started
        assert ids(server, snowflake_database, LIVE) == [1]  # not swapped
        swapped = threading.Thread(target=swapper.cursor().execute, args=(SWAP,))
        swapped.start()
        time.sleep(0.5)
        writer.commit()  # the lock is free: the waiting swap runs
        swapped.join(10)

    assert 1.0 <= waited < IDLE_ABORT_S, waited
    assert raised.value.errno == 625
    assert isinstance(translate(raised.value), WarehouseLockWait)
    assert ids(server, snowflake_database, LIVE) == [2, 3, 5]  # with the write it waited for
    assert ids(server, snowflake_database, REBUILD) == [1]


def test_a_transaction_that_wrote_the_swapped_out_table_fails_as_a_lock_error(
    server: tuple[str, int], snowflake_database: str
) -> None:
    """A transaction begun before the swap binds the live name to the table of its start; the
    double cannot rebind it as Snowflake would, so its commit fails as a retryable lock error,
    answered at once, and writes nothing."""
    with session(server, snowflake_database) as writer, \
            session(server, snowflake_database) as swapper:
        writer.cursor().execute(f"INSERT INTO {OTHER} VALUES (7)")  # its transaction begins
        swapper.cursor().execute(SWAP)
        writer.cursor().execute(f"INSERT INTO {LIVE} (id) VALUES (6)")
        started = time.monotonic()
        with pytest.raises(sf.Error) as raised:
            writer.commit()
        answered = time.monotonic() - started
        writer.rollback()
        writer.cursor().execute(f"INSERT INTO {LIVE} (id) VALUES (6)")  # the retry
        writer.commit()

    assert answered < 5.0, answered  # not retried as an HTTP 500 until network_timeout (30 s)
    assert isinstance(translate(raised.value), WarehouseLockWait), raised.value
    assert ids(server, snowflake_database, LIVE) == [2, 3, 6]
    assert ids(server, snowflake_database, REBUILD) == [1]
    assert ids(server, snowflake_database, OTHER) == []  # the failed transaction wrote nothing
