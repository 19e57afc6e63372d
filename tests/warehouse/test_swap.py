"""The full-refresh SQL (``warehouse.swap``) and the DuckDB writer's ``discard``/``swap_in``:
the rebuilt table replaces the live one in one transaction, the view keeps its name, the
rebuild's ledger rows join the live ledger, nothing of the rebuild is left; a failing swap
changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import sqlglot

from tests.oracles.reducer import ReferenceReducer
from tests.oracles.staging import Row, build_staged
from warehouse.base import Batch, Inspector, Refresher
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.errors import WarehouseError
from warehouse.identifiers import QualifiedName
from warehouse.swap import discard_statements, rebuild_names, swap_statements
from warehouse.tables import Dialect, TableNames

T0 = 1_700_000_000_000_000


def names(*prefix: str, upper: bool = False) -> TableNames:
    return TableNames(
        state=QualifiedName.of(*prefix, "kyc_profile_state", upper=upper),
        current=QualifiedName.of(*prefix, "kyc_profile_current", upper=upper),
        ledger=QualifiedName.of(*prefix, "kyc_sync_ledger", upper=upper),
    )


def batch(events: Sequence[tuple[int, int, str, str]], group: str = "g") -> Batch:
    """``events``: (key, op_time offset in seconds, op_type, goldtier_id)."""
    reducer: ReferenceReducer[Row] = ReferenceReducer()
    for offset, (key, seconds, op, gold) in enumerate(events):
        op_time = T0 + seconds * 1_000_000
        reducer.add(key, op_time, 0, offset, op, (key, gold, None, None, None, None))
    reduced = reducer.drain()
    batch_id = uuid.uuid4().hex
    return Batch(batch_id, "audit", group, build_staged(reduced.winners, batch_id, T0),
                 reduced.ranges, reduced.events, reduced.invalid, datetime(2027, 1, 1))


def live_rows(db: Path) -> dict[int, str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT kyc_profile_id, goldtier_id FROM kyc_profile_current")
        return dict(rows.fetchall())
    finally:
        con.close()


def tables(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        return {r[0] for r in rows}
    finally:
        con.close()


def test_rebuild_names_keep_schema_and_case() -> None:
    rebuilt = rebuild_names(names("db", "audit", upper=True))
    assert rebuilt.state.sql() == '"DB"."AUDIT"."KYC_PROFILE_STATE__REBUILD"'
    assert rebuilt.current.sql() == '"DB"."AUDIT"."KYC_PROFILE_CURRENT__REBUILD"'
    assert rebuilt.ledger.sql() == '"DB"."AUDIT"."KYC_SYNC_LEDGER__REBUILD"'


@pytest.mark.parametrize("dialect", ["duckdb", "snowflake"])
def test_statements_parse(dialect: Dialect) -> None:
    live = names("db", "audit", upper=dialect == "snowflake")
    rebuilt = rebuild_names(live)
    for sql in [*discard_statements(rebuilt), *swap_statements(live, rebuilt, dialect)]:
        assert sqlglot.parse_one(sql, read=dialect) is not None, sql


def test_snowflake_swaps_with_one_statement() -> None:
    live = names("db", "audit", upper=True)
    statements = swap_statements(live, rebuild_names(live), "snowflake")
    assert (
        'ALTER TABLE "DB"."AUDIT"."KYC_PROFILE_STATE" SWAP WITH '
        '"DB"."AUDIT"."KYC_PROFILE_STATE__REBUILD"'
    ) in statements


def test_swap_needs_one_schema() -> None:
    live = names("main")
    elsewhere = rebuild_names(names("other"))
    with pytest.raises(ValueError, match="schema"):
        swap_statements(live, elsewhere, "duckdb")


def test_duckdb_writer_is_an_inspector_and_a_refresher(tmp_path: Path) -> None:
    writer = DuckDBWarehouse(str(tmp_path / "kyc.duckdb"), names("main"))
    assert isinstance(writer, Inspector)
    assert isinstance(writer, Refresher)


def test_duckdb_swap_replaces_the_table_in_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    live = DuckDBWarehouse(str(db), names("main"))
    live.open()
    live.apply(batch([(1, 10, "INSERT", "old-1"), (2, 10, "INSERT", "drifted")]))
    rebuilt_names = rebuild_names(live.names)
    rebuild = DuckDBWarehouse(str(db), rebuilt_names)
    rebuild.open()
    rebuild.apply(batch([(1, 10, "INSERT", "old-1"), (1, 20, "UPDATE", "new-1")], "g.rb"))
    rebuild.apply(batch([(3, 30, "INSERT", "new-3"), (2, 40, "DELETE", "gone")], "g.rb"))
    assert live_rows(db) == {1: "old-1", 2: "drifted"}  # the rebuild is invisible so far

    live.swap_in(rebuilt_names)

    assert live_rows(db) == {1: "new-1", 3: "new-3"}
    assert tables(db) == {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger"}
    ledger = live.fetch("SELECT consumer_group FROM kyc_sync_ledger ORDER BY committed_at")
    assert [g for (g,) in ledger] == ["g", "g.rb", "g.rb"]
    # The swapped-in table is the live one from now on: the writer keeps applying to it.
    live.apply(batch([(3, 50, "UPDATE", "after")]))
    assert live_rows(db) == {1: "new-1", 3: "after"}


def test_duckdb_failed_swap_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    live = DuckDBWarehouse(str(db), names("main"))
    live.open()
    live.apply(batch([(1, 10, "INSERT", "kept")]))
    rebuilt_names = rebuild_names(live.names)
    rebuild = DuckDBWarehouse(str(db), rebuilt_names)
    rebuild.open()
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE kyc_sync_ledger__rebuild")  # the ledger copy, late in it, fails
    con.close()

    with pytest.raises(WarehouseError):
        live.swap_in(rebuilt_names)

    assert live_rows(db) == {1: "kept"}
    assert {"kyc_profile_state", "kyc_profile_state__rebuild"} <= tables(db)


def test_duckdb_discard_drops_leftovers_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    live = DuckDBWarehouse(str(db), names("main"))
    live.open()
    rebuilt_names = rebuild_names(live.names)
    DuckDBWarehouse(str(db), rebuilt_names).open()
    assert len(tables(db)) == 6

    live.discard(rebuilt_names)
    live.discard(rebuilt_names)

    assert tables(db) == {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger"}
