"""The DuckDB writer: the embedded default.

DuckDB lets one process write a database file at a time. The writer holds the file only while it
applies a batch, so several kyc-sync instances (one consumer group) can share one file; a lock
held by another instance surfaces as ``TransientWarehouseError`` and the flush is retried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from batcher.ranges import PartitionRange
from schemas.columns import TableSchema
from schemas.evolution import ColumnPolicy, TableState
from warehouse import history_sql
from warehouse.base import ApplyResult, Batch, ledger_row
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError, WarehouseError
from warehouse.faults import FaultPlan
from warehouse.identifiers import Ident
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
from warehouse.sql import (
    CLASSIFY_FIELDS,
    classify_sql,
    delete_superseded_sql,
    insert_new_sql,
    ledger_insert_sql,
)
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
from warehouse.tables import TableNames, create_view_sql, ddl, state_columns, table_ddl

STAGED = "kyc_sync_staged"
STAGED_HISTORY = "kyc_sync_staged_history"
APPLY_SLICE_ROWS = 250_000
"""Staged rows written per statement group; bounds the memory of the hash joins of a flush."""
HISTORY_SLICE_ROWS = 1_000_000
"""Staged versions added to history per statement pair: each pair reads the history rows of its
keys once, so fewer, larger slices; any slicing gives the same table."""


@contextmanager
def translated() -> Iterator[None]:
    """Raise DuckDB's errors as the writer's: the one place driver errors are translated."""
    try:
        yield
    except duckdb.Error as err:
        raise translate(err) from err


def translate(err: duckdb.Error) -> WarehouseError:
    """Map a DuckDB error to transient (retry) or terminal (stop)."""
    text = str(err)
    if isinstance(err, duckdb.IOException) and "lock" in text.lower():
        return TransientWarehouseError(f"database file is locked by another process: {text}")
    if isinstance(err, duckdb.IOException) and "not a valid DuckDB database file" in text:
        # Another instance created the file and has not written its header yet. Retried like a
        # lock conflict, within the retry budget, so a really corrupt file still stops the run.
        return TransientWarehouseError(f"database file is being created elsewhere: {text}")
    if isinstance(err, duckdb.TransactionException):
        return TransientWarehouseError(f"transaction conflict: {text}")
    return TerminalWarehouseError(f"{type(err).__name__}: {text}")


def add_classified(total: tuple[Any, ...], row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two ``classify_sql`` rows (of disjoint key sets) as one: counts add up, bounds widen."""
    low = [t for t in (total[4], row[4]) if t is not None]
    high = [t for t in (total[5], row[5]) if t is not None]
    return (
        *(int(a) + int(b) for a, b in zip(total[:4], row[:4], strict=True)),
        min(low, default=None),
        max(high, default=None),
    )


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DuckDBWarehouse:
    """Applies batches to a DuckDB file (or ``:memory:``, kept open, for tests)."""

    def __init__(
        self, path: str, names: TableNames, schema: str = "main", faults: FaultPlan | None = None,
        policy: ColumnPolicy | None = None, memory_limit: str | None = None,
    ) -> None:
        self.path = path
        self.names = names
        self.schema = Ident(schema)
        self.faults = faults or FaultPlan()
        self.policy = policy or ColumnPolicy()
        self.config: dict[str, str | bool | int | float | list[str]] = (
            {} if memory_limit is None else {"memory_limit": memory_limit})
        """Every connection's DuckDB settings (one process must open a file with one config)."""
        self._memory: duckdb.DuckDBPyConnection | None = None

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        if self.path == ":memory:":
            if self._memory is None:
                self._memory = duckdb.connect(":memory:", config=self.config)
            return self._memory
        if read_only:
            return duckdb.connect(self.path, read_only=True, config=self.config)
        created = not os.path.exists(self.path)
        con = duckdb.connect(self.path, config=self.config)
        if created:
            private(self.path)
        return con

    def _release(self, con: duckdb.DuckDBPyConnection) -> None:
        if con is not self._memory:
            con.close()

    @translated()
    def open(self) -> None:
        """Create what is missing (a new state table with the column policy's columns), record
        the column policy with a new table, and re-create the view from the columns the state
        table has; with history on, bring the history table to the state table's columns and
        seed it from the state table (``history_sql.seed_statements``)."""
        if self.schema.name != "main":
            con = self._connect()
            try:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema.sql()}")
            finally:
                self._release(con)
        with self._transaction() as con:
            for statement in table_ddl(self.names, "duckdb", self.policy.initial_schema()):
                con.execute(statement)
            state = self._state(con)
            if self.names.columns is not None and state.policy is None and (
                not state.has_rows or self.policy == ColumnPolicy()
            ):
                con.executemany(
                    record_sql(self.names.columns, "duckdb"), policy_rows(self.policy, utcnow())
                )
            con.execute(create_view_sql(self.names, "duckdb", state.schema))
            if self.names.history is not None:
                # A history table created now, or turned on for an existing state table, gets
                # the state table's columns, then the state's versions it lacks.
                self._follow(con, self.names, state.schema)
                for statement in history_sql.seed_statements(
                        self.names.history, self.names.state, "duckdb",
                        state_columns(state.schema)):
                    con.execute(statement)

    @translated()
    def table_state(self) -> TableState:
        """The state table's columns, recorded column policy and whether it holds rows."""
        with self._transaction() as con:
            return self._state(con)

    def _state(
        self, con: duckdb.DuckDBPyConnection, names: TableNames | None = None
    ) -> TableState:
        names = names or self.names
        sql, params = physical_columns_sql(names.state, "duckdb")
        physical = con.execute(sql, params).fetchall()
        rows = con.execute(has_rows_sql(names.state)).fetchall()
        return table_state(
            physical, self._recorded_columns(con, names), bool(rows and rows[0][0]), upper=False
        )

    @staticmethod
    def _recorded_columns(
        con: duckdb.DuckDBPyConnection, names: TableNames
    ) -> list[tuple[Any, ...]]:
        if names.columns is None:
            return []
        return con.execute(recorded_columns_sql(names.columns, "duckdb")).fetchall()

    @staticmethod
    def _follow(con: duckdb.DuckDBPyConnection, names: TableNames, state: TableSchema) -> None:
        """The history table of ``names`` (if any) gains the columns of its state table it
        lacks or has narrower (``state``: the state table's columns as recorded), in the
        transaction of ``con``."""
        if names.history is None:
            return
        history, table = (
            con.execute(*physical_columns_sql(t, "duckdb")).fetchall()
            for t in (names.history, names.state)
        )
        for statement in follow_statements(names.history, history, table, state, "duckdb"):
            con.execute(statement)

    def _evolve(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> TableState:
        """Make the batch's column changes not made yet (in the batch's transaction), record
        them, bring the history table level with the state table; the state table's columns
        after them. The history table is checked with every flush, not only those that carry
        changes: another instance (one with history off) may have changed the state table."""
        state = self._state(con)
        if not batch.schema.changes:
            self._follow(con, self.names, state.schema)
            return state
        if self.names.columns is not None:
            recorded = con.execute(recorded_columns_sql(self.names.columns, "duckdb")).fetchall()
            known = latest_types(recorded)
        else:
            known = {c.name.lower(): c.describe() for c in state.schema.columns}
        changes = pending(batch.schema.changes, known)
        if changes:
            now = utcnow()
            for statement in alter_statements(self.names.state, changes, state.schema, "duckdb"):
                con.execute(statement)
            if self.names.columns is not None:
                con.executemany(
                    record_sql(self.names.columns, "duckdb"),
                    change_rows(changes, batch.batch_id, now),
                )
            state = self._state(con)
            con.execute(create_view_sql(self.names, "duckdb", state.schema))
        # Also when another instance made the changes (with history off, say).
        self._follow(con, self.names, state.schema)
        return state

    @translated()
    def apply(self, batch: Batch) -> ApplyResult:
        assert_unique_keys(batch.rows)
        versions = history_of(batch, self.names)
        started = time.perf_counter()
        with self._transaction() as con:
            state = self._evolve(con, batch)
            result = self._write(con, batch, state)
            if versions is not None:
                self._write_history(con, versions, state.schema)
            self.faults("after_merge")
            write_ms = int((time.perf_counter() - started) * 1000)
            con.execute(
                ledger_insert_sql(self.names.ledger, "duckdb"),
                ledger_row(batch, result, utcnow(), write_ms),
            )
        return replace(result, write_s=time.perf_counter() - started)

    def _write(
        self, con: duckdb.DuckDBPyConnection, batch: Batch, state: TableState
    ) -> ApplyResult:
        """The guarded upsert, slice by slice; what it did (``write_s`` is set by the caller).

        DELETE of the superseded rows + INSERT of the staged rows whose key is then absent,
        rather than MERGE or UPDATE: DuckDB 2.0's MERGE has a slow path (seconds per 100k rows)
        when it updates rows inserted after an earlier update, and an UPDATE keeps every updated
        column's old and new values in memory until the commit (about 500 MiB for 1M rows). The
        staged rows hold one row per key, so slices are independent; each is classified, then
        written. Every column of the state table is written: one the staged rows lack gets
        NULL."""
        columns = state_columns(state.schema)
        present = set(batch.rows.column_names)
        classified: tuple[Any, ...] = (0, 0, 0, 0, None, None)
        for start in range(0, max(batch.rows.num_rows, 1), APPLY_SLICE_ROWS):
            con.register(STAGED, batch.rows.slice(start, APPLY_SLICE_ROWS))
            row = con.execute(classify_sql(self.names.state, STAGED, "duckdb")).fetchone()
            assert row is not None
            assert len(row) == len(CLASSIFY_FIELDS)
            classified = add_classified(classified, row)
            con.execute(delete_superseded_sql(self.names.state, STAGED, "duckdb"))
            con.execute(insert_new_sql(self.names.state, STAGED, "duckdb", columns, present))
            con.unregister(STAGED)
        inserted, updated, deleted, stale, min_t, max_t = classified
        return ApplyResult(
            inserted=int(inserted), updated=int(updated), deleted=int(deleted),
            skipped_stale=int(stale), min_op_time=min_t, max_op_time=max_t, write_s=0.0,
        )

    def _write_history(
        self, con: duckdb.DuckDBPyConnection, versions: pa.Table, schema: TableSchema
    ) -> None:
        """New versions into the history table, then the intervals of their keys; by slices
        (a key split over two slices is recomputed twice, from the whole table: still right).
        Like the MERGE, every column of the state table now (``schema``, which the history
        table holds too) is written: one the staged versions lack is NULL."""
        assert self.names.history is not None
        statements = history_sql.flush_statements(
            self.names.history, STAGED_HISTORY, "duckdb", state_columns(schema),
            set(versions.column_names),
        )
        for start in range(0, versions.num_rows, HISTORY_SLICE_ROWS):
            con.register(STAGED_HISTORY, versions.slice(start, HISTORY_SLICE_ROWS))
            for statement in statements:
                con.execute(statement)
            con.unregister(STAGED_HISTORY)

    # -- operations: read-only queries and the full-refresh swap ------------------------------

    @translated()
    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One read-only query; the file is opened read-only and released right after."""
        con = self._connect(read_only=True)
        try:
            return con.execute(sql, list(params)).fetchall()
        finally:
            self._release(con)

    def prepare(self) -> None:
        """The rebuild objects, created if missing, with the column policy's columns."""
        self._statements([
            (sql, ()) for sql in
            ddl(rebuild_names(self.names), "duckdb", self.policy.initial_schema())
        ])

    def discard(self) -> None:
        self._statements([(sql, ()) for sql in discard_statements(self.names)])

    @translated()
    def level(self, built: Sequence[PartitionRange], into_live: bool) -> None:
        with self._transaction() as con:
            self._level(con, built, into_live)

    def _level(
        self, con: duckdb.DuckDBPyConnection, built: Sequence[PartitionRange], into_live: bool
    ) -> None:
        """Merge the rows outside ``built`` of one copy into the other; the target first gains
        the columns of the source it lacks but those the column policy excludes (recorded in
        its column metadata), and each copy's history table (with history on) the columns of
        its state table."""
        rebuild = rebuild_names(self.names)
        source_names, target_names = (rebuild, self.names) if into_live else (self.names, rebuild)
        source = self._state(con, source_names).schema
        target = self._state(con, target_names).schema
        missing = add_missing(source, target, self.policy.exclude)
        if missing:
            for sql in alter_statements(target_names.state, missing, target, "duckdb"):
                con.execute(sql)
            if target_names.columns is not None:
                con.executemany(record_sql(target_names.columns, "duckdb"),
                                change_rows(missing, "", utcnow()))
            target = self._state(con, target_names).schema
        self._follow(con, source_names, source)
        self._follow(con, target_names, target)
        for sql, params in level_statements(
            self.names, built, "duckdb", into_live=into_live, source=source, target=target
        ):
            con.execute(sql, list(params))

    @translated()
    def outside_rows(self, built: Sequence[PartitionRange]) -> int:
        """Live rows (and history versions) whose version lies outside ``built``: what
        leveling would copy."""
        with self._transaction() as con:
            counts = outside_counts(self.names, built, "duckdb", self._state(con).schema)
            return sum(int(con.execute(sql, list(params)).fetchall()[0][0])
                       for sql, params in counts)

    @translated()
    def swap_in(self, built: Sequence[PartitionRange]) -> None:
        """One transaction, which no live writer can interleave with (DuckDB lets one process
        write the file at a time): level the rebuild, exchange the names, re-create the view,
        level the live name from the table swapped out. Readers see the old table or the new
        one, never a mix."""
        with self._transaction() as con:
            self._level(con, built, into_live=False)
            schema = self._state(con, rebuild_names(self.names)).schema
            for sql in exchange_statements(self.names, "duckdb", schema):
                con.execute(sql)
            self._level(con, built, into_live=True)
            con.execute(create_view_sql(self.names, "duckdb", self._state(con).schema))

    @translated()
    def finish(self) -> None:
        with self._transaction() as con:
            for sql in finish_statements(self.names, "duckdb"):
                con.execute(sql)
            con.execute(create_view_sql(self.names, "duckdb", self._state(con).schema))

    @translated()
    def _statements(self, statements: Sequence[Statement]) -> None:
        with self._transaction() as con:
            for sql, params in statements:
                con.execute(sql, list(params))

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection in a transaction: committed when the block ends, rolled back if it
        raises; the file is released either way."""
        con = self._connect()
        try:
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                con.rollback()
                raise
        finally:
            self._release(con)

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def private(path: str) -> None:
    """Make a database file this writer created (and its write-ahead log) readable by its owner
    only: it holds profile data and the offsets of the ledger."""
    for name in (path, f"{path}.wal"):
        if os.path.exists(name):
            os.chmod(name, 0o600)
