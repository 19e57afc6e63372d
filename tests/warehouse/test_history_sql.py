"""Unit tests of the history SQL: valid in both dialects, names quoted, columns derived from the
state table's, values bound; and the check queries finding each kind of broken history (DuckDB,
in memory). The writers' behaviour is in ``test_contract`` (history_harness)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import duckdb
import pytest
from sqlglot import exp

from batcher.ranges import PartitionRange
from schemas.columns import Column
from tests.warehouse.test_sql import STAGED, in_case, object_identifiers, parse
from warehouse import history_sql
from warehouse.history_sql import as_of_columns
from warehouse.identifiers import QualifiedName
from warehouse.swap import (
    discard_statements,
    exchange_statements,
    level_statements,
    rebuild_names,
    swap_tables,
)
from warehouse.tables import (
    HISTORY_COLUMNS,
    INTERVAL_COLUMNS,
    STATE_COLUMNS,
    Dialect,
    TableNames,
    create_table_sql,
    ddl,
    history_columns,
)

DIALECTS: tuple[Dialect, ...] = ("duckdb", "snowflake")


def names(dialect: Dialect, history: bool = True) -> TableNames:
    upper = dialect == "snowflake"
    state, current, ledger, table = (
        QualifiedName.of("kyc_db", "audit", t, upper=upper)
        for t in ("kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger",
                  "kyc_profile_history"))
    return TableNames(state, current, ledger, history=table if history else None)


def hist(d: Dialect) -> QualifiedName:
    found = names(d).history
    assert found is not None
    return found


COLS = STATE_COLUMNS
AS_OF = as_of_columns(STATE_COLUMNS)
BUILDERS: dict[str, tuple[Callable[[Dialect], str], type[exp.Expression]]] = {
    "insert_versions": (lambda d: history_sql.insert_versions_sql(hist(d), STAGED, d, COLS),
                        exp.Insert),
    "recompute": (lambda d: history_sql.recompute_intervals_sql(hist(d), STAGED, d), exp.Update),
    "seed_close": (lambda d: history_sql.seed_statements(hist(d), names(d).state, d, COLS)[0],
                   exp.Update),
    "seed_insert": (lambda d: history_sql.seed_statements(hist(d), names(d).state, d, COLS)[1],
                    exp.Insert),
    "as_of": (lambda d: history_sql.as_of_sql(hist(d), d, AS_OF, by_key=True), exp.Select),
    "intervals": (lambda d: history_sql.intervals_sql(hist(d), d), exp.Select),
    "current_rows": (lambda d: history_sql.current_rows_sql(hist(d), names(d).state, d),
                     exp.Select),
    "state_agreement": (
        lambda d: history_sql.state_agreement_sql(hist(d), names(d).state, d, COLS), exp.Select),
    "ddl": (lambda d: ddl(names(d), d)[-1], exp.Create),
}
STATEMENTS = [pytest.param(d, b, id=f"{d}-{b}") for d in DIALECTS for b in BUILDERS]


@pytest.mark.parametrize(("dialect", "builder"), STATEMENTS)
def test_statement_parses_with_quoted_names(dialect: Dialect, builder: str) -> None:
    build, kind = BUILDERS[builder]
    tree = parse(build(dialect), dialect)
    assert isinstance(tree, kind)
    idents = object_identifiers(tree)
    assert idents
    for ident in idents:
        assert ident.quoted, ident.name
        assert ident.name == in_case(ident.name.lower(), dialect), ident.name


def test_history_columns_follow_the_state_columns() -> None:
    assert HISTORY_COLUMNS == STATE_COLUMNS + INTERVAL_COLUMNS
    extra = Column("risk_rating", "text")
    evolved = history_columns((*STATE_COLUMNS, extra))
    assert evolved[len(STATE_COLUMNS)] == extra
    assert [c.name for c in INTERVAL_COLUMNS] == ["valid_from", "valid_to", "is_current"]
    sql = history_sql.insert_versions_sql(hist("duckdb"), STAGED, "duckdb",
                                          (*STATE_COLUMNS, extra))
    assert '"risk_rating"' in sql


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ddl_has_the_history_table_only_when_on(dialect: Dialect) -> None:
    assert len(ddl(names(dialect, history=False), dialect)) == 3
    statements = ddl(names(dialect), dialect)
    assert statements[-1] == create_table_sql(hist(dialect), HISTORY_COLUMNS, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_as_of_binds_its_values(dialect: Dialect) -> None:
    for by_key, marks in ((False, 2), (True, 3)):
        tree = parse(history_sql.as_of_sql(hist(dialect), dialect, AS_OF, by_key=by_key), dialect)
        assert len(list(tree.find_all(exp.Placeholder))) == marks
        assert not list(tree.find_all(exp.Literal))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_full_refresh_rebuilds_levels_and_swaps_history(dialect: Dialect) -> None:
    live = names(dialect)
    rebuild = rebuild_names(live)
    assert rebuild.history is not None
    assert rebuild.history.name.sql() == f"\"{in_case('kyc_profile_history__rebuild', dialect)}\""
    tables = swap_tables(live)
    assert [(t.live, t.rebuild) for t in tables][1] == (hist(dialect), rebuild.history)
    assert f"DROP TABLE IF EXISTS {rebuild.history.sql()}" in discard_statements(live)
    assert any(rebuild.history.name.sql() in s for s in exchange_statements(live, dialect))
    built = (PartitionRange(0, 0, 5), PartitionRange(1, 2, 9))
    level = level_statements(live, built, dialect, into_live=False)
    history_level = [(sql, params) for sql, params in level if hist(dialect).sql() in sql
                     and sql.startswith(("INSERT INTO " + rebuild.history.sql(),
                                         "UPDATE " + rebuild.history.sql()))]
    assert len(history_level) == 2
    for sql, params in history_level:
        # the relation of live rows outside the built ranges, its parameters at each use
        tree = parse(sql, dialect)
        assert len(list(tree.find_all(exp.Placeholder))) == len(params)
        assert params[:6] == (0, 0, 5, 1, 2, 9)
    off = names(dialect, history=False)
    assert rebuild_names(off).history is None
    assert len(swap_tables(off)) == 1


# --------------------------------------------------------------------------- the checks, on DuckDB

T0 = datetime(2024, 1, 15)
HISTORY = QualifiedName.of("history")
PLAIN = TableNames(QualifiedName.of("state"), QualifiedName.of("current"),
                   QualifiedName.of("ledger"), history=HISTORY)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """Three profiles with a consistent history: 1 has two versions, 2 one, 3 was deleted."""
    connection = duckdb.connect(":memory:")
    for statement in ddl(PLAIN, "duckdb"):
        connection.execute(statement)
    versions = [(1, 0, "INSERT"), (1, 2, "UPDATE"), (2, 1, "INSERT"), (3, 1, "INSERT"),
                (3, 3, "DELETE")]
    for offset, (key, hours, op) in enumerate(versions):
        connection.execute(
            "INSERT INTO history (kyc_profile_id, goldtier_id, op_type, op_time, src_partition, "
            "src_offset, is_deleted, batch_id, synced_at, valid_from, valid_to, is_current) "
            "VALUES (?, ?, ?, ?, 0, ?, ?, 'b', ?, ?, NULL, FALSE)",
            [key, f"g{offset}", op, T0 + timedelta(hours=hours), offset, op == "DELETE", T0,
             T0 + timedelta(hours=hours)])
    connection.execute(history_sql.recompute_intervals_sql(HISTORY, "history", "duckdb"))
    connection.execute(
        "INSERT INTO state SELECT * EXCLUDE (valid_from, valid_to, is_current) FROM history "
        "WHERE is_current")
    yield connection
    connection.close()


def findings(con: duckdb.DuckDBPyConnection) -> list[list[tuple[object, ...]]]:
    return [
        con.execute(history_sql.intervals_sql(HISTORY, "duckdb")).fetchall(),
        con.execute(history_sql.current_rows_sql(HISTORY, PLAIN.state, "duckdb")).fetchall(),
        con.execute(history_sql.state_agreement_sql(HISTORY, PLAIN.state, "duckdb", COLS))
        .fetchall(),
    ]


def test_a_consistent_history_passes(con: duckdb.DuckDBPyConnection) -> None:
    assert findings(con) == [[], [], []]
    rows = con.execute("SELECT kyc_profile_id, valid_to, is_current FROM history "
                       "ORDER BY kyc_profile_id, op_time").fetchall()
    assert rows == [(1, T0 + timedelta(hours=2), False), (1, None, True), (2, None, True),
                    (3, T0 + timedelta(hours=3), False), (3, None, True)]


@pytest.mark.parametrize(("damage", "expected"), [
    pytest.param("UPDATE history SET valid_to = op_time + INTERVAL 3 HOUR "
                 "WHERE kyc_profile_id = 1 AND NOT is_current",
                 [[(1, 1, 1)], [], []], id="overlap"),
    pytest.param("UPDATE history SET valid_to = op_time + INTERVAL 1 HOUR "
                 "WHERE kyc_profile_id = 1 AND NOT is_current",
                 [[(1, 1, 1)], [], []], id="gap"),
    pytest.param("UPDATE history SET is_current = TRUE WHERE kyc_profile_id = 3",
                 [[(3, 1, 1)], [(3, 2, 1)], [(3, 1)]], id="two-current"),
    pytest.param("DELETE FROM history WHERE kyc_profile_id = 2",
                 [[], [(2, 0, 1)], []], id="profile-missing"),
    pytest.param("UPDATE state SET goldtier_id = 'drift' WHERE kyc_profile_id = 2",
                 [[], [], [(2, 1)]], id="disagrees-with-state"),
    pytest.param("UPDATE state SET src_offset = 99 WHERE kyc_profile_id = 1",
                 [[], [], [(1, 1)]], id="other-version-in-state"),
])
def test_each_broken_invariant_is_found(
    con: duckdb.DuckDBPyConnection, damage: str, expected: list[list[tuple[object, ...]]]
) -> None:
    con.execute(damage)
    assert findings(con) == expected


def test_seeding_is_a_no_op_on_a_complete_history(con: duckdb.DuckDBPyConnection) -> None:
    before = con.execute("SELECT * FROM history ORDER BY ALL").fetchall()
    for statement in history_sql.seed_statements(HISTORY, PLAIN.state, "duckdb", STATE_COLUMNS):
        con.execute(statement)
    assert con.execute("SELECT * FROM history ORDER BY ALL").fetchall() == before
