"""SQL of the profile history (``history.enabled``), built by pure functions from validated names.

The history table holds one row per distinct version of a profile: the state table's columns of
that version, then ``valid_from`` (its op_time), ``valid_to`` (the op_time of the key's next
version, NULL for the latest) and ``is_current``. Versions are ordered as in the state table, by
(op_time, src_partition, src_offset).

Per flush, in the transaction of the state MERGE and after it, a writer runs:
1. ``insert_versions_sql``: every staged version the table lacks (a version already there is
   never added twice), with its interval computed from its neighbours among the key's versions
   in history and in the batch;
2. ``recompute_intervals_sql``: for the staged keys only, ``valid_to`` and ``is_current`` of each
   row from its neighbours (a window over the key's rows), writing just the rows that change:
   the rows that were there before and got a new neighbour (the rows just inserted are right
   already, so a flush updates about one row per key, not one per version). A late version
   lands between two others and both neighbours' intervals follow; a replay changes nothing.
After the state MERGE: on Snowflake the MERGE holds the state table's lock until the commit, so
two writers' history statements cannot interleave (each sees the other's committed versions).

``seed_statements`` (run when a writer opens) bring the history up to the state table: a profile
whose state version is missing from history (history turned on for an existing table, or off for
a while) gets that version as its current row.

The read side: ``as_of_sql`` (the profiles live at an instant) and the three checks of
``kyc-sync check`` (``intervals_sql``, ``current_rows_sql``, ``state_agreement_sql``).
Values are bound as ``?`` parameters, never formatted in.
"""

from __future__ import annotations

from collections.abc import Collection

from schemas.columns import KEY, VERSION, Column
from warehouse.identifiers import QualifiedName
from warehouse.sql import newer_sql, staged_values
from warehouse.tables import PER_WRITE_COLUMNS, Dialect, col

EXAMPLES = 5
"""Example keys a failed check names."""


def _same_version(a: str, b: str, dialect: Dialect) -> str:
    return " AND ".join(f"{a}.{col(c, dialect)} = {b}.{col(c, dialect)}" for c in (KEY, *VERSION))


def _order(dialect: Dialect, descending: bool = False) -> str:
    direction = " DESC" if descending else ""
    return ", ".join(f"{col(c, dialect)}{direction}" for c in VERSION)


# -- the flush ----------------------------------------------------------------------------------


def insert_versions_sql(
    history: QualifiedName, staged: str, dialect: Dialect, columns: tuple[Column, ...],
    present: Collection[str] | None = None,
) -> str:
    """Add the staged versions (distinct per key and version) the history lacks, each with its
    interval: ``valid_to`` from the next version among the key's rows in history and the staged
    ones. The rows already there are left to ``recompute_intervals_sql``. ``columns``: the
    history table's version columns (the state table's); ``present``: those the staged rows
    hold (default: all), the others are written NULL (a column the versions' writer schemas
    lacked, or one another instance added)."""
    key, op_time = col(KEY, dialect), col("op_time", dialect)
    pairs = staged_values(columns, present, dialect)
    cols = [c for c, _ in pairs]
    interval = ", ".join(col(c, dialect) for c in ("valid_from", "valid_to", "is_current"))
    version = ", ".join(col(c, dialect) for c in (KEY, *VERSION))
    next_from = col("next_from", dialect)
    return (
        f"INSERT INTO {history.sql()} ({', '.join(cols)}, {interval})\n"
        f"SELECT {', '.join(v for _, v in pairs)}, s.{op_time}, n.{next_from}, "
        f"(n.{next_from} IS NULL)\n"
        f"FROM {staged} AS s\n"
        f"JOIN (SELECT {version}, LEAD({op_time}) OVER "
        f"(PARTITION BY {key} ORDER BY {_order(dialect)}) AS {next_from}\n"
        f"      FROM (SELECT {version} FROM {history.sql()} "
        f"WHERE {key} IN (SELECT {key} FROM {staged})\n"
        f"            UNION\n"
        f"            SELECT {version} FROM {staged}) AS v) AS n\n"
        f"  ON {_same_version('n', 's', dialect)}\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {history.sql()} AS h "
        f"WHERE {_same_version('h', 's', dialect)})"
    )


def recompute_intervals_sql(history: QualifiedName, staged: str, dialect: Dialect) -> str:
    """Set ``valid_to`` (the next version's op_time) and ``is_current`` (no next version) of
    every row of the staged keys; only rows whose values change are written."""
    key, op_time = col(KEY, dialect), col("op_time", dialect)
    valid_to, current = col("valid_to", dialect), col("is_current", dialect)
    version = ", ".join(col(c, dialect) for c in (KEY, *VERSION))
    next_from = col("next_from", dialect)
    return (
        f"UPDATE {history.sql()} AS h\n"
        f"SET {valid_to} = n.{next_from}, {current} = (n.{next_from} IS NULL)\n"
        f"FROM (SELECT {version}, LEAD({op_time}) OVER "
        f"(PARTITION BY {key} ORDER BY {_order(dialect)}) AS {next_from}\n"
        f"      FROM {history.sql()}\n"
        f"      WHERE {key} IN (SELECT {key} FROM {staged})) AS n\n"
        f"WHERE {_same_version('h', 'n', dialect)}\n"
        f"  AND (h.{valid_to} IS DISTINCT FROM n.{next_from} "
        f"OR h.{current} <> (n.{next_from} IS NULL))"
    )


def flush_statements(
    history: QualifiedName, staged: str, dialect: Dialect, columns: tuple[Column, ...],
    present: Collection[str] | None = None,
) -> list[str]:
    """The history statements of one flush, in order (after the state MERGE); ``columns`` and
    ``present`` as in ``insert_versions_sql``."""
    return [
        insert_versions_sql(history, staged, dialect, columns, present),
        recompute_intervals_sql(history, staged, dialect),
    ]


def seed_statements(
    history: QualifiedName, state: QualifiedName, dialect: Dialect, columns: tuple[Column, ...],
) -> list[str]:
    """Make each state row's version the current history row of its key, where it is not.

    The state table holds the greatest version of each key ever applied, so a missing one is
    newer than every version history has of the key: the current row (if any) is closed at its
    op_time and the state's version added as current. A no-op when history is complete, and
    cheap: both statements join the state table with the current rows only."""
    key, op_time = col(KEY, dialect), col("op_time", dialect)
    valid_to, current = col("valid_to", dialect), col("is_current", dialect)
    cols = [col(c.name, dialect) for c in columns]
    interval = ", ".join(col(c, dialect) for c in ("valid_from", "valid_to", "is_current"))
    return [
        f"UPDATE {history.sql()} AS h\n"
        f"SET {valid_to} = s.{op_time}, {current} = FALSE\n"
        f"FROM {state.sql()} AS s\n"
        f"WHERE h.{key} = s.{key} AND h.{current} AND {newer_sql('s', 'h', dialect)}",
        f"INSERT INTO {history.sql()} ({', '.join(cols)}, {interval})\n"
        f"SELECT {', '.join('s.' + c for c in cols)}, s.{op_time}, NULL, TRUE\n"
        f"FROM {state.sql()} AS s\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {history.sql()} AS h "
        f"WHERE h.{key} = s.{key} AND h.{current})",
    ]


# -- reads --------------------------------------------------------------------------------------


def as_of_columns(columns: tuple[Column, ...]) -> tuple[str, ...]:
    """What ``show --as-of`` prints: the version's columns (not the write's), then its interval."""
    return (*(c.name for c in columns if c.name not in PER_WRITE_COLUMNS
              and c.name not in {"is_deleted", "src_partition", "src_offset"}),
            "valid_from", "valid_to")


def as_of_sql(
    history: QualifiedName, dialect: Dialect, columns: tuple[str, ...], by_key: bool = False,
) -> str:
    """The profiles live at an instant, by key: the version valid then, unless it is a DELETE;
    ``columns``: what to show (``as_of_columns`` of the history table's columns now).
    Parameters: the instant twice (naive UTC), then the key when ``by_key``."""
    key = col(KEY, dialect)
    valid_from, valid_to = col("valid_from", dialect), col("valid_to", dialect)
    only = f" AND {key} = ?" if by_key else ""
    return (
        f"SELECT {', '.join(col(c, dialect) for c in columns)}\n"
        f"FROM {history.sql()}\n"
        f"WHERE {valid_from} <= ? AND ({valid_to} IS NULL OR {valid_to} > ?)"
        f" AND NOT {col('is_deleted', dialect)}{only}\n"
        f"ORDER BY {key}"
    )


def intervals_sql(history: QualifiedName, dialect: Dialect) -> str:
    """Keys whose intervals do not follow one another: a row's ``valid_from`` is not its
    op_time, its ``valid_to`` is not the next version's ``valid_from`` (an overlap or a gap; NULL
    only for the last), or ``is_current`` is not "the last". Up to ``EXAMPLES`` rows of (key,
    broken rows, keys broken in all), by key."""
    key, op_time = col(KEY, dialect), col("op_time", dialect)
    valid_from, valid_to = col("valid_from", dialect), col("valid_to", dialect)
    current = col("is_current", dialect)
    next_from, from_last = col("next_from", dialect), col("from_last", dialect)
    broken, keys = col("broken_rows", dialect), col("broken_keys", dialect)
    return (
        f"SELECT {key}, {broken}, COUNT(*) OVER () AS {keys}\n"
        f"FROM (SELECT {key}, COUNT(*) AS {broken}\n"
        f"      FROM (SELECT {key}, {op_time}, {valid_from}, {valid_to}, {current},\n"
        f"                   LEAD({valid_from}) OVER (PARTITION BY {key} "
        f"ORDER BY {_order(dialect)}) AS {next_from},\n"
        f"                   ROW_NUMBER() OVER (PARTITION BY {key} "
        f"ORDER BY {_order(dialect, descending=True)}) AS {from_last}\n"
        f"            FROM {history.sql()}) AS w\n"
        f"      WHERE {valid_from} <> {op_time}\n"
        f"         OR {valid_to} IS DISTINCT FROM {next_from}\n"
        f"         OR {current} <> ({from_last} = 1)\n"
        f"      GROUP BY {key}) AS b\n"
        f"ORDER BY {key}\n"
        f"LIMIT {EXAMPLES}"
    )


def current_rows_sql(history: QualifiedName, state: QualifiedName, dialect: Dialect) -> str:
    """Profiles ever seen (in the state table or in history) without exactly one current history
    row. Up to ``EXAMPLES`` rows of (key, current rows, such keys in all), by key."""
    key, current = col(KEY, dialect), col("is_current", dialect)
    currents, keys = col("current_rows", dialect), col("broken_keys", dialect)
    return (
        f"SELECT {key}, {currents}, COUNT(*) OVER () AS {keys}\n"
        f"FROM (SELECT COALESCE(s.{key}, h.{key}) AS {key}, "
        f"COALESCE(h.{currents}, 0) AS {currents}\n"
        f"      FROM {state.sql()} AS s\n"
        f"      FULL OUTER JOIN (SELECT {key}, SUM(CASE WHEN {current} THEN 1 ELSE 0 END) "
        f"AS {currents} FROM {history.sql()} GROUP BY {key}) AS h\n"
        f"      ON s.{key} = h.{key}) AS c\n"
        f"WHERE {currents} <> 1\n"
        f"ORDER BY {key}\n"
        f"LIMIT {EXAMPLES}"
    )


def state_agreement_sql(
    history: QualifiedName, state: QualifiedName, dialect: Dialect, columns: tuple[Column, ...],
) -> str:
    """Profiles whose current history row differs from their state row in any column of the
    version (``columns`` but the per-write ones). Up to ``EXAMPLES`` rows of (key, such keys in
    all), by key."""
    key, current = col(KEY, dialect), col("is_current", dialect)
    compared = [col(c.name, dialect) for c in columns if c.name not in PER_WRITE_COLUMNS]
    same = " AND ".join(f"s.{c} IS NOT DISTINCT FROM h.{c}" for c in compared)
    return (
        f"SELECT {key}, COUNT(*) OVER () AS {col('broken_keys', dialect)}\n"
        f"FROM (SELECT DISTINCT s.{key}\n"
        f"      FROM {state.sql()} AS s\n"
        f"      JOIN {history.sql()} AS h ON h.{key} = s.{key} AND h.{current}\n"
        f"      WHERE NOT ({same})) AS d\n"
        f"ORDER BY {key}\n"
        f"LIMIT {EXAMPLES}"
    )
