"""Read-only SQL of the operations commands (``lag``, ``check``), built by pure functions.

Names come from validated ``QualifiedName``s, columns from ``tables.col``; values (the topic) are
bound as ``?`` parameters, never formatted in. Each builder documents the one row shape it returns.
"""

from __future__ import annotations

from schemas.columns import BUSINESS_COLUMNS, KEY, VERSION_COLUMNS
from warehouse.identifiers import QualifiedName
from warehouse.tables import VIEW_COLUMNS, Dialect, col

LAST_BATCH_FIELDS: tuple[str, ...] = ("batch_id", "committed_at", "newest_op_time", "batches")


def last_batch_sql(ledger: QualifiedName, dialect: Dialect) -> str:
    """The newest ledger row of one topic (parameter: topic), zero or one row of
    ``LAST_BATCH_FIELDS``: its batch id and commit time, the newest op_time any batch of the
    topic applied, and how many batches the ledger holds for the topic."""
    batch, committed, newest, topic = (
        col(c, dialect) for c in ("batch_id", "committed_at", "max_op_time", "topic")
    )
    return (
        f"SELECT {batch}, {committed}, MAX({newest}) OVER () AS newest_op_time, "
        f"COUNT(*) OVER () AS batches\n"
        f"FROM {ledger.sql()}\n"
        f"WHERE {topic} = ?\n"
        f"ORDER BY {committed} DESC, {batch} DESC\n"
        f"LIMIT 1"
    )


DUPLICATE_EXAMPLES = 5


def duplicate_keys_sql(current: QualifiedName, dialect: Dialect) -> str:
    """Keys that appear more than once in the view: up to ``DUPLICATE_EXAMPLES`` rows of
    (key, copies, number of duplicated keys in all), by key."""
    key = col(KEY, dialect)
    return (
        f"SELECT {key}, copies, COUNT(*) OVER () AS duplicated_keys\n"
        f"FROM (SELECT {key}, COUNT(*) AS copies FROM {current.sql()} "
        f"GROUP BY {key} HAVING COUNT(*) > 1) AS d\n"
        f"ORDER BY {key}\n"
        f"LIMIT {DUPLICATE_EXAMPLES}"
    )


def null_counts_sql(current: QualifiedName, columns: tuple[str, ...], dialect: Dialect) -> str:
    """One row: the number of rows of the view, then per column of ``columns`` how many rows
    hold NULL in it. Every column must be one of the view's columns."""
    if not columns:
        raise ValueError("at least one column is needed")
    unknown = [c for c in columns if c not in VIEW_COLUMNS]
    if unknown:
        raise ValueError(f"not columns of the view: {', '.join(unknown)}")
    counts = ", ".join(f"COUNT(*) - COUNT({col(c, dialect)})" for c in columns)
    return f"SELECT COUNT(*), {counts}\nFROM {current.sql()}"


COMPARED_COLUMNS: tuple[str, ...] = (
    *(c.name for c in BUSINESS_COLUMNS), *(c.name for c in VERSION_COLUMNS), "is_deleted",
)
"""What ``verify`` compares of each state row: the profile, the event it reflects, the
tombstone flag (not the bookkeeping of when and by which batch it was written)."""


def state_rows_sql(state: QualifiedName, dialect: Dialect) -> str:
    """Every row of the state table, tombstones included: ``COMPARED_COLUMNS``."""
    cols = ", ".join(col(c, dialect) for c in COMPARED_COLUMNS)
    return f"SELECT {cols}\nFROM {state.sql()}"
