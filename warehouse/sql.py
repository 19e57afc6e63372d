"""SQL of one flush, built by pure functions from validated names. Values are never formatted in.

Per flush a writer runs, in one transaction:
1. ``classify_sql``: counts what the MERGE is about to do (for the ledger and metrics);
2. ``merge_sql``: the guarded MERGE of the staged winners into the state table (Snowflake), or
   its equivalent ``delete_superseded_sql`` + ``insert_new_sql`` (DuckDB);
3. ``ledger_insert_sql``: the batch's ledger row, with bound parameters.

The guard: a staged row is applied only if its version (op_time, src_partition, src_offset) is
greater than the version the state row already holds, deleted rows included.
"""

from __future__ import annotations

from collections.abc import Collection

from schemas.columns import KEY, Column
from warehouse.identifiers import QualifiedName
from warehouse.tables import LEDGER_COLUMNS, STATE_COLUMNS, Dialect, col


def newer_sql(new: str, old: str, dialect: Dialect) -> str:
    """``new`` is strictly later than ``old`` by (op_time, src_partition, src_offset)."""
    t, p, o = (col(c, dialect) for c in ("op_time", "src_partition", "src_offset"))
    return (
        f"({new}.{t} > {old}.{t} OR ({new}.{t} = {old}.{t} AND "
        f"({new}.{p} > {old}.{p} OR ({new}.{p} = {old}.{p} AND {new}.{o} > {old}.{o}))))"
    )


def staged_values(
    columns: tuple[Column, ...], staged: Collection[str] | None, dialect: Dialect
) -> list[tuple[str, str]]:
    """(column, value) of each state column: the staged value, or NULL for a column the staged
    rows lack (a column their writer schemas did not have, or one another instance added).
    Names match regardless of case, as the warehouses resolve them (Snowflake reads them back
    upper-cased; no two fields may differ only in case)."""
    held = None if staged is None else {name.lower() for name in staged}
    return [
        (col(c.name, dialect),
         f"s.{col(c.name, dialect)}" if held is None or c.name.lower() in held else "NULL")
        for c in columns
    ]


def merge_sql(
    state: QualifiedName, staged: str, dialect: Dialect,
    columns: tuple[Column, ...] = STATE_COLUMNS, present: Collection[str] | None = None,
) -> str:
    """Guarded upsert of the staged rows (one per key) into the state table's ``columns``;
    ``present``: the staged columns (default: all of ``columns``)."""
    key = col(KEY, dialect)
    pairs = staged_values(columns, present, dialect)
    updates = ", ".join(f"{c} = {v}" for c, v in pairs if c != key)
    return (
        f"MERGE INTO {state.sql()} AS t\n"
        f"USING {staged} AS s\n"
        f"ON t.{key} = s.{key}\n"
        f"WHEN MATCHED AND {newer_sql('s', 't', dialect)} THEN UPDATE SET {updates}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(c for c, _ in pairs)}) "
        f"VALUES ({', '.join(v for _, v in pairs)})"
    )


def delete_superseded_sql(state: QualifiedName, staged: str, dialect: Dialect) -> str:
    """Delete the state rows a staged row supersedes (same key, older version). Followed by
    ``insert_new_sql`` in the same transaction, this is the guarded upsert of ``merge_sql``: the
    superseded keys are gone and get the staged row, stale ones keep theirs, new ones are added."""
    key = col(KEY, dialect)
    return (
        f"DELETE FROM {state.sql()} AS t\n"
        f"USING {staged} AS s\n"
        f"WHERE t.{key} = s.{key} AND {newer_sql('s', 't', dialect)}"
    )


def insert_new_sql(
    state: QualifiedName, staged: str, dialect: Dialect,
    columns: tuple[Column, ...] = STATE_COLUMNS, present: Collection[str] | None = None,
) -> str:
    """The NOT MATCHED half of ``merge_sql``: staged rows whose key the state table lacks."""
    key = col(KEY, dialect)
    pairs = staged_values(columns, present, dialect)
    return (
        f"INSERT INTO {state.sql()} ({', '.join(c for c, _ in pairs)})\n"
        f"SELECT {', '.join(v for _, v in pairs)}\n"
        f"FROM {staged} AS s\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {state.sql()} AS t WHERE t.{key} = s.{key})"
    )


CLASSIFY_FIELDS: tuple[str, ...] = (
    "inserted", "updated", "deleted", "skipped_stale", "min_op_time", "max_op_time",
)


def classify_sql(state: QualifiedName, staged: str, dialect: Dialect) -> str:
    """One row: what the MERGE will do, from the same snapshot, in ``CLASSIFY_FIELDS`` order.

    inserted: a live row appears (new profile, or re-created after a DELETE);
    updated: a live row changes; deleted: a DELETE is applied (the profile was live, or is
    tombstoned before it was ever seen); skipped_stale: older than what the table holds.
    min/max_op_time: over the applied rows.
    """
    key, dele, t_op = col(KEY, dialect), col("is_deleted", dialect), col("op_time", dialect)
    applied = f"(t.{key} IS NULL OR {newer_sql('s', 't', dialect)})"
    was_live = f"(t.{key} IS NOT NULL AND NOT t.{dele})"

    def count(cond: str) -> str:
        return f"COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)"

    return (
        "SELECT\n"
        f"  {count(f'{applied} AND NOT s.{dele} AND NOT {was_live}')} AS inserted,\n"
        f"  {count(f'{applied} AND NOT s.{dele} AND {was_live}')} AS updated,\n"
        f"  {count(f'{applied} AND s.{dele}')} AS deleted,\n"
        f"  {count(f'NOT {applied}')} AS skipped_stale,\n"
        f"  MIN(CASE WHEN {applied} THEN s.{t_op} END) AS min_op_time,\n"
        f"  MAX(CASE WHEN {applied} THEN s.{t_op} END) AS max_op_time\n"
        f"FROM {staged} AS s LEFT JOIN {state.sql()} AS t ON t.{key} = s.{key}"
    )


def ledger_insert_sql(ledger: QualifiedName, dialect: Dialect) -> str:
    cols = ", ".join(col(c.name, dialect) for c in LEDGER_COLUMNS)
    marks = ", ".join("?" for _ in LEDGER_COLUMNS)
    return f"INSERT INTO {ledger.sql()} ({cols}) VALUES ({marks})"
