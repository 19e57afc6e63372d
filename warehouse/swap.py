"""SQL of a full refresh that runs beside the live writers: build on the side, bring level, swap.

A full refresh builds every table of ``swap_tables`` under its rebuild name (``rebuild_names``:
the live name + ``__rebuild``, with its own view and ledger) from the planned offset ranges of
the topic, while the live instances keep writing to the live tables. Then:

1. ``level_statements`` (into the rebuild): the live rows whose version lies outside the rebuilt
   ranges — events the live group applied after the planned end, or from history retention has
   since dropped — are merged into the rebuild under the same version guard as every batch,
   tombstones included. Live rows inside the ranges are not needed: the rebuild read every one
   of those events, so its row is at least as new; leaving them out is what repairs a table
   that drifted (a row edited, deleted or added behind kyc-sync's back).
2. ``exchange_statements``: the rebuild takes the live name and the live table the rebuild
   name, atomically — Snowflake ``ALTER TABLE ... SWAP WITH``; DuckDB three renames and the
   view re-created, in the writer's one transaction (DuckDB binds views by name).
3. ``level_statements`` (into the live name), from the table just swapped out: catches the
   writes that raced the swap (committed to the old table after step 1).
4. ``finish_statements``: the rebuild's ledger rows join the live ledger (once: a retried copy
   adds nothing), so do its column metadata rows (its column policy, when it recorded one,
   replaces the live one: a full refresh is how a new policy is applied), the swapped-out
   objects are dropped.

The two copies of a table may hold different columns (a schema change seen by one of them, a
column policy): before rows are merged, the target gains the source's columns it lacks but
those its column policy excludes (``add_missing``, run by the writer), the history table of
each copy gains its state table's (``schema_changes.follow_statements``), and every target
column the source lacks is written NULL (a source column the target lacks is not copied).

The tables a refresh exchanges are a list (``swap_tables``), each with the statements that bring
one of its copies level with the other, so that further derived tables can join it. With
profile history on, the history table is one of them: its copies are brought level by adding the
versions one lacks and recomputing the intervals of their profiles (``history_sql``).
Statements that take parameters come as ``(sql, params)``; values are bound, never formatted in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batcher.ranges import PartitionRange
from schemas.columns import BASE_SCHEMA, Column, ColumnChange, TableSchema
from warehouse import history_sql
from warehouse.identifiers import Ident, QualifiedName
from warehouse.sql import delete_superseded_sql, insert_new_sql, merge_sql
from warehouse.tables import (
    COLUMNS_COLUMNS,
    LEDGER_COLUMNS,
    Dialect,
    TableNames,
    col,
    create_table_sql,
    create_view_sql,
    state_columns,
)

REBUILD_SUFFIX = "__rebuild"
EXCHANGE_SUFFIX = "__exchange"
"""DuckDB's interim name of the live table while it trades names with the rebuild."""

Statement = tuple[str, tuple[object, ...]]
Level = Callable[[QualifiedName, str, Dialect, tuple[Column, ...], frozenset[str]], list[str]]
"""Statements merging the rows of a relation (SQL text) into a table of the given columns; the
relation holds the named ones (the others are written NULL). A statement may read the relation
more than once; its parameters are bound at each place."""


def _renamed(name: QualifiedName, suffix: str) -> QualifiedName:
    last = name.name
    return QualifiedName((*name.parts[:-1], Ident(last.name + suffix, last.upper)))


def rebuild_names(live: TableNames, suffix: str = REBUILD_SUFFIX) -> TableNames:
    """The rebuild's objects: the live names with ``suffix``, in the same schema."""
    return TableNames(
        state=_renamed(live.state, suffix),
        current=_renamed(live.current, suffix),
        ledger=_renamed(live.ledger, suffix),
        columns=None if live.columns is None else _renamed(live.columns, suffix),
        history=None if live.history is None else _renamed(live.history, suffix),
    )


def guarded_upsert(
    target: QualifiedName, source: str, dialect: Dialect,
    columns: tuple[Column, ...] | None = None, present: frozenset[str] | None = None,
) -> list[str]:
    """The batch MERGE with its version guard, from any relation of state rows (one per key):
    a row wins only if its version is strictly greater, tombstones included. ``columns``: the
    target's (default: the packaged schema's state columns); ``present``: those the source
    holds (default: all)."""
    cols = columns or state_columns()
    if dialect == "snowflake":
        return [merge_sql(target, source, dialect, cols, present)]
    return [
        delete_superseded_sql(target, source, dialect),
        insert_new_sql(target, source, dialect, cols, present),
    ]


@dataclass(frozen=True, slots=True)
class SwapTable:
    """One table a full refresh rebuilds and exchanges with the live one."""

    live: QualifiedName
    rebuild: QualifiedName
    level: Level
    columns_of: Callable[[TableSchema], tuple[Column, ...]] = state_columns
    """The columns merged from one copy into the other, for the business columns the state
    table has (the history table's: a version's, the state table's; its intervals are
    recomputed). Always the columns as they are, never a fixed list."""


def swap_tables(live: TableNames) -> tuple[SwapTable, ...]:
    """Every table a full refresh rebuilds, with how each is brought level."""
    if live.state.parts[:-1] != live.ledger.parts[:-1]:
        raise ValueError("the state table and the ledger must share one schema")
    rebuild = rebuild_names(live)
    tables = [SwapTable(live.state, rebuild.state, guarded_upsert)]
    if live.history is not None and rebuild.history is not None:
        tables.append(SwapTable(live.history, rebuild.history, history_sql.flush_statements))
    return tuple(tables)


def outside_sql(
    source: QualifiedName, columns: Sequence[Column], built: Sequence[PartitionRange],
    dialect: Dialect,
) -> Statement:
    """The rows of ``source`` whose version (src_partition, src_offset) lies outside every
    range of ``built``, as a parenthesised relation, and its parameters."""
    cols = ", ".join(f"r.{col(c.name, dialect)}" for c in columns)
    relation = f"(SELECT {cols} FROM {source.sql()} AS r"
    if not built:
        return relation + ")", ()
    p, o = col("src_partition", dialect), col("src_offset", dialect)
    inside = " OR ".join(f"(r.{p} = ? AND r.{o} >= ? AND r.{o} < ?)" for _ in built)
    params = tuple(v for r in built for v in (r.partition, r.first, r.next_offset))
    return f"{relation} WHERE NOT ({inside}))", params


def outside_counts(
    live: TableNames, built: Sequence[PartitionRange], dialect: Dialect,
    schema: TableSchema = BASE_SCHEMA,
) -> list[Statement]:
    """One ``SELECT COUNT(*)`` per table of ``swap_tables``: its live rows (for the history
    table, versions) whose version lies outside ``built`` — what leveling would copy into the
    rebuild. ``schema``: the live state table's business columns."""
    counts: list[Statement] = []
    for table in swap_tables(live):
        relation, params = outside_sql(table.live, table.columns_of(schema), built, dialect)
        counts.append((f"SELECT COUNT(*) FROM {relation} AS o", params))
    return counts


def level_statements(
    live: TableNames, built: Sequence[PartitionRange], dialect: Dialect, *, into_live: bool,
    source: TableSchema = BASE_SCHEMA, target: TableSchema = BASE_SCHEMA,
) -> list[Statement]:
    """Merge the rows outside ``built`` of one copy of each table into the other: into the
    rebuild from the live table (``into_live`` False), or into the live name from the table
    swapped out (True). ``source`` and ``target``: the business columns of the two copies
    (the target holds every column of the source: ``add_missing``)."""
    found: list[Statement] = []
    for table in swap_tables(live):
        into, out_of = (table.live, table.rebuild) if into_live else (table.rebuild, table.live)
        source_columns = table.columns_of(source)
        relation, params = outside_sql(out_of, source_columns, built, dialect)
        present = frozenset(c.name for c in source_columns)
        found += [(sql, params * sql.count(relation)) for sql in
                  table.level(into, relation, dialect, table.columns_of(target), present)]
    return found


def add_missing(
    source: TableSchema, target: TableSchema, exclude: frozenset[str] = frozenset()
) -> list[ColumnChange]:
    """The columns of ``source`` that ``target`` lacks, as changes that add them; never one
    the column policy excludes (``exclude``, the settings' policy: the one a full refresh
    applies), so that a refresh does not bring an excluded column back into the state table,
    nor into history."""
    return [ColumnChange(c, "add", "full refresh: the other copy of the table")
            for c in source.columns if target.column(c.name) is None and c.name not in exclude]


def exchange_statements(
    live: TableNames, dialect: Dialect, schema: TableSchema = BASE_SCHEMA
) -> list[str]:
    """Trade names: the rebuild becomes the live table, the live one takes the rebuild name.
    DuckDB runs them in one transaction (with the view re-created from ``schema``, the
    rebuild's columns); each Snowflake SWAP is atomic on its own (the writer re-creates the
    view after it)."""
    tables = swap_tables(live)
    if dialect == "snowflake":
        return [f"ALTER TABLE {t.live.sql()} SWAP WITH {t.rebuild.sql()}" for t in tables]
    statements: list[str] = []
    for t in tables:
        interim = _renamed(t.live, EXCHANGE_SUFFIX)
        statements += [
            f"ALTER TABLE {t.live.sql()} RENAME TO {interim.name.sql()}",
            f"ALTER TABLE {t.rebuild.sql()} RENAME TO {t.live.name.sql()}",
            f"ALTER TABLE {interim.sql()} RENAME TO {t.rebuild.name.sql()}",
        ]
    return [*statements, create_view_sql(live, dialect, schema)]


def copy_ledger_sql(live: TableNames, dialect: Dialect) -> str:
    """The rebuild's ledger rows into the live ledger, each batch once (safe to repeat)."""
    rebuild = rebuild_names(live)
    cols = ", ".join(col(c.name, dialect) for c in LEDGER_COLUMNS)
    batch = col("batch_id", dialect)
    return (
        f"INSERT INTO {live.ledger.sql()} ({cols})\n"
        f"SELECT {cols} FROM {rebuild.ledger.sql()} AS r\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {live.ledger.sql()} AS l WHERE l.{batch} = r.{batch})"
    )


def discard_statements(live: TableNames) -> list[str]:
    """Drop every rebuild object (a failed earlier refresh's, or the swapped-out tables)."""
    rebuild = rebuild_names(live)
    columns = [] if rebuild.columns is None else [f"DROP TABLE IF EXISTS {rebuild.columns.sql()}"]
    return [
        f"DROP VIEW IF EXISTS {rebuild.current.sql()}",
        *(f"DROP TABLE IF EXISTS {t.rebuild.sql()}" for t in swap_tables(live)),
        f"DROP TABLE IF EXISTS {rebuild.ledger.sql()}",
        *columns,
    ]


POLICY_CHANGES = ("policy", "exclude", "hash")
"""``change`` values of the column metadata that record a column policy."""


def copy_columns_statements(live: TableNames, dialect: Dialect) -> list[str]:
    """The rebuild's column metadata into the live one: its column policy, when it recorded
    one, replaces the live policy; its column changes join the live ones. Repeatable."""
    rebuild = rebuild_names(live)
    if live.columns is None or rebuild.columns is None:
        return []
    name, change, kind, at = (
        col(c, dialect) for c in ("column_name", "change", "column_type", "recorded_at")
    )
    policy = ", ".join(f"'{c}'" for c in POLICY_CHANGES)
    cols = ", ".join(col(c.name, dialect) for c in COLUMNS_COLUMNS)
    return [
        f"DELETE FROM {live.columns.sql()} WHERE {change} IN ({policy}) AND EXISTS "
        f"(SELECT 1 FROM {rebuild.columns.sql()} AS r WHERE r.{change} = 'policy')",
        f"INSERT INTO {live.columns.sql()} ({cols})\n"
        f"SELECT {cols} FROM {rebuild.columns.sql()} AS r\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {live.columns.sql()} AS l WHERE l.{name} = r.{name} "
        f"AND l.{change} = r.{change} AND l.{kind} = r.{kind} AND l.{at} = r.{at})",
    ]


def finish_statements(
    live: TableNames, dialect: Dialect, schema: TableSchema | None = None
) -> list[str]:
    """After the swap and the last leveling: keep the rebuild's ledger rows and column
    metadata, drop the rest; with ``schema`` (the live table's columns now), re-create the
    view from it. Repeatable: the rebuild ledger and metadata are created if missing, so that
    a repeat copies nothing."""
    rebuild = rebuild_names(live)
    columns = (
        [] if rebuild.columns is None
        else [create_table_sql(rebuild.columns, COLUMNS_COLUMNS, dialect)]
    )
    view = [] if schema is None else [create_view_sql(live, dialect, schema)]
    return [
        create_table_sql(rebuild.ledger, LEDGER_COLUMNS, dialect),
        *columns,
        copy_ledger_sql(live, dialect),
        *copy_columns_statements(live, dialect),
        *discard_statements(live),
        *view,
    ]
