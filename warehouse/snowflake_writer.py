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
timestamp types are read. Dates travel as days, times as microseconds, binary values as hex,
JSON as text (``PARSE_JSON`` into VARIANT), decimals as their text.

Column changes (a batch whose ``TableSchema`` adds or widens columns): DDL commits implicitly, so
the ``ALTER TABLE`` statements run before the batch's transaction, each harmless to repeat (two
instances may race to add the same column), and the view is re-created so that it shows the new
column; the metadata rows are written in the batch's transaction. The MERGE writes every column
the state table has, NULL for one the batch lacks; if the table's columns change while the batch
is written (another instance added one), the transaction is rolled back and retried; a batch
column the state table lacks (a full refresh swapped in a table without it and has not caught up
yet) is retried too, never dropped. With history on, the history table gets the same columns
right after the state table, also before the transaction (``schema_changes.follow_statements``:
whatever the state table has that history lacks or holds narrower, both read as they are, one
``information_schema`` query per flush; so an instance killed between the two ALTERs, or one
with history off, leaves nothing behind; checked again in the transaction). The history rows
name the batch's columns; a column the batch lacks is NULL in them, as in the state row.
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
from schemas.columns import BASE_SCHEMA, Column, ColumnChange, TableSchema
from schemas.evolution import ColumnPolicy, TableState
from warehouse import history_sql
from warehouse.base import ApplyResult, Batch, ledger_row
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError
from warehouse.faults import FaultPlan
from warehouse.identifiers import Ident, QualifiedName
from warehouse.schema_changes import (
    alter_statements,
    change_rows,
    follow_statements,
    has_rows_sql,
    latest_types,
    pending,
    physical_columns_sql,
    policy_rows,
    record_sql,
    recorded_columns_sql,
    table_state,
)
from warehouse.snowflake_errors import translated
from warehouse.snowflake_settings import SnowflakeSettings
from warehouse.sql import CLASSIFY_FIELDS, classify_sql, ledger_insert_sql, merge_sql
from warehouse.staging import assert_unique_keys, history_of
from warehouse.swap import (
    Statement,
    add_missing,
    discard_statements,
    exchange_statements,
    finish_statements,
    level_statements,
    outside_counts,
    rebuild_names,
)
from warehouse.tables import (
    TableNames,
    col,
    column_list,
    create_view_sql,
    ddl,
    sql_type,
    state_columns,
    table_ddl,
)

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


def create_staged_sql(schema: TableSchema = BASE_SCHEMA, table: Ident = STAGED) -> str:
    return (
        f"CREATE OR REPLACE TEMPORARY TABLE {table.sql()} (\n"
        f"{column_list(state_columns(schema), 'snowflake')}\n)"
    )


def put_sql(file: str = STAGED_FILE) -> str:
    return f"PUT file://{file} @{STAGE.sql()} AUTO_COMPRESS = FALSE OVERWRITE = TRUE"


_STAGED_VALUES: dict[str, str] = {
    "timestamp": "TO_TIMESTAMP_NTZ({ref}::NUMBER(19,0), 6)",
    "date": "DATEADD(DAY, {ref}::NUMBER(10,0), TO_DATE('1970-01-01'))",
    "time": "TO_TIME(TO_TIMESTAMP_NTZ({ref}::NUMBER(19,0), 6))",
    "binary": "TO_BINARY({ref}::VARCHAR, 'HEX')",
    "json": "PARSE_JSON({ref}::VARCHAR)",
    "decimal": "{ref}::VARCHAR::{type}",
}
"""How a staged column is read from the Parquet file (default: a cast to its type)."""


def _staged_value(column: Column) -> str:
    ref = f'$1:"{column.name.upper()}"'
    template = _STAGED_VALUES.get(column.type, "{ref}::{type}")
    return template.format(ref=ref, type=sql_type(column, "snowflake"))


def copy_sql(
    schema: TableSchema = BASE_SCHEMA, table: Ident = STAGED, file: str = STAGED_FILE
) -> str:
    """Load the uploaded file into the staged table, typed column by column. ``NULL_IF = ()``:
    a text value is never turned into NULL (the default would turn ``\\N`` into NULL)."""
    columns = state_columns(schema)
    cols = ", ".join(col(c.name, "snowflake") for c in columns)
    values = ",\n  ".join(_staged_value(c) for c in columns)
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


def _parquet_array(column: Any) -> Any:
    """One staged column as the Parquet file carries it (see the module doc)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return column.cast(pa.int64())
    if pa.types.is_date32(kind):
        return column.cast(pa.int32())
    if pa.types.is_time64(kind):
        return column.cast(pa.int64())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.array(
            [None if v is None else v.hex() for v in column.to_pylist()], type=pa.string()
        )
    if pa.types.is_decimal(kind):
        return column.cast(pa.string())
    return column


def parquet_payload(rows: pa.Table, schema: TableSchema = BASE_SCHEMA) -> bytes:
    """The batch as Parquet: upper-case column names, values as the module doc says."""
    expected = [c.name for c in state_columns(schema)]
    if rows.column_names != expected:
        raise TerminalWarehouseError(
            f"staged batch columns {rows.column_names} are not the state columns {expected}"
        )
    arrays = [_parquet_array(column) for column in rows.columns]
    table = pa.Table.from_arrays(arrays, names=[name.upper() for name in expected])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return bytes(sink.getvalue().to_pybytes())


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SnowflakeWarehouse:
    """Applies batches to Snowflake (see the module doc for the statements of one flush)."""

    def __init__(
        self, config: SnowflakeSettings, names: TableNames, faults: FaultPlan | None = None,
        policy: ColumnPolicy | None = None,
    ) -> None:
        self.config = config
        self.names = names
        self.policy = policy or ColumnPolicy()
        self._column_types: dict[str, str] | None = None  # latest recorded type per column
        self._history_physical: list[tuple[Any, ...]] | None = None  # its columns
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
        """Create what is missing (a new state table with the column policy's columns), record
        the column policy with a new table, re-create the view from the state table's columns;
        with history on, bring the history table to the state table's columns and seed it from
        the state table (``history_sql.seed_statements``)."""
        self._statements(table_ddl(self.names, "snowflake", self.policy.initial_schema()))
        state = self.table_state()
        with self._work() as conn:
            with conn.cursor() as cur:
                if self.names.columns is not None and state.policy is None and (
                    not state.has_rows or self.policy == ColumnPolicy()
                ):
                    cur.executemany(
                        record_sql(self.names.columns, "snowflake"),
                        policy_rows(self.policy, utcnow()),
                    )
            conn.commit()
        self._statements([create_view_sql(self.names, "snowflake", state.schema)])
        if self.names.history is not None:
            # A history table created now, or turned on for an existing state table, gets the
            # state table's columns (DDL), then the state's versions it lacks (one transaction).
            self._follow(self.names, state.schema)
            self._statements(history_sql.seed_statements(
                self.names.history, self.names.state, "snowflake", state_columns(state.schema)))

    def table_state(self) -> TableState:
        """The state table's columns, recorded column policy and whether it holds rows."""
        with self._work() as conn, conn.cursor() as cur:
            return self._state(cur)

    def _state(self, cur: SnowflakeCursor, names: TableNames | None = None) -> TableState:
        live = names is None
        names = names or self.names
        sql, params = physical_columns_sql(names.state, "snowflake")
        cur.execute(sql, params)
        physical = cur.fetchall()
        recorded: list[Any] = []
        if names.columns is not None:
            cur.execute(recorded_columns_sql(names.columns, "snowflake"))
            recorded = cur.fetchall()
            if live:
                self._column_types = latest_types(recorded)
        elif live:
            self._column_types = {}
        cur.execute(has_rows_sql(names.state))
        row = cur.fetchone()
        return table_state(physical, recorded, bool(row and row[0]), upper=True)

    def _follow(self, names: TableNames, logical: TableSchema) -> None:
        """The history table of ``names`` (if any) gains the columns of its state table it
        lacks or has narrower (``logical``: their types as recorded or as a batch has them):
        DDL, each statement harmless to repeat. The live history's columns are remembered
        (``_history_has``)."""
        if names.history is None:
            return
        with self._work() as conn, conn.cursor() as cur:
            history = self._columns_of(cur, names.history)
            state = self._columns_of(cur, names.state)
        statements = follow_statements(names.history, history, state, logical, "snowflake")
        if statements:
            self._statements(statements)
            with self._work() as conn, conn.cursor() as cur:
                history = self._columns_of(cur, names.history)
        if names == self.names:
            self._history_physical = history

    @staticmethod
    def _columns_of(cur: SnowflakeCursor, table: QualifiedName) -> list[tuple[Any, ...]]:
        """The table's rows of ``physical_columns_sql``: its columns as they are."""
        sql, params = physical_columns_sql(table, "snowflake")
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]

    def _history_has(self, state: Sequence[Sequence[Any]], logical: TableSchema) -> bool:
        """The live history table is known to hold every column of the state table (``state``:
        its rows of ``physical_columns_sql``), wide enough."""
        if self.names.history is None:
            return True
        known = self._history_physical
        return known is not None and not follow_statements(
            self.names.history, known, state, logical, "snowflake")

    def _columns_ddl(self, batch: Batch) -> list[ColumnChange]:
        """Make the batch's column changes not recorded yet, before its transaction (DDL
        commits on its own; every statement is harmless to repeat), on the state table and,
        with history on, bring the history table level with the state table (also when
        another instance changed the state table: one with history off, or one killed before
        it followed); the changes to record."""
        changes: list[ColumnChange] = []
        if batch.schema.changes and (
                self._column_types is None or pending(batch.schema.changes, self._column_types)):
            with self._work() as conn, conn.cursor() as cur:
                state = self._state(cur)
            changes = pending(batch.schema.changes, self._column_types or {})
            if changes:
                self._statements(
                    alter_statements(self.names.state, changes, state.schema, "snowflake")
                )
                with self._work() as conn, conn.cursor() as cur:
                    state = self._state(cur)
                self._statements([create_view_sql(self.names, "snowflake", state.schema)])
        if self.names.history is not None:
            with self._work() as conn, conn.cursor() as cur:
                table = self._columns_of(cur, self.names.state)
            if not self._history_has(table, batch.schema):
                self._follow(self.names, batch.schema)
        return changes if self.names.columns is not None else []

    def apply(self, batch: Batch) -> ApplyResult:
        assert_unique_keys(batch.rows)
        versions = history_of(batch, self.names)
        started = time.perf_counter()
        payload = parquet_payload(batch.rows, batch.schema)
        history = None if versions is None else parquet_payload(versions, batch.schema)
        changes = self._columns_ddl(batch)
        committing = False
        try:
            with self._work() as conn:
                if self._uncertain == batch.batch_id and (done := self._recorded(conn, batch)):
                    self._uncertain = None
                    return replace(done, write_s=time.perf_counter() - started)
                self._uncertain = None
                with conn.cursor() as cur:
                    result = self._write(cur, batch, payload, history, started, changes)
                committing = True
                conn.commit()
                if changes and self._column_types is not None:
                    self._column_types.update(
                        (c.column.name.lower(), c.column.describe()) for c in changes
                    )
        except BaseException:
            if committing:
                # The COMMIT's reply was lost: the transaction may or may not have committed.
                # The retry of this batch looks for its ledger row first.
                self._uncertain = batch.batch_id
            raise
        return replace(result, write_s=time.perf_counter() - started)

    def _write(
        self, cur: SnowflakeCursor, batch: Batch, payload: bytes, history: bytes | None,
        started: float, changes: Sequence[ColumnChange] = (),
    ) -> ApplyResult:
        """Statements 1-6 of the module doc (and the history's), the metadata rows of
        ``changes``; the caller commits."""
        state, staged = self.names.state, STAGED.sql()
        table = self._columns_of(cur, state)
        columns = self._physical(table)
        held = {c.name.lower() for c in columns}
        lacking = [name for name in batch.schema.names if name.lower() not in held]
        if lacking:
            # A full refresh swapped in a table without them and has not caught up yet:
            # writing now would drop their values. Forget what is known, look again.
            self._column_types = self._history_physical = None
            raise TransientWarehouseError(
                f"the state table lacks column(s) {', '.join(lacking)} of the batch (a full "
                "refresh swapped in a table without them); retrying"
            )
        if history is not None and not self._history_has(table, batch.schema):
            # Another instance (history off) added a column to the state table since
            # ``_columns_ddl`` looked: the history table gets it before this batch (DDL,
            # outside the transaction).
            self._history_physical = None
            raise TransientWarehouseError(
                "the state table has columns the history table lacks (another instance added "
                "them); adding them and retrying"
            )
        cur.execute(create_staged_sql(batch.schema))
        if history is not None:
            cur.execute(create_staged_sql(batch.schema, STAGED_HISTORY))
        cur.execute(put_sql(), file_stream=io.BytesIO(payload))
        if history is not None:
            cur.execute(put_sql(HISTORY_FILE), file_stream=io.BytesIO(history))
        self._copy(cur, copy_sql(batch.schema), batch.rows.num_rows, "rows")
        if history is not None:
            assert batch.history is not None
            self._copy(cur, copy_sql(batch.schema, STAGED_HISTORY, HISTORY_FILE),
                       batch.history.num_rows, "versions")
        cur.execute(classify_sql(state, staged, "snowflake"))
        classified = _result(cur.fetchone())
        present = set(batch.rows.column_names)
        cur.execute(merge_sql(state, staged, "snowflake", columns, present))
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
                    self.names.history, STAGED_HISTORY.sql(), "snowflake",
                    state_columns(batch.schema)):
                cur.execute(statement)
        self.faults("after_merge")
        write_ms = int((time.perf_counter() - started) * 1000)
        cur.execute(
            ledger_insert_sql(self.names.ledger, "snowflake"),
            ledger_row(batch, classified, utcnow(), write_ms),
        )
        if changes and self.names.columns is not None:
            now = utcnow()
            cur.executemany(
                record_sql(self.names.columns, "snowflake"),
                change_rows(changes, batch.batch_id, now),
            )
        if self._physical(self._columns_of(cur, state)) != columns:
            raise TransientWarehouseError(
                "the state table's columns changed while the batch was written (another "
                "instance added one); retrying"
            )
        return classified

    @staticmethod
    def _physical(table: Sequence[Sequence[Any]]) -> tuple[Column, ...]:
        """The state table's columns now, from its rows of ``physical_columns_sql`` (only
        their names matter to the MERGE)."""
        return state_columns(table_state(table, [], False, upper=True).schema)

    @staticmethod
    def _copy(cur: SnowflakeCursor, copy: str, expected: int, what: str) -> None:
        cur.execute(copy)
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
        """The rebuild objects, created if missing, with the column policy's columns."""
        self._statements(
            ddl(rebuild_names(self.names), "snowflake", self.policy.initial_schema())
        )

    def discard(self) -> None:
        self._statements(discard_statements(self.names))

    def level(self, built: Sequence[PartitionRange], into_live: bool) -> None:
        """Merge the rows outside ``built`` of one copy into the other; the target first gains
        the columns of the source it lacks but those the column policy excludes, and each
        copy's history table (with history on) the columns of its state table (DDL: before the
        merge's transaction)."""
        rebuild = rebuild_names(self.names)
        source_names, target_names = (rebuild, self.names) if into_live else (self.names, rebuild)
        with self._work() as conn, conn.cursor() as cur:
            source = self._state(cur, source_names).schema
            target = self._state(cur, target_names).schema
        missing = add_missing(source, target, self.policy.exclude)
        if missing:
            self._statements(alter_statements(target_names.state, missing, target, "snowflake"))
            if target_names.columns is not None:
                with self._work() as conn:
                    with conn.cursor() as cur:
                        cur.executemany(record_sql(target_names.columns, "snowflake"),
                                        change_rows(missing, "", utcnow()))
                    conn.commit()
            with self._work() as conn, conn.cursor() as cur:
                target = self._state(cur, target_names).schema
            if into_live:
                self._statements([create_view_sql(self.names, "snowflake", target)])
        self._follow(source_names, source)
        self._follow(target_names, target)
        self._run(level_statements(
            self.names, built, "snowflake", into_live=into_live, source=source, target=target
        ))

    def outside_rows(self, built: Sequence[PartitionRange]) -> int:
        """Live rows (and history versions) whose version lies outside ``built``: what
        leveling would copy."""
        total = 0
        with self._work() as conn, conn.cursor() as cur:
            for sql, params in outside_counts(
                    self.names, built, "snowflake", self._state(cur).schema):
                cur.execute(sql, list(params) if params else None)
                row = cur.fetchone()
                total += int(row[0]) if row else 0
        return total

    def swap_in(self, built: Sequence[PartitionRange]) -> None:
        """``ALTER TABLE ... SWAP WITH`` per table, atomic on its own; then the view is
        re-created from the columns the table now has (``COPY GRANTS``). Not repeatable: once a
        SWAP was sent, a lost reply is terminal (a second SWAP would swap back), with the table
        to look at named."""
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
        with self._work() as conn, conn.cursor() as cur:
            schema = self._state(cur).schema
        self._statements([create_view_sql(self.names, "snowflake", schema)])

    def finish(self) -> None:
        self._statements(finish_statements(self.names, "snowflake"))
        with self._work() as conn, conn.cursor() as cur:
            schema = self._state(cur).schema
        self._statements([create_view_sql(self.names, "snowflake", schema)])

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
