"""SQL of a full refresh: discard leftover rebuild objects, swap the rebuilt state table in.

A full refresh builds every object under a rebuild name (``rebuild_names``): the state table,
its own view and its own ledger, so the live view never points at a half-built table. When the
rebuild has caught up, ``swap_statements`` puts it in place:

- DuckDB, in one transaction: drop the live state table, rename the rebuild table to its name,
  re-create the live view (DuckDB binds views by name, re-creating it is explicit and cheap),
  copy the rebuild's ledger rows into the live ledger, drop the rebuild view and ledger.
- Snowflake: ``ALTER TABLE <live> SWAP WITH <rebuild>`` (atomic on its own; the view keeps
  referring to the live name), then the ledger copy and the drops. Snowflake commits each DDL
  statement, so the steps after the swap are separate commits; the swap is what readers see.
"""

from __future__ import annotations

from warehouse.identifiers import Ident, QualifiedName
from warehouse.tables import LEDGER_COLUMNS, Dialect, TableNames, col, create_view_sql

REBUILD_SUFFIX = "__rebuild"


def _renamed(name: QualifiedName, suffix: str) -> QualifiedName:
    last = name.name
    return QualifiedName((*name.parts[:-1], Ident(last.name + suffix, last.upper)))


def rebuild_names(live: TableNames, suffix: str = REBUILD_SUFFIX) -> TableNames:
    """The rebuild's objects: the live names with ``suffix``, in the same schema."""
    return TableNames(
        state=_renamed(live.state, suffix),
        current=_renamed(live.current, suffix),
        ledger=_renamed(live.ledger, suffix),
    )


def discard_statements(rebuild: TableNames) -> list[str]:
    """Drop whatever a failed earlier rebuild left behind."""
    return [
        f"DROP VIEW IF EXISTS {rebuild.current.sql()}",
        f"DROP TABLE IF EXISTS {rebuild.state.sql()}",
        f"DROP TABLE IF EXISTS {rebuild.ledger.sql()}",
    ]


def copy_ledger_sql(live: TableNames, rebuild: TableNames, dialect: Dialect) -> str:
    cols = ", ".join(col(c.name, dialect) for c in LEDGER_COLUMNS)
    return f"INSERT INTO {live.ledger.sql()} ({cols}) SELECT {cols} FROM {rebuild.ledger.sql()}"


def swap_statements(live: TableNames, rebuild: TableNames, dialect: Dialect) -> list[str]:
    """The full swap, in order. DuckDB runs them in one transaction (see the module doc)."""
    if live.state.parts[:-1] != rebuild.state.parts[:-1]:
        raise ValueError("the rebuild table must be in the live table's schema")
    drop_rebuild_view = f"DROP VIEW IF EXISTS {rebuild.current.sql()}"
    copy_ledger = copy_ledger_sql(live, rebuild, dialect)
    drop_rebuild_ledger = f"DROP TABLE {rebuild.ledger.sql()}"
    if dialect == "snowflake":
        return [
            drop_rebuild_view,
            f"ALTER TABLE {live.state.sql()} SWAP WITH {rebuild.state.sql()}",
            f"DROP TABLE {rebuild.state.sql()}",
            copy_ledger,
            drop_rebuild_ledger,
        ]
    return [
        drop_rebuild_view,
        f"DROP TABLE {live.state.sql()}",
        f"ALTER TABLE {rebuild.state.sql()} RENAME TO {live.state.name.sql()}",
        create_view_sql(live, dialect),
        copy_ledger,
        drop_rebuild_ledger,
    ]
