"""Unit tests of ``check``: the pure evaluation of each check (tables of cases) and
``run_checks`` on a DuckDB file written by the real writer. No network."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from consumer.ops.checks import (
    CheckResult,
    freshness,
    history_current,
    history_intervals,
    history_lacks,
    history_state,
    not_null,
    render,
    run_checks,
    to_json,
    unique_key,
)
from consumer.ops.lag import PartitionLag
from consumer.ops.ledger import LastBatch
from consumer.ops.offsets import PartitionOffsets
from schemas.columns import BASE_SCHEMA, Column, ColumnChange, TableSchema
from tests.oracles.reducer import ReferenceReducer
from tests.oracles.staging import Row, build_staged
from warehouse.base import Batch
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.tables import TableNames

NOW = datetime(2027, 1, 15, 12, 0, 0)
T0 = 1_700_000_000_000_000
NOT_NULL = ("kyc_profile_id", "op_time")


NOW_MS = int(NOW.replace(tzinfo=UTC).timestamp() * 1000)


def last(minutes_ago: float) -> LastBatch:
    return LastBatch("b", NOW - timedelta(minutes=minutes_ago), None, 1)


def waiting(partition: int, lag: int, minutes_old: float | None) -> PartitionLag:
    """A partition with ``lag`` unapplied events, the oldest written ``minutes_old`` ago."""
    stamp = None if minutes_old is None else NOW_MS - int(minutes_old * 60_000)
    return PartitionLag(PartitionOffsets(partition, 100, 0, 100 + lag), stamp)


@pytest.mark.parametrize(
    ("partitions", "max_age_s", "ok", "reason"),
    [
        # A quiet topic is fresh, however old the last batch (and its 2024 op_times) are.
        ([waiting(0, 0, None), waiting(1, 0, None)], 900, True,
         "no event waits to be applied (max 15m00s); last batch 2026-12-15T12:00:00Z"),
        ([waiting(0, 3, 1), waiting(1, 0, None)], 900, True,
         "the oldest unapplied event (partition 0, 3 event(s) behind) is 1m00s old (max 15m00s)"
         "; last batch 2026-12-15T12:00:00Z"),
        ([waiting(0, 3, 1), waiting(1, 8, 16)], 900, False,
         "the oldest unapplied event (partition 1, 8 event(s) behind) is 16m00s old > 15m00s: "
         "the sync is not keeping up; last batch 2026-12-15T12:00:00Z"),
        ([waiting(0, 3, None)], 900, False,
         "age of the oldest unapplied event unknown on partition(s) [0] (no message timestamp "
         "read)"),
        (None, 900, False, "cannot read the group's lag from Kafka: broker down"),
    ],
)
def test_freshness(
    partitions: list[PartitionLag] | None, max_age_s: float, ok: bool, reason: str
) -> None:
    result = freshness(partitions, NOW_MS, max_age_s, last(60 * 24 * 31), "broker down")
    assert result == CheckResult("freshness", ok, reason)


@pytest.mark.parametrize(
    ("rows", "ok", "reason"),
    [
        ([], True, "kyc_profile_id is unique"),
        ([(7, 2, 1)], False, "1 kyc_profile_id value(s) appear more than once (e.g. 7 x2)"),
        ([(1, 2, 9), (5, 3, 9)], False,
         "9 kyc_profile_id value(s) appear more than once (e.g. 1 x2, 5 x3, ...)"),
    ],
)
def test_unique_key(rows: list[tuple[int, int, int]], ok: bool, reason: str) -> None:
    assert unique_key(rows) == CheckResult("unique_key", ok, reason)


@pytest.mark.parametrize(
    ("row", "ok", "reason"),
    [
        ((10, 0, 0), True, "kyc_profile_id, op_time never null (10 rows)"),
        ((0, 0, 0), True, "kyc_profile_id, op_time never null (0 rows)"),
        ((10, 1, 0), False, "kyc_profile_id is null in 1 of 10 row(s)"),
        ((10, 2, 3), False,
         "kyc_profile_id is null in 2 of 10 row(s); op_time is null in 3 of 10 row(s)"),
    ],
)
def test_not_null(row: tuple[int, ...], ok: bool, reason: str) -> None:
    assert not_null(NOT_NULL, row) == CheckResult("not_null", ok, reason)


def test_output() -> None:
    results = [CheckResult("freshness", True, "fine"), CheckResult("unique_key", False, "dup")]
    assert render(results).splitlines() == [
        "ok   freshness: fine", "FAIL unique_key: dup", "1 of 2 check(s) failed",
    ]
    assert to_json(results) == {"ok": False, "checks": [
        {"name": "freshness", "ok": True, "reason": "fine"},
        {"name": "unique_key", "ok": False, "reason": "dup"},
    ]}
    assert render(results[:1]).endswith("all checks passed")


# --------------------------------------------------------------------------- on DuckDB


def names() -> TableNames:
    return TableNames(
        state=QualifiedName.of("main", "kyc_profile_state"),
        current=QualifiedName.of("main", "kyc_profile_current"),
        ledger=QualifiedName.of("main", "kyc_sync_ledger"),
    )


@pytest.fixture
def writer(tmp_path: Path) -> DuckDBWarehouse:
    """Profiles 1-3 live, 4 deleted, applied by the real writer for topic ``audit``."""
    warehouse = DuckDBWarehouse(str(tmp_path / "kyc.duckdb"), names())
    warehouse.open()
    reducer: ReferenceReducer[Row] = ReferenceReducer()
    for offset, (key, op) in enumerate([(1, "INSERT"), (2, "INSERT"), (3, "INSERT"),
                                        (4, "DELETE")]):
        reducer.add(key, T0 + offset, 0, offset, op, (key, f"GT-{key}", None, None, None, None))
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    warehouse.apply(Batch(batch_id, "audit", "g", build_staged(reduced.winners, batch_id, T0),
                          reduced.ranges, reduced.events, 0, NOW))
    return warehouse


def checks(writer: DuckDBWarehouse, max_age_s: float = 900, topic: str = "audit",
           lag: list[PartitionLag] | None = None) -> dict[str, CheckResult]:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    partitions = tuple(lag if lag is not None else [waiting(0, 0, None)])
    return {r.name: r for r in run_checks(writer, "duckdb", topic, NOT_NULL, max_age_s,
                                          (partitions, now_ms, None))}


def corrupt(writer: DuckDBWarehouse, *statements: str) -> None:
    con = duckdb.connect(writer.path)
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def test_fresh_data_passes(writer: DuckDBWarehouse) -> None:
    results = checks(writer)
    assert all(r.ok for r in results.values()), results
    assert results["not_null"].reason == "kyc_profile_id, op_time never null (3 rows)"


def test_an_old_last_batch_on_a_quiet_topic_is_fresh(writer: DuckDBWarehouse) -> None:
    corrupt(writer, "UPDATE kyc_sync_ledger SET committed_at = committed_at - INTERVAL 2 HOUR")
    assert checks(writer)["freshness"].ok


def test_a_waiting_event_fails_freshness_only(writer: DuckDBWarehouse) -> None:
    stuck = PartitionLag(PartitionOffsets(0, 4, 0, 9),
                         int(datetime.now(UTC).timestamp() * 1000) - 20 * 60_000)
    results = checks(writer, lag=[stuck])
    assert not results["freshness"].ok
    assert "is 20m00s old > 15m00s" in results["freshness"].reason
    assert results["unique_key"].ok
    assert results["not_null"].ok


def test_duplicated_key_fails_unique(writer: DuckDBWarehouse) -> None:
    corrupt(writer, "INSERT INTO kyc_profile_state SELECT * FROM kyc_profile_state "
                    "WHERE kyc_profile_id = 2")
    results = checks(writer)
    assert results["unique_key"] == CheckResult(
        "unique_key", False, "1 kyc_profile_id value(s) appear more than once (e.g. 2 x2)")
    assert results["freshness"].ok
    assert results["not_null"].ok


def test_null_key_fails_not_null(writer: DuckDBWarehouse) -> None:
    corrupt(writer,
            "ALTER TABLE kyc_profile_state ALTER COLUMN kyc_profile_id DROP NOT NULL",
            "UPDATE kyc_profile_state SET kyc_profile_id = NULL WHERE kyc_profile_id = 3")
    results = checks(writer)
    assert results["not_null"] == CheckResult(
        "not_null", False, "kyc_profile_id is null in 1 of 3 row(s)")


def test_unreadable_warehouse_fails_the_data_checks(tmp_path: Path) -> None:
    missing = DuckDBWarehouse(str(tmp_path / "absent.duckdb"), names())
    results = checks(missing)
    assert [r.ok for r in results.values()] == [True, False, False]  # freshness is Kafka's
    assert all(r.reason.startswith("cannot read the warehouse:")
               for r in list(results.values())[1:])


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize(
    ("check", "rows", "ok", "reason"),
    [
        (history_intervals, [], True,
         "each profile's intervals follow one another, no overlap, no gap"),
        (history_intervals, [(3, 2, 1)], False,
         "overlapping or broken intervals in 1 profile(s) (e.g. 3: 2 row(s))"),
        (history_current, [], True, "every profile ever seen has exactly one current history row"),
        (history_current, [(2, 0, 7), (5, 2, 7)], False,
         "not exactly one current history row in 7 profile(s) (e.g. 2: 0 current, 5: 2 current, "
         "...)"),
        (history_state, [], True, "current history rows agree with the state table"),
        (history_state, [(1, 2), (4, 2)], False,
         "the current history row differs from the state row in 2 profile(s) (e.g. 1, 4)"),
    ],
)
def test_history_checks(check: Callable[[list[tuple[int, ...]]], CheckResult],
                        rows: list[tuple[int, ...]], ok: bool, reason: str) -> None:
    result = check(rows)
    assert (result.ok, result.reason) == (ok, reason)


@pytest.fixture
def history_writer(tmp_path: Path) -> DuckDBWarehouse:
    """Profile 1 in three versions, 2 inserted then deleted, with history on."""
    warehouse = DuckDBWarehouse(str(tmp_path / "kyc.duckdb"), replace(
        names(), history=QualifiedName.of("main", "kyc_profile_history")))
    warehouse.open()
    reducer: ReferenceReducer[Row] = ReferenceReducer(keep_versions=True)
    for offset, (key, op) in enumerate([(1, "INSERT"), (1, "UPDATE"), (1, "UPDATE"),
                                        (2, "INSERT"), (2, "DELETE")]):
        reducer.add(key, T0 + offset, 0, offset, op, (key, f"GT-{offset}", None, None, None, None))
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    warehouse.apply(Batch(batch_id, "audit", "g", build_staged(reduced.winners, batch_id, T0),
                          reduced.ranges, reduced.events, 0, NOW,
                          history=build_staged(reduced.versions, batch_id, T0)))
    return warehouse


def test_history_checks_run_when_history_is_on(
    writer: DuckDBWarehouse, history_writer: DuckDBWarehouse
) -> None:
    assert "history_intervals" not in checks(writer)
    results = checks(history_writer)
    assert list(results) == ["freshness", "unique_key", "not_null", "history_intervals",
                             "history_current", "history_state"]
    assert all(r.ok for r in results.values()), results

    corrupt(history_writer,
            "UPDATE kyc_profile_history SET is_current = TRUE WHERE kyc_profile_id = 1",
            "UPDATE kyc_profile_state SET goldtier_id = 'drift' WHERE kyc_profile_id = 2")
    results = checks(history_writer)
    assert [r.ok for r in results.values()] == [True, True, True, False, False, False]
    assert results["history_intervals"].reason == (
        "overlapping or broken intervals in 1 profile(s) (e.g. 1: 2 row(s))")
    assert results["history_current"].reason == (
        "not exactly one current history row in 1 profile(s) (e.g. 1: 3 current)")
    assert results["history_state"].reason == (
        "the current history row differs from the state row in 2 profile(s) (e.g. 1, 2)")


def test_history_state_compares_the_columns_the_state_table_has_now(
    history_writer: DuckDBWarehouse,
) -> None:
    """A column added upstream: ``history_state`` compares it too (a drift in it alone fails
    the check); a state column the history table lacks is named, not a query error."""
    schema = BASE_SCHEMA.evolved([ColumnChange(Column("risk_rating", "text"), "add", "v2")])
    reducer: ReferenceReducer[Row] = ReferenceReducer(keep_versions=True)
    reducer.add(1, T0 + 10, 0, 10, "UPDATE", (1, "GT-9", None, None, None, None, "high"))
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    history_writer.apply(Batch(
        batch_id, "audit", "g", build_staged(reduced.winners, batch_id, T0, schema),
        reduced.ranges, reduced.events, 0, NOW, schema=schema,
        history=build_staged(reduced.versions, batch_id, T0, schema)))
    assert checks(history_writer)["history_state"].ok

    corrupt(history_writer, "UPDATE kyc_profile_state SET risk_rating = 'low'")
    assert checks(history_writer)["history_state"].reason == (
        "the current history row differs from the state row in 2 profile(s) (e.g. 1, 2)")

    corrupt(history_writer, "ALTER TABLE kyc_profile_history DROP COLUMN risk_rating")
    assert checks(history_writer)["history_state"] == CheckResult(
        "history_state", False,
        "the history table lacks column(s) risk_rating of the state table (added by the next "
        "flush, or when kyc-sync starts with history on)")


@pytest.mark.parametrize(("state", "history", "expected"), [
    (("kyc_profile_id", "a"), ("kyc_profile_id", "a", "b"), None),
    (("kyc_profile_id", "a", "B"), ("kyc_profile_id", "A"), "B"),
    (("kyc_profile_id", "a", "b"), ("kyc_profile_id",), "a, b"),
])
def test_history_lacks(
    state: tuple[str, ...], history: tuple[str, ...], expected: str | None
) -> None:
    def schema(names: tuple[str, ...]) -> TableSchema:
        return TableSchema(tuple(Column(n, "text") for n in names))

    found = history_lacks(schema(state), schema(history))
    assert found == (None if expected is None else
                     f"the history table lacks column(s) {expected} of the state table (added "
                     "by the next flush, or when kyc-sync starts with history on)")
