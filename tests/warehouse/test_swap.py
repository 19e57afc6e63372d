"""The full-refresh SQL (``warehouse.swap``) and the DuckDB writer's refresh steps: the live
rows outside the rebuilt ranges are brought into the rebuild, the rebuilt table replaces the live
one in one transaction, the view keeps its name, the rebuild's ledger rows join the live ledger,
nothing of the rebuild is left; a failing swap changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import sqlglot

from batcher.ranges import PartitionRange
from schemas.columns import BASE_SCHEMA
from tests.oracles.reducer import ReferenceReducer
from tests.oracles.staging import Row, build_staged
from warehouse.base import Batch, Inspector, Refresher
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.errors import WarehouseError
from warehouse.identifiers import QualifiedName
from warehouse.swap import (
    discard_statements,
    exchange_statements,
    finish_statements,
    level_statements,
    outside_sql,
    rebuild_names,
    swap_tables,
)
from warehouse.tables import Dialect, TableNames

T0 = 1_700_000_000_000_000

LIVE_OBJECTS = {"kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger"}
"""The live objects kyc-sync creates (the rebuild's are gone once a refresh ends)."""


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


BUILT = (PartitionRange(0, 0, 10), PartitionRange(2, 4, 9))


@pytest.mark.parametrize("dialect", ["duckdb", "snowflake"])
def test_statements_parse(dialect: Dialect) -> None:
    live = names("db", "audit", upper=dialect == "snowflake")
    leveled = [sql for into in (False, True)
               for sql, _ in level_statements(live, BUILT, dialect, into_live=into)]
    for sql in [*discard_statements(live), *leveled, *exchange_statements(live, dialect),
                *finish_statements(live, dialect)]:
        assert sqlglot.parse_one(sql, read=dialect) is not None, sql


def test_outside_binds_each_range_and_formats_no_value_in() -> None:
    live = names("main")
    columns = swap_tables(live)[0].columns_of(BASE_SCHEMA)
    relation, params = outside_sql(live.state, columns, BUILT, "duckdb")
    assert params == (0, 0, 10, 2, 4, 9)
    assert relation.count("?") == 6
    assert "10" not in relation
    everything, none = outside_sql(live.state, columns, (), "duckdb")
    assert "WHERE" not in everything
    assert none == ()


def test_level_reads_the_other_copy() -> None:
    live = names("main")
    into_rebuild = level_statements(live, BUILT, "duckdb", into_live=False)
    into_live = level_statements(live, BUILT, "duckdb", into_live=True)
    assert [s.split("\n")[0] for s, _ in into_rebuild] == [
        'DELETE FROM "main"."kyc_profile_state__rebuild" AS t',
        'INSERT INTO "main"."kyc_profile_state__rebuild" ("kyc_profile_id", "goldtier_id", '
        '"cid", "party_id", "created_date", "updated_date", "op_type", "op_time", '
        '"src_partition", "src_offset", "is_deleted", "batch_id", "synced_at")',
    ]
    assert all('FROM "main"."kyc_profile_state" AS r' in s for s, _ in into_rebuild)
    assert all('FROM "main"."kyc_profile_state__rebuild" AS r' in s for s, _ in into_live)


def test_snowflake_swaps_with_one_statement() -> None:
    live = names("db", "audit", upper=True)
    assert exchange_statements(live, "snowflake") == [
        'ALTER TABLE "DB"."AUDIT"."KYC_PROFILE_STATE" SWAP WITH '
        '"DB"."AUDIT"."KYC_PROFILE_STATE__REBUILD"'
    ]


def test_swap_needs_one_schema() -> None:
    live = TableNames(QualifiedName.of("main", "kyc_profile_state"),
                      QualifiedName.of("main", "kyc_profile_current"),
                      QualifiedName.of("other", "kyc_sync_ledger"))
    with pytest.raises(ValueError, match="schema"):
        swap_tables(live)


def test_duckdb_writer_is_an_inspector_and_a_refresher(tmp_path: Path) -> None:
    writer = DuckDBWarehouse(str(tmp_path / "kyc.duckdb"), names("main"))
    assert isinstance(writer, Inspector)
    assert isinstance(writer, Refresher)


def test_duckdb_swap_replaces_the_table_in_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    live = DuckDBWarehouse(str(db), names("main"))
    live.open()
    live.apply(batch([(1, 10, "INSERT", "old-1"), (2, 10, "INSERT", "drifted")]))
    live.prepare()
    rebuild = DuckDBWarehouse(str(db), rebuild_names(live.names))
    rebuild.apply(batch([(1, 10, "INSERT", "old-1"), (1, 20, "UPDATE", "new-1")], "g.rb"))
    rebuild.apply(batch([(3, 30, "INSERT", "new-3"), (2, 40, "DELETE", "gone")], "g.rb"))
    assert live_rows(db) == {1: "old-1", 2: "drifted"}  # the rebuild is invisible so far
    read = (PartitionRange(0, 0, 2),)  # what the rebuild read: every live row comes from it

    live.swap_in(read)
    live.finish()

    assert live_rows(db) == {1: "new-1", 3: "new-3"}
    assert tables(db) == LIVE_OBJECTS
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
    live.prepare()
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE kyc_profile_state__rebuild DROP COLUMN synced_at")  # leveling fails
    con.close()

    with pytest.raises(WarehouseError):
        live.swap_in((PartitionRange(0, 0, 1),))

    assert live_rows(db) == {1: "kept"}
    assert {"kyc_profile_state", "kyc_profile_state__rebuild"} <= tables(db)


def test_duckdb_discard_drops_leftovers_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    live = DuckDBWarehouse(str(db), names("main"))
    live.open()
    live.prepare()
    assert len(tables(db)) == 6

    live.discard()
    live.discard()

    assert tables(db) == LIVE_OBJECTS
