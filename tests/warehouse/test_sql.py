"""Unit tests of the SQL builders and identifiers: valid SQL per dialect, every name validated and
quoted, Snowflake names upper-cased, and the version guard's truth table."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from schemas.columns import KEY
from warehouse.identifiers import (
    Ident,
    InvalidIdentifierError,
    QualifiedName,
    validate_identifier,
)
from warehouse.sql import (
    CLASSIFY_FIELDS,
    classify_sql,
    delete_superseded_sql,
    insert_new_sql,
    ledger_insert_sql,
    merge_sql,
    newer_sql,
)
from warehouse.tables import (
    LEDGER_COLUMNS,
    STATE_COLUMNS,
    VIEW_COLUMNS,
    Dialect,
    TableNames,
    col,
    create_table_sql,
    ddl,
)

DIALECTS: tuple[Dialect, ...] = ("duckdb", "snowflake")
STAGED = "kyc_sync_staged"


def table_names(dialect: Dialect) -> TableNames:
    upper = dialect == "snowflake"
    return TableNames(
        state=QualifiedName.of("kyc_db", "audit", "kyc_profile_state", upper=upper),
        current=QualifiedName.of("kyc_db", "audit", "kyc_profile_current", upper=upper),
        ledger=QualifiedName.of("kyc_db", "audit", "kyc_sync_ledger", upper=upper),
    )


def in_case(name: str, dialect: Dialect) -> str:
    return name.upper() if dialect == "snowflake" else name


BUILDERS: dict[str, Callable[[Dialect], str]] = {
    "merge": lambda d: merge_sql(table_names(d).state, STAGED, d),
    "delete_superseded": lambda d: delete_superseded_sql(table_names(d).state, STAGED, d),
    "insert_new": lambda d: insert_new_sql(table_names(d).state, STAGED, d),
    "classify": lambda d: classify_sql(table_names(d).state, STAGED, d),
    "ledger_insert": lambda d: ledger_insert_sql(table_names(d).ledger, d),
    "ddl_state": lambda d: ddl(table_names(d), d)[0],
    "ddl_ledger": lambda d: ddl(table_names(d), d)[1],
    "ddl_view": lambda d: ddl(table_names(d), d)[2],
}
EXPECTED_KIND: dict[str, type[exp.Expression]] = {
    "merge": exp.Merge,
    "delete_superseded": exp.Delete,
    "insert_new": exp.Insert,
    "classify": exp.Select,
    "ledger_insert": exp.Insert,
    "duplicate_keys": exp.Select,
    "ddl_state": exp.Create,
    "ddl_ledger": exp.Create,
    "ddl_view": exp.Create,
}
STATEMENTS = [
    pytest.param(dialect, builder, id=f"{dialect}-{builder}")
    for dialect in DIALECTS
    for builder in BUILDERS
]


def parse(sql: str, dialect: Dialect) -> exp.Expr:
    tree = sqlglot.parse_one(sql, read=dialect)
    assert tree is not None
    return tree


def object_identifiers(tree: exp.Expr) -> list[exp.Identifier]:
    """Identifiers naming tables and columns; not aliases (t, s, AS inserted) nor the staged
    relation, whose name the writer passes in as it is."""
    found = []
    for ident in tree.find_all(exp.Identifier):
        parent = ident.parent
        if isinstance(parent, exp.TableAlias | exp.Alias):
            continue
        if isinstance(parent, exp.Column) and parent.args.get("table") is ident:
            continue
        if isinstance(parent, exp.Table) and parent.name == STAGED:
            continue
        found.append(ident)
    return found


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("dialect", "builder"), STATEMENTS)
def test_statement_parses_in_its_dialect(dialect: Dialect, builder: str) -> None:
    tree = parse(BUILDERS[builder](dialect), dialect)
    assert isinstance(tree, EXPECTED_KIND[builder])


@pytest.mark.parametrize(("dialect", "builder"), STATEMENTS)
def test_names_are_quoted_and_in_dialect_case(dialect: Dialect, builder: str) -> None:
    idents = object_identifiers(parse(BUILDERS[builder](dialect), dialect))
    assert idents
    for ident in idents:
        assert ident.quoted, ident.name
        assert ident.name == in_case(ident.name.lower(), dialect), ident.name


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ddl_objects_and_columns(dialect: Dialect) -> None:
    names = table_names(dialect)
    state, ledger, view = (parse(sql, dialect) for sql in ddl(names, dialect))
    for tree, columns in ((state, STATE_COLUMNS), (ledger, LEDGER_COLUMNS)):
        assert isinstance(tree, exp.Create)
        assert tree.kind == "TABLE"
        assert tree.args.get("exists")  # IF NOT EXISTS: safe to run on every start
        defs = list(tree.find_all(exp.ColumnDef))
        assert [d.name for d in defs] == [in_case(c.name, dialect) for c in columns]
        not_null = [
            d.name for d in defs
            if any(isinstance(c.args.get("kind"), exp.NotNullColumnConstraint)
                   for c in d.args.get("constraints") or [])
        ]
        assert not_null == [in_case(c.name, dialect) for c in columns if not c.nullable]
    assert isinstance(view, exp.Create)
    assert view.kind == "VIEW"
    select = view.expression
    assert isinstance(select, exp.Select)
    assert select.named_selects == [in_case(c, dialect) for c in VIEW_COLUMNS]
    where = select.args["where"]
    assert where.sql(dialect=dialect) == f"WHERE NOT {col('is_deleted', dialect)}"
    assert [t.sql(dialect=dialect) for t in view.find_all(exp.Table)] == [
        names.current.sql(), names.state.sql()
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_create_or_replace_table(dialect: Dialect) -> None:
    sql = create_table_sql(table_names(dialect).state, STATE_COLUMNS, dialect, replace=True)
    assert sql.startswith("CREATE OR REPLACE TABLE ")
    tree = parse(sql, dialect)
    assert isinstance(tree, exp.Create)
    assert tree.args.get("replace")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ledger_insert_binds_every_column(dialect: Dialect) -> None:
    sql = ledger_insert_sql(table_names(dialect).ledger, dialect)
    tree = parse(sql, dialect)
    assert isinstance(tree, exp.Insert)
    assert len(list(tree.find_all(exp.Placeholder))) == len(LEDGER_COLUMNS)
    target = tree.this
    assert isinstance(target, exp.Schema)
    assert [i.name for i in target.expressions] == [
        in_case(c.name, dialect) for c in LEDGER_COLUMNS
    ]
    assert not list(tree.find_all(exp.Literal))  # values are bound, never formatted in


@pytest.mark.parametrize("dialect", DIALECTS)
def test_merge_is_guarded_and_complete(dialect: Dialect) -> None:
    names = table_names(dialect)
    sql = merge_sql(names.state, STAGED, dialect)
    tree = parse(sql, dialect)
    assert isinstance(tree, exp.Merge)
    assert tree.this.sql(dialect=dialect) == f"{names.state.sql()} AS t"
    whens = tree.args["whens"].expressions
    assert len(whens) == 2
    matched, not_matched = whens
    assert matched.args["matched"]
    assert not not_matched.args["matched"]
    # The update is conditional on the version guard; the key is never updated.
    guard = parse(f"SELECT 1 WHERE {newer_sql('s', 't', dialect)}", dialect).args["where"].this
    assert matched.args["condition"] == guard
    update = matched.args["then"]
    assert isinstance(update, exp.Update)
    set_columns = [e.this.name for e in update.expressions]
    state_names = [in_case(c.name, dialect) for c in STATE_COLUMNS]
    assert set_columns == [c for c in state_names if c != in_case(KEY, dialect)]
    insert = not_matched.args["then"]
    assert isinstance(insert, exp.Insert)
    assert [i.name for i in insert.this.expressions] == state_names


@pytest.mark.parametrize("dialect", DIALECTS)
def test_classify_selects_fields_in_order(dialect: Dialect) -> None:
    tree = parse(classify_sql(table_names(dialect).state, STAGED, dialect), dialect)
    assert isinstance(tree, exp.Select)
    assert tuple(tree.named_selects) == CLASSIFY_FIELDS
    join = tree.args["joins"][0]
    assert join.side == "LEFT"


def test_snowflake_guard_is_duckdb_guard_upper_cased() -> None:
    duck = newer_sql("s", "t", "duckdb")
    upper = re.sub(r'"([a-z_]+)"', lambda m: f'"{m.group(1).upper()}"', duck)
    assert newer_sql("s", "t", "snowflake") == upper


VERSIONS = list(itertools.product((0, 1), repeat=3))


def test_guard_truth_table_matches_tuple_order() -> None:
    """newer_sql(new, old) is true exactly when (op_time, partition, offset) of new > old."""
    values = ", ".join(f"({i}, {t}, {p}, {o})" for i, (t, p, o) in enumerate(VERSIONS))
    cols = '(id, "op_time", "src_partition", "src_offset")'
    sql = (
        f"SELECT n.id, o.id, {newer_sql('n', 'o', 'duckdb')} "
        f"FROM (VALUES {values}) AS n{cols} CROSS JOIN (VALUES {values}) AS o{cols}"
    )
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    assert len(rows) == len(VERSIONS) ** 2
    for new_id, old_id, newer in rows:
        assert newer is (VERSIONS[new_id] > VERSIONS[old_id]), (VERSIONS[new_id], VERSIONS[old_id])


# --------------------------------------------------------------------------- identifiers

VALID_NAMES = ["kyc_profile_current", "_private", "T1", "a$b", "x" * 255]
INVALID_NAMES = [
    pytest.param("x; drop table y", id="statement-injection"),
    pytest.param('a"b', id="double-quote"),
    pytest.param('x"; DROP TABLE y; --', id="quote-breakout"),
    pytest.param("", id="empty"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("9", id="digit-only"),
    pytest.param("$abc", id="leading-dollar"),
    pytest.param("a b", id="space"),
    pytest.param("a.b", id="dot"),
    pytest.param("a'b", id="single-quote"),
    pytest.param("a-b", id="dash"),
    pytest.param("tbl--", id="comment"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("abc\n", id="trailing-newline"),
    pytest.param("\nabc", id="leading-newline"),
    pytest.param("x" * 256, id="too-long"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_identifier_accepted(name: str) -> None:
    assert validate_identifier(name) == name
    assert Ident(name).sql() == f'"{name}"'


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_identifier_rejected(name: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        validate_identifier(name)
    with pytest.raises(InvalidIdentifierError):
        Ident(name)
    with pytest.raises(InvalidIdentifierError):
        QualifiedName.of("db", name or "-", "t")


def test_invalid_identifier_error_is_value_error() -> None:
    assert issubclass(InvalidIdentifierError, ValueError)


@pytest.mark.parametrize(
    ("names", "upper", "expected"),
    [
        pytest.param(("db", "schema", "t"), False, '"db"."schema"."t"', id="three-parts"),
        pytest.param(("db", "schema", "t"), True, '"DB"."SCHEMA"."T"', id="three-parts-upper"),
        pytest.param(("main", "kyc"), False, '"main"."kyc"', id="schema-table"),
        pytest.param((None, "main", "kyc"), False, '"main"."kyc"', id="no-database"),
        pytest.param(("", "main", "kyc"), False, '"main"."kyc"', id="empty-database"),
        pytest.param(("Kyc_Tbl",), True, '"KYC_TBL"', id="mixed-case-upper"),
        pytest.param(("Kyc_Tbl",), False, '"Kyc_Tbl"', id="mixed-case-kept"),
    ],
)
def test_qualified_name_renders(names: tuple[str | None, ...], upper: bool, expected: str) -> None:
    qualified = QualifiedName.of(*names, upper=upper)
    assert qualified.sql() == expected
    assert qualified.name.sql() == expected.rsplit(".", 1)[-1]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_qualified_name_parses_as_table(dialect: Dialect) -> None:
    qualified = QualifiedName.of("db", "schema", "t", upper=dialect == "snowflake")
    table = exp.to_table(qualified.sql(), dialect=dialect)
    expected = [in_case(n, dialect) for n in ("db", "schema", "t")]
    assert [table.catalog, table.db, table.name] == expected
    assert all(isinstance(part, exp.Identifier) and part.quoted for part in table.parts)
