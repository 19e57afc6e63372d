"""The writer contract: every writer keeps the state table, the live view and the ledger the same
way. The same test code runs against each writer (``harness`` is parametrized): the DuckDB writer
on a database file, and the Snowflake writer against a fakesnow server through the real connector.

Covered: the seed scenario, the version guard, tombstones, the ledger's contents, rollback on a
failure after the MERGE, and convergence: random histories, split into random batches with
redeliveries and replayed ranges, reduced by ``ReferenceReducer`` and applied by the writer,
leave the live view equal to an independent oracle (per key the greatest (op_time, partition,
offset) event, absent if it is a DELETE). With history on (``history_harness``): the history
table equals ``tests.oracles.history`` after any such history, late events split intervals,
redeliveries add nothing, DELETEs close, the as-of query, seeding from an existing state table,
rollback, the full-refresh swap, and the check queries find nothing on a converged table.

Reads go through the writers' own ``fetch``. Nullable timestamps are read with an ``IS NULL``
flag next to them: fakesnow's server renders a NULL TIMESTAMP_NTZ as 1970-01-01 in results.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from batcher.ranges import PartitionRange
from schemas.columns import KEY, OP_TYPES, Column
from schemas.evolution import ColumnPolicy, TableState
from tests.oracles.history import Interval, as_of, build_history
from tests.oracles.reducer import ReferenceReducer, Version, Winner
from tests.oracles.staging import Row, build_staged
from warehouse import duckdb_writer, history_sql
from warehouse.base import ApplyResult, Batch
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError, WarehouseError
from warehouse.faults import FaultMode, FaultPlan
from warehouse.identifiers import QualifiedName
from warehouse.swap import rebuild_names
from warehouse.tables import (
    HISTORY_COLUMNS,
    LEDGER_COLUMNS,
    STATE_COLUMNS,
    VIEW_COLUMNS,
    Dialect,
    TableNames,
    col,
    state_columns,
)

TOPIC = "kyc_profile_audit"
GROUP = "kyc-sync-contract"
EPOCH = datetime(1970, 1, 1)
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds
SYNCED_AT_US = T0 + 10**12
STARTED_AT = datetime(2026, 3, 1, 12, 0, 0, 123456)
TABLES = ("kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger", "kyc_sync_columns")
HISTORY_TABLE = "kyc_profile_history"


def ts(micros: int | None) -> datetime | None:
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- events and batches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event as the reducer sees it."""

    key: int
    op_time: int
    partition: int
    offset: int
    op_type: str = "INSERT"
    goldtier_id: str | None = None
    cid: str | None = None
    party_id: str | None = None
    created_us: int | None = None
    updated_us: int | None = None

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.op_time, self.partition, self.offset)

    def payload(self) -> Row:
        return (self.key, self.goldtier_id, self.cid, self.party_id,
                self.created_us, self.updated_us)


def make_batch(
    events: Sequence[Event], invalid: Sequence[tuple[int, int]] = (), history: bool = False
) -> Batch:
    """Reduce ``events`` (plus ``invalid`` (partition, offset) positions) into one batch; with
    ``history``, the batch also carries the distinct versions."""
    reducer: ReferenceReducer[Row] = ReferenceReducer(keep_versions=history)
    for e in events:
        reducer.add(e.key, e.op_time, e.partition, e.offset, e.op_type, e.payload())
    for partition, offset in invalid:
        reducer.skip(partition, offset)
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    return Batch(
        batch_id=batch_id, topic=TOPIC, consumer_group=GROUP,
        rows=build_staged(reduced.winners, batch_id, SYNCED_AT_US),
        ranges=reduced.ranges, events_in=reduced.events, invalid_events=reduced.invalid,
        started_at=STARTED_AT, decode_ms=7,
        history=build_staged(reduced.versions, batch_id, SYNCED_AT_US) if history else None,
    )


def state_row(e: Event, batch_id: str) -> dict[str, Any]:
    """The state row ``e`` leaves when it is applied."""
    return {
        "kyc_profile_id": e.key, "goldtier_id": e.goldtier_id, "cid": e.cid,
        "party_id": e.party_id, "created_date": ts(e.created_us), "updated_date": ts(e.updated_us),
        "op_type": e.op_type, "op_time": ts(e.op_time), "src_partition": e.partition,
        "src_offset": e.offset, "is_deleted": e.op_type == "DELETE", "batch_id": batch_id,
        "synced_at": ts(SYNCED_AT_US),
    }


def view_row(e: Event) -> dict[str, Any]:
    row = state_row(e, "")
    return {name: row[name] for name in VIEW_COLUMNS}


# -- the writers under test -------------------------------------------------------------------


class ContractWriter(Protocol):
    names: TableNames

    def open(self) -> None: ...
    def table_state(self) -> TableState: ...
    def apply(self, batch: Batch) -> ApplyResult: ...
    def close(self) -> None: ...
    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...
    def prepare(self) -> None: ...
    def discard(self) -> None: ...
    def level(self, built: Sequence[PartitionRange], into_live: bool) -> None: ...
    def swap_in(self, built: Sequence[PartitionRange]) -> None: ...
    def finish(self) -> None: ...
    def outside_rows(self, built: Sequence[PartitionRange]) -> int: ...


class NewWriter(Protocol):
    """Another writer of the harness's kind (same database), on ``names``."""

    def __call__(
        self, names: TableNames, faults: FaultPlan | None = None,
        policy: ColumnPolicy | None = None,
    ) -> ContractWriter: ...


COLUMNS_BY_NAME = {c.name: c for c in STATE_COLUMNS}
VIEW_COLUMN_DEFS = tuple(COLUMNS_BY_NAME[name] for name in VIEW_COLUMNS)


@dataclass
class Harness:
    """One writer under test and how to read back what it wrote."""

    kind: str
    dialect: Dialect
    writer: ContractWriter
    faults: FaultPlan
    module: ModuleType
    examples: int
    new_writer: NewWriter

    @property
    def history_on(self) -> bool:
        return self.writer.names.history is not None

    def batch(self, events: Sequence[Event], invalid: Sequence[tuple[int, int]] = ()) -> Batch:
        return make_batch(events, invalid, history=self.history_on)

    def apply(self, events: Sequence[Event], invalid: Sequence[tuple[int, int]] = ()) -> Batch:
        batch = self.batch(events, invalid)
        self.writer.apply(batch)
        return batch

    def read(
        self, name: QualifiedName, columns: tuple[Column, ...], order: Sequence[str]
    ) -> list[dict[str, Any]]:
        exprs: list[str] = []
        for c in columns:
            exprs.append(col(c.name, self.dialect))
            if c.type == "timestamp" and c.nullable:
                exprs.append(f"{col(c.name, self.dialect)} IS NULL")
        ordering = ", ".join(col(o, self.dialect) for o in order)
        rows = self.writer.fetch(f"SELECT {', '.join(exprs)} FROM {name.sql()} ORDER BY {ordering}")
        out = []
        for row in rows:
            values = iter(row)
            decoded: dict[str, Any] = {}
            for c in columns:
                value = next(values)
                if c.type == "timestamp" and c.nullable and next(values):
                    value = None
                decoded[c.name] = value
            out.append(decoded)
        return out

    def state(self) -> dict[int, dict[str, Any]]:
        rows = self.read(self.writer.names.state, STATE_COLUMNS, [KEY])
        return {r[KEY]: r for r in rows}

    def live(self) -> dict[int, dict[str, Any]]:
        rows = self.read(self.writer.names.current, VIEW_COLUMN_DEFS, [KEY])
        return {r[KEY]: r for r in rows}

    def ledger(self) -> list[dict[str, Any]]:
        return self.read(self.writer.names.ledger, LEDGER_COLUMNS, ["committed_at", "batch_id"])

    def history(self) -> dict[int, list[dict[str, Any]]]:
        """Per key its history rows, by version."""
        assert self.writer.names.history is not None
        rows = self.read(self.writer.names.history, HISTORY_COLUMNS, [KEY, "op_time",
                                                                     "src_partition", "src_offset"])
        out: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(row[KEY], []).append(row)
        return out

    def snapshot(self) -> tuple[Any, ...]:
        history = self.history() if self.history_on else None
        return (self.state(), self.live(), self.ledger(), history)


def names_in(*prefix: str, upper: bool, history: bool = False) -> TableNames:
    state, current, ledger, columns, table = (
        QualifiedName.of(*prefix, t, upper=upper) for t in (*TABLES, HISTORY_TABLE))
    return TableNames(state, current, ledger, columns, table if history else None)


def duckdb_harness(path: Path, history: bool = False) -> Harness:
    def new_writer(
        names: TableNames, faults: FaultPlan | None = None, policy: ColumnPolicy | None = None
    ) -> ContractWriter:
        return duckdb_writer.DuckDBWarehouse(str(path), names, "kyc", faults, policy)

    faults = FaultPlan()
    writer = new_writer(names_in("kyc", upper=False, history=history), faults)
    return Harness("duckdb", "duckdb", writer, faults, duckdb_writer, 25, new_writer)


def snowflake_harness(config: Any, examples: int, history: bool = False) -> Harness:
    from warehouse import snowflake_writer

    def new_writer(
        names: TableNames, faults: FaultPlan | None = None, policy: ColumnPolicy | None = None
    ) -> ContractWriter:
        return snowflake_writer.SnowflakeWarehouse(config, names, faults, policy)

    faults = FaultPlan()
    names = names_in(config.database, config.schema_name, upper=True, history=history)
    writer = new_writer(names, faults)
    return Harness(
        "snowflake", "snowflake", writer, faults, snowflake_writer, examples, new_writer
    )


def fakesnow_config(host: str, port: int, database: str) -> Any:
    from warehouse.snowflake_settings import SnowflakeSettings

    return SnowflakeSettings(
        account="fakesnow", user="fake", password=SecretStr("snow"), database=database,
        schema_name="KYC", host=host, port=port, protocol="http",
        login_timeout_s=20, network_timeout_s=30,
    )


WRITERS = ("duckdb", "snowflake")


def open_harness(request: pytest.FixtureRequest, tmp_path: Path, history: bool) -> Harness:
    if request.param == "duckdb":
        h = duckdb_harness(tmp_path / "contract.duckdb", history)
    else:
        host, port = request.getfixturevalue("fakesnow_server")
        database = request.getfixturevalue("snowflake_database")
        h = snowflake_harness(fakesnow_config(host, port, database), examples=6,
                              history=history)
    h.writer.open()
    return h


@pytest.fixture(params=WRITERS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = open_harness(request, tmp_path, history=False)
    try:
        yield h
    finally:
        h.writer.close()


@pytest.fixture(params=WRITERS)
def history_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A writer with history on."""
    h = open_harness(request, tmp_path, history=True)
    try:
        yield h
    finally:
        h.writer.close()


# -- scenarios ----------------------------------------------------------------------------------


def test_open_is_idempotent_and_close_is_safe_twice(harness: Harness) -> None:
    harness.writer.open()
    harness.writer.close()
    harness.writer.close()
    harness.writer.open()
    harness.apply([Event(1, T0, 0, 0)])
    assert list(harness.live()) == [1]


def test_seed_scenario(harness: Harness) -> None:
    events = [
        Event(1, T0 + 1, 0, 0, "INSERT", "GT-1", "C-1", "P-1", T0 - 5, None),
        Event(2, T0 + 2, 1, 0, "INSERT", "GT-2", None, "\\N", None, T0 + 2),
        Event(3, T0 + 3, 0, 1, "INSERT", None, None, None, None, None),
        Event(3, T0 + 9, 1, 1, "UPDATE", "GT-3b", "C-3", "P-3", T0 - 9, T0 + 9),
        Event(4, T0 + 4, 2, 0, "INSERT", "GT-\u00e9\u4e2d'\"", "", "P-4", T0, T0),
    ]
    batch = make_batch(events)
    result = harness.writer.apply(batch)

    assert (result.inserted, result.updated, result.deleted, result.skipped_stale) == (4, 0, 0, 0)
    assert (result.min_op_time, result.max_op_time) == (ts(T0 + 1), ts(T0 + 9))
    assert result.write_s > 0
    winners = [events[0], events[1], events[3], events[4]]
    assert harness.state() == {e.key: state_row(e, batch.batch_id) for e in winners}
    assert harness.live() == {e.key: view_row(e) for e in winners}


def test_guard_applies_only_strictly_newer_versions(harness: Harness) -> None:
    existing = (T0 + 100, 1, 10)
    cases: dict[str, tuple[tuple[int, int, int], bool]] = {
        "older op_time": ((T0 + 99, 2, 99), False),
        "same op_time, lower partition": ((T0 + 100, 0, 99), False),
        "same op_time and partition, lower offset": ((T0 + 100, 1, 9), False),
        "the same version (a redelivery)": (existing, False),
        "newer op_time, lower position": ((T0 + 101, 0, 0), True),
        "same op_time, higher partition": ((T0 + 100, 2, 0), True),
        "same op_time and partition, higher offset": ((T0 + 100, 1, 11), True),
    }
    seed = [Event(k, *existing, "INSERT", f"old-{k}") for k in range(len(cases))]
    seed_batch = make_batch(seed)
    harness.writer.apply(seed_batch)

    incoming = [Event(k, *version, "UPDATE", f"new-{k}") for k, (version, _) in
                enumerate(cases.values())]
    batch = make_batch(incoming)
    result = harness.writer.apply(batch)

    applied = [k for k, (_, newer) in enumerate(cases.values()) if newer]
    assert (result.inserted, result.updated, result.deleted) == (0, len(applied), 0)
    assert result.skipped_stale == len(cases) - len(applied)
    state = harness.state()
    for k, name in enumerate(cases):
        expected = (state_row(incoming[k], batch.batch_id) if k in applied
                    else state_row(seed[k], seed_batch.batch_id))
        assert state[k] == expected, name


def test_tombstones(harness: Harness) -> None:
    a, b, c, d, e = 1, 2, 3, 4, 5
    first = harness.apply([
        Event(a, T0 + 10, 0, 0, "INSERT", "a"),
        Event(c, T0 + 10, 0, 1, "INSERT", "c"),
        Event(d, T0 + 10, 0, 2, "INSERT", "d"),
        # created and deleted within one batch: only the tombstone is written
        Event(e, T0 + 10, 0, 3, "INSERT", "e"),
        Event(e, T0 + 11, 0, 4, "DELETE", "e"),
    ])
    assert set(harness.live()) == {a, c, d}
    assert harness.state()[e]["is_deleted"] is True

    delete_c = Event(c, T0 + 20, 1, 1, "DELETE", "c")
    second_batch = make_batch([
        Event(a, T0 + 20, 1, 0, "DELETE"),
        Event(b, T0 + 20, 1, 2, "DELETE"),  # a DELETE before the profile was ever seen
        delete_c,
        Event(d, T0 + 20, 1, 3, "UPDATE", "d2"),
    ])
    second = harness.writer.apply(second_batch)
    assert (second.inserted, second.updated, second.deleted, second.skipped_stale) == (0, 1, 3, 0)
    assert set(harness.live()) == {d}
    state = harness.state()
    assert {k: state[k]["is_deleted"] for k in (a, b, c, d, e)} == {
        a: True, b: True, c: True, d: False, e: True,
    }
    assert state[b]["op_time"] == ts(T0 + 20)

    # Late or replayed events older than the DELETE never bring a profile back.
    third = harness.writer.apply(make_batch([
        Event(a, T0 + 15, 2, 0, "INSERT", "a-late"),
        Event(b, T0 + 5, 2, 1, "INSERT", "b-late"),
        delete_c,  # the DELETE redelivered
    ]))
    assert (third.inserted, third.updated, third.deleted, third.skipped_stale) == (0, 0, 0, 3)
    assert third.min_op_time is None
    assert third.max_op_time is None
    assert set(harness.live()) == {d}

    # A newer INSERT re-creates the profile; a newer DELETE of a tombstone moves its version.
    fourth_batch = make_batch([
        Event(a, T0 + 30, 0, 9, "INSERT", "a-again"),
        Event(c, T0 + 30, 0, 10, "DELETE"),
    ])
    fourth = harness.writer.apply(fourth_batch)
    assert (fourth.inserted, fourth.updated, fourth.deleted, fourth.skipped_stale) == (1, 0, 1, 0)
    live = harness.live()
    assert set(live) == {a, d}
    assert live[a]["goldtier_id"] == "a-again"
    assert harness.state()[c]["op_time"] == ts(T0 + 30)
    assert first.batch_id != fourth_batch.batch_id


def test_ledger_contents(harness: Harness) -> None:
    before = utcnow()
    first = harness.apply(
        [Event(1, T0 + 1, 0, 5), Event(2, T0 + 2, 0, 6), Event(1, T0 + 3, 1, 7, "UPDATE")],
        invalid=[(0, 8), (2, 3)],
    )
    replay = harness.apply([Event(1, T0 + 3, 1, 7, "UPDATE"), Event(2, T0 + 2, 0, 6)])
    mixed = harness.apply([Event(2, T0 + 4, 0, 9, "DELETE"), Event(3, T0 + 5, 1, 8)])
    after = utcnow()

    ledger = harness.ledger()
    assert [r["batch_id"] for r in ledger] == [first.batch_id, replay.batch_id, mixed.batch_id]
    counts = [
        tuple(r[n] for n in ("events_in", "invalid_events", "rows_out", "inserted", "updated",
                             "deleted", "skipped_stale"))
        for r in ledger
    ]
    assert counts == [(5, 2, 2, 2, 0, 0, 0), (2, 0, 2, 0, 0, 0, 2), (2, 0, 2, 1, 0, 1, 0)]
    assert [(r["min_op_time"], r["max_op_time"]) for r in ledger] == [
        (ts(T0 + 2), ts(T0 + 3)), (None, None), (ts(T0 + 4), ts(T0 + 5)),
    ]
    assert [json.loads(r["offsets"]) for r in ledger] == [
        [{"partition": 0, "first": 5, "next": 9}, {"partition": 1, "first": 7, "next": 8},
         {"partition": 2, "first": 3, "next": 4}],
        [{"partition": 0, "first": 6, "next": 7}, {"partition": 1, "first": 7, "next": 8}],
        [{"partition": 0, "first": 9, "next": 10}, {"partition": 1, "first": 8, "next": 9}],
    ]
    for row in ledger:
        assert (row["topic"], row["consumer_group"]) == (TOPIC, GROUP)
        assert row["started_at"] == STARTED_AT
        assert before - timedelta(seconds=1) <= row["committed_at"] <= after + timedelta(seconds=1)
        assert row["decode_ms"] == 7
        assert row["write_ms"] >= 0
    assert ledger[0]["committed_at"] <= ledger[1]["committed_at"] <= ledger[2]["committed_at"]


# -- full refresh: a table built under the rebuild names replaces the live one -------------------


def test_discard_drops_rebuild_leftovers_and_is_idempotent(harness: Harness) -> None:
    rebuild = rebuild_names(harness.writer.names)
    harness.writer.discard()  # nothing to drop yet
    harness.writer.prepare()
    builder = harness.new_writer(rebuild)
    builder.open()
    builder.apply(make_batch([Event(1, T0, 0, 0)]))
    builder.close()

    harness.writer.discard()
    harness.writer.discard()
    builder.open()  # re-created empty: the leftovers are gone
    assert harness.read(rebuild.state, STATE_COLUMNS, [KEY]) == []
    builder.close()


BUILT = (PartitionRange(0, 0, 5),)
"""The offsets the rebuild of the refresh tests read: partition 0, offsets 0-4."""


def rebuild_beside(harness: Harness) -> tuple[Batch, list[Event], Batch]:
    """Live rows inside ``BUILT`` (1 drifted: an old version; 2 as the rebuild has it) and
    outside it (4 live, 5 a tombstone, both applied after the plan's end); a rebuild of
    offsets 0-4 (1 newer, 2, 3 new)."""
    live = harness.apply([
        Event(1, T0, 0, 0, "INSERT", "old"), Event(2, T0, 0, 1, "INSERT", "two"),
        Event(4, T0 + 9, 0, 10, "INSERT", "after"), Event(5, T0 + 9, 0, 11, "DELETE"),
    ])
    harness.writer.prepare()
    builder = harness.new_writer(rebuild_names(harness.writer.names))
    builder.open()
    rebuilt_events = [Event(1, T0 + 5, 0, 2, "UPDATE", "new"), Event(2, T0, 0, 1, "INSERT", "two"),
                      Event(3, T0 + 5, 0, 3, "INSERT", "three")]
    rebuilt = make_batch(rebuilt_events)
    builder.apply(rebuilt)
    builder.close()
    return live, rebuilt_events, rebuilt


def test_level_merges_the_live_rows_outside_the_rebuilt_ranges(harness: Harness) -> None:
    live, rebuilt_events, rebuilt = rebuild_beside(harness)

    harness.writer.level(BUILT, into_live=False)
    harness.writer.level(BUILT, into_live=False)  # repeatable: the guard

    rebuild = rebuild_names(harness.writer.names)
    state = {r[KEY]: r for r in harness.read(rebuild.state, STATE_COLUMNS, [KEY])}
    after, gone = Event(4, T0 + 9, 0, 10, "INSERT", "after"), Event(5, T0 + 9, 0, 11, "DELETE")
    assert state == {
        **{e.key: state_row(e, rebuilt.batch_id) for e in rebuilt_events},
        4: state_row(after, live.batch_id), 5: state_row(gone, live.batch_id),  # tombstone too
    }


def test_refresh_swaps_in_the_level_rebuild_and_catches_raced_writes(harness: Harness) -> None:
    live, rebuilt_events, rebuilt = rebuild_beside(harness)
    harness.writer.level(BUILT, into_live=False)
    raced = harness.apply([Event(6, T0 + 20, 0, 12, "INSERT", "raced")])  # after the leveling

    harness.writer.swap_in(BUILT)
    harness.writer.level(BUILT, into_live=True)
    harness.writer.finish()

    after, gone = Event(4, T0 + 9, 0, 10, "INSERT", "after"), Event(5, T0 + 9, 0, 11, "DELETE")
    assert harness.state() == {
        **{e.key: state_row(e, rebuilt.batch_id) for e in rebuilt_events},
        4: state_row(after, live.batch_id), 5: state_row(gone, live.batch_id),
        6: state_row(Event(6, T0 + 20, 0, 12, "INSERT", "raced"), raced.batch_id),
    }
    assert set(harness.live()) == {1, 2, 3, 4, 6}
    assert {r["batch_id"] for r in harness.ledger()} == {
        live.batch_id, rebuilt.batch_id, raced.batch_id}
    harness.writer.finish()  # repeatable: the ledger copy adds nothing twice
    assert len(harness.ledger()) == 3
    harness.writer.apply(make_batch([Event(3, T0 + 30, 0, 13, "UPDATE", "later")]))
    assert harness.live()[3]["goldtier_id"] == "later"  # the swapped-in table is the live one


# -- failures -----------------------------------------------------------------------------------


def seed_then_change(harness: Harness) -> tuple[tuple[Any, ...], list[Event]]:
    harness.apply([Event(1, T0, 0, 0, "INSERT", "one"), Event(2, T0, 0, 1, "INSERT", "two")])
    change = [
        Event(1, T0 + 1, 0, 2, "UPDATE", "one-b"),
        Event(2, T0 + 1, 0, 3, "DELETE"),
        Event(3, T0 + 1, 0, 4, "INSERT", "three"),
    ]
    return harness.snapshot(), change


def assert_change_applied(harness: Harness) -> None:
    live = harness.live()
    assert set(live) == {1, 3}
    assert live[1]["goldtier_id"] == "one-b"
    assert len(harness.ledger()) == 2


@pytest.mark.parametrize(
    ("mode", "error"),
    [("transient", TransientWarehouseError), ("terminal", TerminalWarehouseError)],
)
def test_failure_after_merge_rolls_back(
    harness: Harness, mode: FaultMode, error: type[WarehouseError]
) -> None:
    before, change = seed_then_change(harness)
    harness.faults.mode = mode
    batch = make_batch(change)

    with pytest.raises(error, match="injected"):
        harness.writer.apply(batch)
    assert harness.snapshot() == before

    harness.writer.apply(batch)  # the fault plan is spent: the retry goes through
    assert_change_applied(harness)


def test_database_error_after_merge_rolls_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, change = seed_then_change(harness)
    missing = QualifiedName((*harness.writer.names.ledger.parts[:-1],
                             replace(harness.writer.names.ledger.name, name="no_such_ledger")))
    real_ledger_sql: Callable[[QualifiedName, Dialect], str] = harness.module.ledger_insert_sql
    monkeypatch.setattr(
        harness.module, "ledger_insert_sql", lambda _ledger, dialect: real_ledger_sql(missing,
                                                                                   dialect)
    )
    batch = make_batch(change)

    with pytest.raises(TerminalWarehouseError):
        harness.writer.apply(batch)
    assert harness.snapshot() == before

    monkeypatch.undo()
    harness.writer.apply(batch)
    assert_change_applied(harness)


def test_duplicate_keys_are_refused_before_staging(harness: Harness) -> None:
    before, _ = seed_then_change(harness)
    winners = [
        Winner(7, Version(T0, 0, 1), "INSERT", (7, None, None, None, None, None)),
        Winner(7, Version(T0, 0, 2), "UPDATE", (7, None, None, None, None, None)),
    ]
    batch = replace(make_batch([]), rows=build_staged(winners, "dup", SYNCED_AT_US))

    with pytest.raises(TerminalWarehouseError, match="distinct keys"):
        harness.writer.apply(batch)
    assert harness.snapshot() == before


# -- convergence ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """Distinct events of a few keys, and the batches their (re)deliveries were split into."""

    events: tuple[Event, ...]
    batches: tuple[tuple[Event, ...], ...]


TEXT = st.none() | st.text(alphabet="ab'\u00e9", max_size=3)
MICROS = st.none() | st.integers(0, 4_102_444_800_000_000)


@st.composite
def histories(draw: st.DrawFn) -> History:
    keys = draw(st.integers(1, 4))
    partitions = draw(st.integers(1, 3))
    next_offset = [0] * partitions
    events: list[Event] = []
    for _ in range(draw(st.integers(1, 24))):
        partition = draw(st.integers(0, partitions - 1))
        events.append(Event(
            key=draw(st.integers(0, keys - 1)),
            op_time=T0 + draw(st.integers(0, 6)),  # few distinct times: many ties
            partition=partition,
            offset=next_offset[partition],
            op_type=draw(st.sampled_from(sorted(OP_TYPES))),
            goldtier_id=draw(TEXT), cid=draw(TEXT), party_id=draw(TEXT),
            created_us=draw(MICROS), updated_us=draw(MICROS),
        ))
        next_offset[partition] += 1
    deliveries = list(draw(st.permutations(events)))
    for _ in range(draw(st.integers(0, 4))):  # redeliveries of single events, later on
        i = draw(st.integers(0, len(deliveries) - 1))
        deliveries.insert(draw(st.integers(i, len(deliveries))), deliveries[i])
    for _ in range(draw(st.integers(0, 2))):  # a range re-read after a restart
        start = draw(st.integers(0, len(deliveries) - 1))
        end = draw(st.integers(start + 1, len(deliveries)))
        deliveries.extend(deliveries[start:end])
    cuts = sorted(set(draw(st.lists(st.integers(1, len(deliveries)), max_size=4))))
    bounds = [0, *cuts, len(deliveries)]
    batches = tuple(tuple(deliveries[a:b]) for a, b in itertools.pairwise(bounds) if b > a)
    return History(tuple(events), batches)


def oracle(events: Sequence[Event]) -> dict[int, Event]:
    """Per key the event with the greatest version, computed without the reducer or SQL."""
    latest: dict[int, Event] = {}
    for e in events:
        if e.key not in latest or e.version > latest[e.key].version:
            latest[e.key] = e
    return latest


def test_convergence_property(harness: Harness) -> None:
    """Any history, batching, redelivery and replay converges to the oracle's table."""
    key_space = itertools.count(1)  # each example writes its own keys into the shared table

    @settings(
        max_examples=harness.examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(history=histories())
    def converges(history: History) -> None:
        base = next(key_space) * 1000

        def shift(e: Event) -> Event:
            return replace(e, key=base + e.key)

        for batch in history.batches:
            harness.writer.apply(make_batch([shift(e) for e in batch]))

        winners = {base + k: shift(e) for k, e in oracle(history.events).items()}
        in_range = range(base, base + 1000)
        live = {k: v for k, v in harness.live().items() if k in in_range}
        state = {k: v for k, v in harness.state().items() if k in in_range}
        assert live == {k: view_row(e) for k, e in winners.items() if e.op_type != "DELETE"}
        assert {k: (r["op_time"], r["src_partition"], r["src_offset"], r["is_deleted"])
                for k, r in state.items()} == {
            k: (ts(e.op_time), e.partition, e.offset, e.op_type == "DELETE")
            for k, e in winners.items()
        }

    converges()


# -- profile history ----------------------------------------------------------------------------


def history_row(interval: Interval[Event]) -> dict[str, Any]:
    """The history row of one oracle interval, without the per-write columns."""
    row = state_row(interval.payload, "")
    del row["batch_id"], row["synced_at"]
    return {
        **row, "valid_from": ts(interval.valid_from), "valid_to": ts(interval.valid_to),
        "is_current": interval.is_current,
    }


def expected_history(events: Sequence[Event]) -> dict[int, list[dict[str, Any]]]:
    built = build_history((e.key, *e.version, e.op_type, e) for e in events)
    return {key: [history_row(i) for i in intervals] for key, intervals in built.items()}


def written_history(
    harness: Harness, keys: range | None = None
) -> dict[int, list[dict[str, Any]]]:
    """The history table without the per-write columns (which batch, when)."""
    return {
        key: [{k: v for k, v in r.items() if k not in ("batch_id", "synced_at")} for r in rows]
        for key, rows in harness.history().items() if keys is None or key in keys
    }


def history_problems(harness: Harness) -> list[list[tuple[Any, ...]]]:
    """What the three history checks of ``kyc-sync check`` find (all empty: consistent)."""
    names, dialect = harness.writer.names, harness.dialect
    assert names.history is not None
    return [
        harness.writer.fetch(history_sql.intervals_sql(names.history, dialect)),
        harness.writer.fetch(history_sql.current_rows_sql(names.history, names.state, dialect)),
        harness.writer.fetch(history_sql.state_agreement_sql(
            names.history, names.state, dialect,
            state_columns(harness.writer.table_state().schema))),
    ]


def live_as_of(harness: Harness, moment_us: int, key: int | None = None) -> dict[int, int]:
    """The as-of query: key -> op_time (microseconds) of the version live at ``moment_us``."""
    names = harness.writer.names
    assert names.history is not None
    moment = ts(moment_us)
    sql = history_sql.as_of_sql(names.history, harness.dialect, (KEY, "op_time"),
                                by_key=key is not None)
    params: list[object] = [moment, moment] + ([] if key is None else [key])
    return {int(k): int((t - EPOCH) / timedelta(microseconds=1))
            for k, t in harness.writer.fetch(sql, params)}


def hour(hh: int, mm: int = 0) -> int:
    """2024-01-15 hh:mm UTC in microseconds, the seed's day."""
    return int((datetime(2024, 1, 15, hh, mm) - EPOCH) / timedelta(microseconds=1))


SEED_EVENTS = (
    Event(1, hour(10), 0, 0, "INSERT", "GT-0001-v1"),
    Event(1, hour(11, 30), 0, 1, "UPDATE", "GT-0001-v2"),
    Event(1, hour(14, 15), 0, 2, "UPDATE", "GT-0001-v3"),
    Event(2, hour(9, 30), 1, 0, "INSERT", "GT-0002-v1"),
    Event(2, hour(12, 45), 1, 1, "UPDATE", "GT-0002-v2"),
    Event(3, hour(8), 2, 0, "INSERT", "GT-0003-v1"),
    Event(4, hour(7), 2, 1, "INSERT", "GT-0004-v1"),
    Event(4, hour(13), 2, 2, "DELETE", "GT-0004-v1"),
)


def test_history_seed_scenario(history_harness: Harness) -> None:
    h = history_harness
    # Arrival order is not op_time order: the newest versions first, then the older ones.
    h.apply([SEED_EVENTS[i] for i in (2, 4, 7, 5)])
    h.apply([SEED_EVENTS[i] for i in (0, 6)])
    h.apply([SEED_EVENTS[i] for i in (1, 3, 2)])  # 2 again: a redelivery

    assert written_history(h) == expected_history(SEED_EVENTS)
    assert [len(rows) for rows in h.history().values()] == [3, 2, 1, 2]
    assert [r["is_deleted"] for r in h.history()[4]] == [False, True]
    assert live_as_of(h, hour(12)) == {1: hour(11, 30), 2: hour(9, 30), 3: hour(8), 4: hour(7)}
    assert live_as_of(h, hour(12), key=1) == {1: hour(11, 30)}
    assert live_as_of(h, hour(15)) == {1: hour(14, 15), 2: hour(12, 45), 3: hour(8)}
    assert live_as_of(h, hour(6)) == {}
    assert history_problems(h) == [[], [], []]


def test_history_late_event_splits_an_interval(history_harness: Harness) -> None:
    h = history_harness
    first, third = Event(1, T0 + 10, 0, 0, "INSERT", "a"), Event(1, T0 + 30, 0, 2, "UPDATE", "c")
    h.apply([first, third])
    assert [(r["valid_from"], r["valid_to"]) for r in h.history()[1]] == [
        (ts(T0 + 10), ts(T0 + 30)), (ts(T0 + 30), None)]

    late = Event(1, T0 + 20, 0, 1, "UPDATE", "b")
    h.apply([late])
    rows = h.history()[1]
    assert [(r["goldtier_id"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("a", ts(T0 + 10), ts(T0 + 20), False),
        ("b", ts(T0 + 20), ts(T0 + 30), False),
        ("c", ts(T0 + 30), None, True),
    ]
    assert h.state()[1]["goldtier_id"] == "c"  # the late event is stale for the state table
    # Ties on op_time: the later Kafka position is the later version; the earlier one's
    # interval is empty, so exactly one version is live at any instant.
    tie = Event(1, T0 + 30, 1, 0, "UPDATE", "c-tie")
    h.apply([tie])
    assert [(r["goldtier_id"], r["valid_to"]) for r in h.history()[1]][-2:] == [
        ("c", ts(T0 + 30)), ("c-tie", None)]
    assert live_as_of(h, T0 + 30) == {1: T0 + 30}
    assert history_problems(h) == [[], [], []]


def test_history_same_version_twice_adds_nothing(history_harness: Harness) -> None:
    h = history_harness
    events = [Event(1, T0 + 1, 0, 0, "INSERT", "a"), Event(1, T0 + 2, 0, 1, "UPDATE", "b")]
    h.apply(events + events)  # duplicates within a batch
    before = h.history()
    h.apply(events)  # a replay
    h.apply(events[:1])  # a redelivery of the older one alone
    assert h.history() == before
    assert len(before[1]) == 2


def test_history_delete_closes_and_a_newer_insert_reopens(history_harness: Harness) -> None:
    h = history_harness
    h.apply([Event(1, T0 + 1, 0, 0, "INSERT", "a")])
    h.apply([Event(1, T0 + 2, 0, 1, "DELETE")])
    rows = h.history()[1]
    assert [(r["op_type"], r["is_deleted"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("INSERT", False, ts(T0 + 2), False), ("DELETE", True, None, True)]
    assert live_as_of(h, T0 + 1) == {1: T0 + 1}
    assert live_as_of(h, T0 + 2) == {}

    h.apply([Event(1, T0 + 5, 0, 3, "INSERT", "again"), Event(1, T0 + 1, 0, 0, "INSERT", "a")])
    rows = h.history()[1]
    assert [(r["op_type"], r["valid_from"], r["valid_to"]) for r in rows] == [
        ("INSERT", ts(T0 + 1), ts(T0 + 2)), ("DELETE", ts(T0 + 2), ts(T0 + 5)),
        ("INSERT", ts(T0 + 5), None)]
    assert live_as_of(h, T0 + 3) == {}
    assert live_as_of(h, T0 + 6) == {1: T0 + 5}
    assert history_problems(h) == [[], [], []]


def test_history_starts_from_an_existing_state_table(history_harness: Harness) -> None:
    """History turned on for a table written without it (or off for a while): opening the
    writer makes each state version the current history row of its key."""
    h = history_harness
    h.apply([Event(1, T0 + 1, 0, 0, "INSERT", "a1"), Event(2, T0 + 1, 0, 1, "INSERT", "b1")])
    names = h.writer.names
    without = h.new_writer(replace(names, history=None))
    without.open()
    without.apply(make_batch([Event(1, T0 + 2, 0, 2, "UPDATE", "a2"),
                              Event(1, T0 + 3, 0, 3, "UPDATE", "a3"),
                              Event(3, T0 + 3, 0, 4, "DELETE")]))
    without.close()
    assert history_problems(h) != [[], [], []]  # history misses what was written without it

    h.writer.close()
    h.writer.open()
    h.writer.open()  # idempotent
    rows = written_history(h)
    assert [(r["goldtier_id"], r["valid_to"], r["is_current"]) for r in rows[1]] == [
        ("a1", ts(T0 + 3), False), ("a3", None, True)]  # a2 was never seen by history
    assert [(r["op_type"], r["is_current"]) for r in rows[3]] == [("DELETE", True)]
    assert len(rows[2]) == 1
    assert history_problems(h) == [[], [], []]


def test_history_rolls_back_with_the_flush(history_harness: Harness) -> None:
    h = history_harness
    before, change = seed_then_change(h)
    h.faults.mode = "transient"
    batch = h.batch(change)
    with pytest.raises(TransientWarehouseError, match="injected"):
        h.writer.apply(batch)
    assert h.snapshot() == before

    h.writer.apply(batch)
    assert len(h.history()[1]) == 2
    assert history_problems(h) == [[], [], []]


def test_history_needs_the_batch_versions(history_harness: Harness) -> None:
    h = history_harness
    with pytest.raises(TerminalWarehouseError, match="carries no versions"):
        h.writer.apply(make_batch([Event(1, T0, 0, 0)]))


def test_history_refresh_levels_swaps_and_catches_up(history_harness: Harness) -> None:
    """A full refresh beside the running group: the rebuilt history gets the live versions
    outside the rebuilt offsets, with the intervals of their profiles recomputed, is swapped in
    with the state table, then catches the writes that raced the swap."""
    h = history_harness
    inside = [Event(1, T0, 0, 0, "INSERT", "old"), Event(2, T0, 0, 1, "INSERT", "drifted")]
    outside = [Event(1, T0 + 9, 0, 10, "UPDATE", "after"), Event(4, T0 + 9, 0, 11, "DELETE")]
    h.apply(inside + outside)
    h.writer.prepare()
    rebuild = rebuild_names(h.writer.names)
    assert rebuild.history is not None
    builder = h.new_writer(rebuild)
    builder.open()
    rebuilt = [Event(1, T0, 0, 0, "INSERT", "old"), Event(1, T0 + 5, 0, 2, "UPDATE", "new"),
               Event(3, T0 + 5, 0, 3, "INSERT", "three")]
    builder.apply(make_batch(rebuilt, history=True))
    builder.close()

    h.writer.level(BUILT, into_live=False)
    h.writer.level(BUILT, into_live=False)  # repeatable

    rows = h.read(rebuild.history, HISTORY_COLUMNS, [KEY, "op_time", "src_partition"])
    levelled: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        levelled.setdefault(row[KEY], []).append(
            {k: v for k, v in row.items() if k not in ("batch_id", "synced_at")})
    assert levelled == expected_history(rebuilt + outside)  # 2 drifted: not in the topic

    raced = Event(1, T0 + 20, 0, 12, "UPDATE", "raced")
    h.apply([raced])
    h.writer.swap_in(BUILT)
    h.writer.level(BUILT, into_live=True)
    h.writer.finish()

    assert written_history(h) == expected_history([*rebuilt, *outside, raced])
    assert history_problems(h) == [[], [], []]
    assert rebuild.history.name.name not in {
        r[0] for r in h.writer.fetch("SELECT table_name FROM information_schema.tables")}


def test_history_convergence_property(history_harness: Harness) -> None:
    """Any history, batching, redelivery and replay leaves the history table equal to the
    oracle's intervals (and the state table equal to its latest versions)."""
    h = history_harness
    key_space = itertools.count(1)

    @settings(
        max_examples=h.examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(history=histories())
    def converges(history: History) -> None:
        base = next(key_space) * 1000

        def shift(e: Event) -> Event:
            return replace(e, key=base + e.key)

        for batch in history.batches:
            h.apply([shift(e) for e in batch])

        in_range = range(base, base + 1000)
        assert written_history(h, in_range) == expected_history(
            [shift(e) for e in history.events])
        winners = {base + k: shift(e) for k, e in oracle(history.events).items()}
        live = {k: v for k, v in h.live().items() if k in in_range}
        assert live == {k: view_row(e) for k, e in winners.items() if e.op_type != "DELETE"}
        moment = T0 + 3
        expected_live = as_of(build_history(
            (e.key, *e.version, e.op_type, e) for e in map(shift, history.events)
        ), moment)
        assert {k: t for k, t in live_as_of(h, moment).items() if k in in_range} == {
            k: i.valid_from for k, i in expected_live.items()}

    converges()
    assert history_problems(h) == [[], [], []]
