"""The read-only SQL of ``lag`` and ``check`` (``warehouse.inspect``): parses in both dialects,
quotes every name, binds the topic, and returns the documented rows on a DuckDB file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.inspect import duplicate_keys_sql, last_batch_sql, null_counts_sql
from warehouse.tables import Dialect, TableNames, ddl

DIALECTS: tuple[Dialect, ...] = ("duckdb", "snowflake")


def names(upper: bool = False) -> TableNames:
    return TableNames(
        state=QualifiedName.of("main", "kyc_profile_state", upper=upper),
        current=QualifiedName.of("main", "kyc_profile_current", upper=upper),
        ledger=QualifiedName.of("main", "kyc_sync_ledger", upper=upper),
    )


def builders(dialect: Dialect) -> list[str]:
    n = names(dialect == "snowflake")
    return [
        last_batch_sql(n.ledger, dialect),
        duplicate_keys_sql(n.current, dialect),
        null_counts_sql(n.current, ("kyc_profile_id", "op_time"), dialect),
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_queries_parse_and_quote_every_name(dialect: Dialect) -> None:
    for sql in builders(dialect):
        tree = sqlglot.parse_one(sql, read=dialect)
        assert isinstance(tree, exp.Select), sql
        for table in tree.find_all(exp.Table):
            assert all(part.quoted for part in table.find_all(exp.Identifier)), sql


def test_the_topic_is_bound_not_formatted() -> None:
    sql = last_batch_sql(names().ledger, "duckdb")
    assert sql.count("?") == 1
    assert "audit" not in sql


def test_null_counts_only_for_view_columns() -> None:
    with pytest.raises(ValueError, match="not columns of the view: is_deleted"):
        null_counts_sql(names().current, ("kyc_profile_id", "is_deleted"), "duckdb")
    with pytest.raises(ValueError, match="at least one"):
        null_counts_sql(names().current, (), "duckdb")


@pytest.fixture
def db(tmp_path: Path) -> DuckDBWarehouse:
    path = tmp_path / "kyc.duckdb"
    con = duckdb.connect(str(path))
    for statement in ddl(names(), "duckdb"):
        con.execute(statement)
    con.execute("ALTER TABLE kyc_profile_state ALTER COLUMN kyc_profile_id DROP NOT NULL")
    state = [
        (1, "2027-01-01 10:00:00", False), (2, "2027-01-01 11:00:00", False),
        (2, "2027-01-01 11:00:00", False), (3, "2027-01-01 12:00:00", True),
        (None, "2027-01-01 13:00:00", False), (4, "2027-01-01 13:00:00", False),
        (4, "2027-01-01 13:00:00", False), (4, "2027-01-01 13:00:00", False),
        (3, "2027-01-01 13:00:00", True),  # two tombstones of 3: not in the view
    ]
    for key, op_time, deleted in state:
        con.execute(
            "INSERT INTO kyc_profile_state VALUES (?, NULL, NULL, NULL, NULL, NULL, 'INSERT', ?, "
            "0, 0, ?, 'b', ?)", [key, op_time, deleted, op_time],
        )
    ledger = [
        ("b1", "audit", datetime(2027, 1, 1, 10, 5), datetime(2027, 1, 1, 10, 0)),
        ("b2", "audit", datetime(2027, 1, 1, 12, 5), datetime(2027, 1, 1, 11, 0)),
        ("b3", "other", datetime(2027, 1, 2, 0, 0), datetime(2027, 1, 2, 0, 0)),
        ("b4", "audit", datetime(2027, 1, 1, 11, 5), datetime(2027, 1, 1, 12, 0)),
    ]
    for batch_id, topic, committed, max_op in ledger:
        con.execute(
            "INSERT INTO kyc_sync_ledger VALUES (?, ?, 'g', ?, ?, 1, 0, 1, 1, 0, 0, 0, ?, ?, "
            "'[]', 0, 0)", [batch_id, topic, committed, committed, max_op, max_op],
        )
    con.close()
    return DuckDBWarehouse(str(path), names())


def test_last_batch(db: DuckDBWarehouse) -> None:
    rows = db.fetch(last_batch_sql(db.names.ledger, "duckdb"), ("audit",))
    # the newest row by commit time; the newest op_time over every batch of the topic
    assert rows == [("b2", datetime(2027, 1, 1, 12, 5), datetime(2027, 1, 1, 12, 0), 3)]
    assert db.fetch(last_batch_sql(db.names.ledger, "duckdb"), ("nothing",)) == []


def test_duplicate_keys(db: DuckDBWarehouse) -> None:
    rows = db.fetch(duplicate_keys_sql(db.names.current, "duckdb"))
    assert rows == [(2, 2, 2), (4, 3, 2)]


def test_null_counts(db: DuckDBWarehouse) -> None:
    sql = null_counts_sql(db.names.current, ("kyc_profile_id", "op_time", "cid"), "duckdb")
    assert db.fetch(sql) == [(7, 1, 0, 7)]
