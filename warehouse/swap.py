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
   adds nothing), the swapped-out objects are dropped.

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
from schemas.columns import Column
from warehouse import history_sql
from warehouse.identifiers import Ident, QualifiedName
from warehouse.sql import delete_superseded_sql, insert_new_sql, merge_sql
from warehouse.tables import (
    LEDGER_COLUMNS,
    STATE_COLUMNS,
    Dialect,
    TableNames,
    col,
    create_table_sql,
    create_view_sql,
)

REBUILD_SUFFIX = "__rebuild"
EXCHANGE_SUFFIX = "__exchange"
"""DuckDB's interim name of the live table while it trades names with the rebuild."""

Statement = tuple[str, tuple[object, ...]]
Level = Callable[[QualifiedName, str, Dialect], list[str]]
"""Statements merging the rows of a relation (SQL text) into a table. A statement may read the
relation more than once; its parameters are bound at each place."""


def _renamed(name: QualifiedName, suffix: str) -> QualifiedName:
    last = name.name
    return QualifiedName((*name.parts[:-1], Ident(last.name + suffix, last.upper)))


def rebuild_names(live: TableNames, suffix: str = REBUILD_SUFFIX) -> TableNames:
    """The rebuild's objects: the live names with ``suffix``, in the same schema."""
    return TableNames(
        state=_renamed(live.state, suffix),
        current=_renamed(live.current, suffix),
        ledger=_renamed(live.ledger, suffix),
        history=None if live.history is None else _renamed(live.history, suffix),
    )


def guarded_upsert(target: QualifiedName, source: str, dialect: Dialect) -> list[str]:
    """The batch MERGE with its version guard, from any relation of state rows (one per key):
    a row wins only if its version is strictly greater, tombstones included."""
    if dialect == "snowflake":
        return [merge_sql(target, source, dialect)]
    return [delete_superseded_sql(target, source, dialect), insert_new_sql(target, source, dialect)]


@dataclass(frozen=True, slots=True)
class SwapTable:
    """One table a full refresh rebuilds and exchanges with the live one."""

    live: QualifiedName
    rebuild: QualifiedName
    columns: tuple[Column, ...]
    level: Level


def swap_tables(live: TableNames) -> tuple[SwapTable, ...]:
    """Every table a full refresh rebuilds, with how each is brought level."""
    if live.state.parts[:-1] != live.ledger.parts[:-1]:
        raise ValueError("the state table and the ledger must share one schema")
    rebuild = rebuild_names(live)
    tables = [SwapTable(live.state, rebuild.state, STATE_COLUMNS, guarded_upsert)]
    if live.history is not None and rebuild.history is not None:
        tables.append(SwapTable(live.history, rebuild.history, STATE_COLUMNS,
                                history_sql.flush_statements))
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


def level_statements(
    live: TableNames, built: Sequence[PartitionRange], dialect: Dialect, *, into_live: bool
) -> list[Statement]:
    """Merge the rows outside ``built`` of one copy of each table into the other: into the
    rebuild from the live table (``into_live`` False), or into the live name from the table
    swapped out (True)."""
    found: list[Statement] = []
    for table in swap_tables(live):
        target, source = (table.live, table.rebuild) if into_live else (table.rebuild, table.live)
        relation, params = outside_sql(source, table.columns, built, dialect)
        found += [(sql, params * sql.count(relation))
                  for sql in table.level(target, relation, dialect)]
    return found


def exchange_statements(live: TableNames, dialect: Dialect) -> list[str]:
    """Trade names: the rebuild becomes the live table, the live one takes the rebuild name.
    DuckDB runs them in one transaction (with the view re-created); each Snowflake SWAP is
    atomic on its own."""
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
    return [*statements, create_view_sql(live, dialect)]


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
    return [
        f"DROP VIEW IF EXISTS {rebuild.current.sql()}",
        *(f"DROP TABLE IF EXISTS {t.rebuild.sql()}" for t in swap_tables(live)),
        f"DROP TABLE IF EXISTS {rebuild.ledger.sql()}",
    ]


def finish_statements(live: TableNames, dialect: Dialect) -> list[str]:
    """After the swap and the last leveling: keep the rebuild's ledger rows, drop the rest.
    Repeatable: the rebuild ledger is created if missing, so that a repeat copies nothing."""
    rebuild = rebuild_names(live)
    return [
        create_table_sql(rebuild.ledger, LEDGER_COLUMNS, dialect),
        copy_ledger_sql(live, dialect),
        *discard_statements(live),
    ]
