"""The Snowflake writer: the same guarded MERGE, tombstones and ledger as the DuckDB writer.

One session is kept open between flushes. When it is opened the writer turns autocommit off,
makes the configured schema current (``USE SCHEMA``) and creates its session-scoped temporary
stage. Per flush (``apply``) it issues, in order:

1. ``CREATE OR REPLACE TEMPORARY TABLE "KYC_SYNC_STAGED"`` — DDL, so it runs (and commits) on its
   own, before the transaction;
2. ``PUT file://batch.parquet @"KYC_SYNC_STAGE"`` — the batch as one Parquet file, uploaded from
   memory (no row-by-row statements, no local file);
3. ``COPY INTO "KYC_SYNC_STAGED" FROM (SELECT ... FROM @"KYC_SYNC_STAGE"/batch.parquet)`` — the
   first DML: it opens the transaction; the file is purged from the stage once loaded;
4. ``SELECT`` the classification (``sql.classify_sql``): what the MERGE is about to do;
5. ``MERGE INTO`` the state table with the version guard (``sql.merge_sql``);
6. ``INSERT INTO`` the ledger, values bound (``sql.ledger_insert_sql``);
7. ``COMMIT``.

With history on, the window's distinct versions travel the same way into a second temporary
table (``"KYC_SYNC_STAGED_HISTORY"``, created before the first COPY: DDL would commit the open
transaction) and, right after the MERGE, are added to the history table with their intervals
(``history_sql.flush_statements``).

Any error rolls the transaction back, closes the session (the next flush opens a fresh one) and
is raised as ``TransientWarehouseError`` or ``TerminalWarehouseError`` (``snowflake_errors``).
When the reply to the COMMIT itself is lost, the transaction may have committed: the retry of
that batch first looks for its ledger row and, if it is there, returns what it recorded instead
of applying the batch (and writing its ledger row) a second time.

The session's parameters (``SnowflakeSettings.session_parameters``) bound every wait: a statement
blocked by a lock gives up after ``LOCK_TIMEOUT`` (``WarehouseLockWait``, retried for
``warehouse.lock_wait_max_s``), a statement is cancelled after ``STATEMENT_TIMEOUT_IN_SECONDS``,
and ``ABORT_DETACHED_QUERY`` stops a statement whose client is gone. An instance killed
mid-flush leaves its transaction detached, holding the state table's lock, until Snowflake
aborts it (about 5 minutes idle while it blocks another transaction); the next writer waits for
that by retrying, staying in its group. The writer does not abort other sessions' transactions
itself: a live instance of the same user cannot be told from a dead one, and a transaction
aborted under a live writer between its last statement and its COMMIT would leave that COMMIT
with nothing to commit.

The MERGE must change exactly the rows the classification counted; if another writer changed the
state table in between, the flush is rolled back and retried, so the ledger stays exact.

Timestamps travel in the Parquet file as integers (microseconds since the epoch, UTC) and are
converted with ``TO_TIMESTAMP_NTZ(<n>, 6)``: exact, and independent of how Parquet's logical
timestamp types are read.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
from snowflake.connector import SnowflakeConnection
from snowflake.connector.cursor import SnowflakeCursor

from batcher.ranges import PartitionRange
from schemas.columns import Column
from warehouse import history_sql
from warehouse.base import ApplyResult, Batch, ledger_row
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError
from warehouse.faults import FaultPlan
from warehouse.identifiers import Ident, QualifiedName
from warehouse.snowflake_errors import translated
from warehouse.snowflake_settings import SnowflakeSettings
from warehouse.sql import CLASSIFY_FIELDS, classify_sql, ledger_insert_sql, merge_sql
from warehouse.staging import assert_unique_keys, history_of
from warehouse.swap import (
    Statement,
    discard_statements,
    exchange_statements,
    finish_statements,
    level_statements,
    rebuild_names,
)
from warehouse.tables import STATE_COLUMNS, TableNames, col, column_list, ddl, sql_type

log = logging.getLogger("kyc_sync.snowflake")

STAGED = Ident("kyc_sync_staged", upper=True)
"""The session's temporary table holding the batch (unqualified: temporary objects live in the
session's current schema)."""
STAGE = Ident("kyc_sync_stage", upper=True)
"""The session's temporary stage the batch file is uploaded to."""
STAGED_FILE = "batch.parquet"
STAGED_HISTORY = Ident("kyc_sync_staged_history", upper=True)
"""The session's temporary table holding the window's versions, with history on."""
HISTORY_FILE = "history.parquet"


# -- SQL of the session and the staging steps (the MERGE, classification and ledger SQL are
#    shared with DuckDB: ``warehouse.sql``) ---------------------------------------------------


def use_schema_sql(database: Ident, schema: Ident) -> str:
    return f"USE SCHEMA {database.sql()}.{schema.sql()}"


def create_stage_sql() -> str:
    return f"CREATE TEMPORARY STAGE IF NOT EXISTS {STAGE.sql()} FILE_FORMAT = (TYPE = PARQUET)"


def create_staged_sql(table: Ident = STAGED) -> str:
    return (
        f"CREATE OR REPLACE TEMPORARY TABLE {table.sql()} (\n"
        f"{column_list(STATE_COLUMNS, 'snowflake')}\n)"
    )


def put_sql(file: str = STAGED_FILE) -> str:
    return f"PUT file://{file} @{STAGE.sql()} AUTO_COMPRESS = FALSE OVERWRITE = TRUE"


def _staged_value(column: Column) -> str:
    ref = f'$1:"{column.name.upper()}"'
    if column.type == "timestamp":
        return f"TO_TIMESTAMP_NTZ({ref}::NUMBER(19,0), 6)"
    return f"{ref}::{sql_type(column, 'snowflake')}"


def copy_sql(table: Ident = STAGED, file: str = STAGED_FILE) -> str:
    """Load the uploaded file into the staged table, typed column by column. ``NULL_IF = ()``:
    a text value is never turned into NULL (the default would turn ``\\N`` into NULL)."""
    cols = ", ".join(col(c.name, "snowflake") for c in STATE_COLUMNS)
    values = ",\n  ".join(_staged_value(c) for c in STATE_COLUMNS)
    return (
        f"COPY INTO {table.sql()} ({cols})\n"
        f"FROM (SELECT\n  {values}\nFROM @{STAGE.sql()}/{file})\n"
        "FILE_FORMAT = (TYPE = PARQUET NULL_IF = ())\n"
        "ON_ERROR = ABORT_STATEMENT\n"
        "FORCE = TRUE\n"
        "PURGE = TRUE"
    )


def recorded_sql(ledger: QualifiedName) -> str:
    """The ledger row of one batch (parameter: batch_id), in ``CLASSIFY_FIELDS`` order."""
    cols = ", ".join(col(name, "snowflake") for name in CLASSIFY_FIELDS)
    return f"SELECT {cols} FROM {ledger.sql()} WHERE {col('batch_id', 'snowflake')} = ?"


def parquet_payload(rows: pa.Table) -> bytes:
    """The batch as Parquet: upper-case column names, timestamps as epoch microseconds."""
    expected = [c.name for c in STATE_COLUMNS]
    if rows.column_names != expected:
        raise TerminalWarehouseError(
            f"staged batch columns {rows.column_names} are not the state columns {expected}"
        )
    arrays = [
        column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column
        for column in rows.columns
    ]
    table = pa.Table.from_arrays(arrays, names=[name.upper() for name in expected])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return bytes(sink.getvalue().to_pybytes())


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SnowflakeWarehouse:
    """Applies batches to Snowflake (see the module doc for the statements of one flush)."""

    def __init__(
        self, config: SnowflakeSettings, names: TableNames, faults: FaultPlan | None = None
    ) -> None:
        self.config = config
        self.names = names
        self.database = Ident(config.database, upper=True)
        self.schema = Ident(config.schema_name, upper=True)
        self.faults = faults or FaultPlan()
        self._conn: SnowflakeConnection | None = None
        self._uncertain: str | None = None  # batch_id whose COMMIT outcome is unknown

    # -- session ---------------------------------------------------------------------------

    def _session(self) -> SnowflakeConnection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        with translated():
            conn = snowflake.connector.connect(**self.config.connect_args())
            try:
                conn.autocommit(False)
                with conn.cursor() as cur:
                    cur.execute(use_schema_sql(self.database, self.schema))
                    cur.execute(create_stage_sql())
            except BaseException:
                _close_quietly(conn)
                raise
        log.info(
            "connected to Snowflake: account=%s user=%s role=%s warehouse=%s schema=%s.%s "
            "auth=%s",
            self.config.account, self.config.user, self.config.role or "(default)",
            self.config.warehouse or "(default)", self.database.sql(), self.schema.sql(),
            self.config.auth,
        )
        self._conn = conn
        return conn

    @contextmanager
    def _work(self) -> Iterator[SnowflakeConnection]:
        """The session for one unit of work: a failure rolls back and drops the session (the
        next call opens a fresh one); the connector's errors are translated."""
        with translated():
            conn = self._session()
            try:
                yield conn
            except BaseException:
                self._abort(conn)
                raise

    def _abort(self, conn: SnowflakeConnection) -> None:
        """Roll back and drop the session."""
        try:
            conn.rollback()
        except Exception as err:  # the session may already be gone; the rollback is implied
            log.debug("rollback failed: %s", type(err).__name__)
        _close_quietly(conn)
        if self._conn is conn:
            self._conn = None

    # -- the Warehouse protocol --------------------------------------------------------------

    def open(self) -> None:
        """DDL (each statement commits on its own), then, with history on, the seeding of
        history from the state table in one transaction."""
        seed = [] if self.names.history is None else history_sql.seed_statements(
            self.names.history, self.names.state, "snowflake")
        self._statements(ddl(self.names, "snowflake") + seed)

    def apply(self, batch: Batch) -> ApplyResult:
        assert_unique_keys(batch.rows)
        versions = history_of(batch, self.names)
        started = time.perf_counter()
        payload = parquet_payload(batch.rows)
        history = None if versions is None else parquet_payload(versions)
        committing = False
        try:
            with self._work() as conn:
                if self._uncertain == batch.batch_id and (done := self._recorded(conn, batch)):
                    self._uncertain = None
                    return replace(done, write_s=time.perf_counter() - started)
                self._uncertain = None
                with conn.cursor() as cur:
                    result = self._write(cur, batch, payload, history, started)
                committing = True
                conn.commit()
        except BaseException:
            if committing:
                # The COMMIT's reply was lost: the transaction may or may not have committed.
                # The retry of this batch looks for its ledger row first.
                self._uncertain = batch.batch_id
            raise
        return replace(result, write_s=time.perf_counter() - started)

    def _write(
        self, cur: SnowflakeCursor, batch: Batch, payload: bytes, history: bytes | None,
        started: float,
    ) -> ApplyResult:
        """Statements 1-6 of the module doc (and the history's); the caller commits."""
        state, staged = self.names.state, STAGED.sql()
        cur.execute(create_staged_sql())
        if history is not None:
            cur.execute(create_staged_sql(STAGED_HISTORY))
        cur.execute(put_sql(), file_stream=io.BytesIO(payload))
        if history is not None:
            cur.execute(put_sql(HISTORY_FILE), file_stream=io.BytesIO(history))
        self._copy(cur, STAGED, STAGED_FILE, batch.rows.num_rows, "rows")
        if history is not None:
            assert batch.history is not None
            self._copy(cur, STAGED_HISTORY, HISTORY_FILE, batch.history.num_rows, "versions")
        cur.execute(classify_sql(state, staged, "snowflake"))
        classified = _result(cur.fetchone())
        cur.execute(merge_sql(state, staged, "snowflake"))
        merged = cur.fetchone()
        merged_rows = sum(int(v) for v in merged) if merged is not None else 0
        if merged_rows != classified.applied:
            raise TransientWarehouseError(
                f"the MERGE changed {merged_rows} rows where {classified.applied} were "
                "classified: another writer changed the state table in between; retrying"
            )
        if history is not None:
            assert self.names.history is not None
            for statement in history_sql.flush_statements(
                    self.names.history, STAGED_HISTORY.sql(), "snowflake"):
                cur.execute(statement)
        self.faults("after_merge")
        write_ms = int((time.perf_counter() - started) * 1000)
        cur.execute(
            ledger_insert_sql(self.names.ledger, "snowflake"),
            ledger_row(batch, classified, utcnow(), write_ms),
        )
        return classified

    @staticmethod
    def _copy(cur: SnowflakeCursor, table: Ident, file: str, expected: int, what: str) -> None:
        cur.execute(copy_sql(table, file))
        loaded = _rows_loaded(cur.description, cur.fetchall())
        if loaded != expected:
            raise TerminalWarehouseError(f"COPY loaded {loaded} of the batch's {expected} {what}")

    def _recorded(self, conn: SnowflakeConnection, batch: Batch) -> ApplyResult | None:
        """What the ledger recorded for ``batch``, if an earlier attempt committed it."""
        with conn.cursor() as cur:
            cur.execute(recorded_sql(self.names.ledger), [batch.batch_id])
            row = cur.fetchone()
        if row is None:
            return None
        log.warning(
            "batch %s was committed by an attempt whose COMMIT reply was lost; not applied again",
            batch.batch_id,
        )
        return _result(row)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    # -- operations: read-only queries and the full-refresh swap ------------------------------

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One read-only query with bound ``?`` parameters; all rows."""
        with self._work() as conn, conn.cursor() as cur:
            cur.execute(sql, list(params) if params else None)
            return [tuple(r) for r in cur.fetchall()]

    def prepare(self) -> None:
        self._statements(ddl(rebuild_names(self.names), "snowflake"))

    def discard(self) -> None:
        self._statements(discard_statements(self.names))

    def level(self, built: Sequence[PartitionRange], into_live: bool) -> None:
        self._run(level_statements(self.names, built, "snowflake", into_live=into_live))

    def swap_in(self, built: Sequence[PartitionRange]) -> None:
        """``ALTER TABLE ... SWAP WITH`` per table, atomic on its own; the view keeps referring
        to the live name. Not repeatable: once a SWAP was sent, a lost reply is terminal (a
        second SWAP would swap back), with the table to look at named."""
        with self._work() as conn, conn.cursor() as cur:
            for statement in exchange_statements(self.names, "snowflake"):
                try:
                    cur.execute(statement)
                except Exception as err:
                    raise TerminalWarehouseError(
                        f"{statement}: {err}; whether the tables were swapped is unknown: "
                        "compare the two tables' row counts before running the refresh again"
                    ) from err
            conn.commit()

    def finish(self) -> None:
        self._statements(finish_statements(self.names, "snowflake"))

    def _statements(self, statements: list[str]) -> None:
        self._run([(sql, ()) for sql in statements])

    def _run(self, statements: Sequence[Statement]) -> None:
        with self._work() as conn:
            with conn.cursor() as cur:
                for sql, params in statements:
                    cur.execute(sql, list(params) if params else None)
            conn.commit()


def _result(row: Sequence[Any] | None) -> ApplyResult:
    """An ``ApplyResult`` from a row of ``CLASSIFY_FIELDS`` (``write_s`` is set by the caller)."""
    assert row is not None
    inserted, updated, deleted, stale = (int(v) for v in row[:4])
    # MIN/MAX over no applied row are NULL: decided on the counts, not on the values read.
    applied = inserted + updated + deleted
    min_t, max_t = (row[4], row[5]) if applied else (None, None)
    return ApplyResult(
        inserted=inserted, updated=updated, deleted=deleted, skipped_stale=stale,
        min_op_time=min_t, max_op_time=max_t, write_s=0.0,
    )


def _rows_loaded(description: Sequence[Any] | None, rows: list[Any]) -> int:
    """Sum of ``rows_loaded`` over the files of a COPY result."""
    names = [str(d[0]).lower() for d in description or ()]
    if "rows_loaded" not in names:
        return 0
    index = names.index("rows_loaded")
    return sum(int(r[index]) for r in rows)


def _close_quietly(conn: SnowflakeConnection) -> None:
    try:
        conn.close()
    except Exception as err:  # closing a broken session: nothing left to release
        log.debug("close failed: %s", type(err).__name__)
