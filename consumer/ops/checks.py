"""``kyc-sync check``: freshness and data checks of ``kyc_profile_current``, as the seed's dbt
tests had them:

- ``freshness``: no event older than ``checks.freshness_max_age_s`` (15 minutes by default) is
  still waiting to be applied — the age of the oldest unapplied event, the timestamp of the
  message at the group's committed offset, as ``lag`` measures it. A quiet source passes (no
  event waits, however old the last op_time), a stuck sync fails (an event waits);
- ``unique_key``: ``kyc_profile_id`` is unique in the view;
- ``not_null``: the key columns (``checks.not_null``) are never null;

and with history on (``history.enabled``), the invariants of the history table:

- ``history_intervals``: each profile's intervals follow one another, no overlap and no gap
  (``valid_to`` is the next version's ``valid_from``, NULL only for the last one, which alone is
  ``is_current``);
- ``history_current``: every profile ever seen (state table or history) has exactly one current
  history row;
- ``history_state``: each current history row agrees with the profile's state row, in every
  column the state table has now (read from the table: schema changes included); a state
  column the history table lacks fails it, named.

Evaluation is pure (``freshness``, ``unique_key``, ``not_null``, ``history_*``); ``run_checks``
feeds them the rows of ``warehouse.inspect`` and ``warehouse.history_sql`` queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.ops.durations import format_duration
from consumer.ops.lag import PartitionLag
from consumer.ops.ledger import LastBatch, fetch, last_batch
from consumer.ops.render import utc_text
from schemas.columns import KEY, TableSchema
from warehouse import history_sql
from warehouse.base import Inspector
from warehouse.errors import WarehouseError
from warehouse.identifiers import QualifiedName
from warehouse.inspect import duplicate_keys_sql, null_counts_sql
from warehouse.schema_changes import physical_columns_sql, table_state
from warehouse.tables import Dialect, state_columns


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.reason}"


def freshness(
    partitions: Sequence[PartitionLag] | None, now_ms: int, max_age_s: float,
    last: LastBatch | None = None, kafka_error: str | None = None,
) -> CheckResult:
    """Fail when an event older than ``max_age_s`` waits to be applied, or when that cannot be
    told (Kafka unreadable, a waiting message without a timestamp). ``last``: the last batch,
    named in the reason."""
    if partitions is None:
        return CheckResult("freshness", False, f"cannot read the group's lag from Kafka: "
                           f"{kafka_error or 'unknown error'}")
    limit = format_duration(max_age_s)
    unknown = [p.offsets.partition for p in partitions if p.age_s(now_ms) is None]
    if unknown:
        return CheckResult("freshness", False, f"age of the oldest unapplied event unknown on "
                           f"partition(s) {unknown} (no message timestamp read)")
    waiting = [(p.age_s(now_ms) or 0.0, p) for p in partitions if p.lag > 0]
    batch = "" if last is None else f"; last batch {utc_text(last.committed_at)}"
    if not waiting:
        return CheckResult("freshness", True,
                           f"no event waits to be applied (max {limit}){batch}")
    age, worst = max(waiting, key=lambda item: item[0])
    text = (f"the oldest unapplied event (partition {worst.offsets.partition}, "
            f"{worst.lag} event(s) behind) is {format_duration(age)} old")
    if age > max_age_s:
        return CheckResult("freshness", False, f"{text} > {limit}: the sync is not keeping up"
                           f"{batch}")
    return CheckResult("freshness", True, f"{text} (max {limit}){batch}")


def unique_key(rows: Sequence[tuple[Any, ...]]) -> CheckResult:
    """``rows``: (key, copies, duplicated keys in all), as ``duplicate_keys_sql`` returns."""
    if not rows:
        return CheckResult("unique_key", True, f"{KEY} is unique")
    total = int(rows[0][2])
    examples = ", ".join(f"{key} x{copies}" for key, copies, _ in rows)
    more = ", ..." if total > len(rows) else ""
    return CheckResult(
        "unique_key", False,
        f"{total} {KEY} value(s) appear more than once (e.g. {examples}{more})",
    )


def not_null(columns: Sequence[str], row: Sequence[Any]) -> CheckResult:
    """``row``: (rows, nulls of each column), as ``null_counts_sql`` returns."""
    total, counts = int(row[0]), [int(n) for n in row[1:]]
    bad = [f"{c} is null in {n} of {total} row(s)" for c, n in zip(columns, counts, strict=True)
           if n]
    if bad:
        return CheckResult("not_null", False, "; ".join(bad))
    return CheckResult("not_null", True, f"{', '.join(columns)} never null ({total} rows)")


def _examples(rows: Sequence[tuple[Any, ...]], detail: str | None) -> str:
    """``rows``: (key, [count,] keys in all); the first ones as examples."""
    total = int(rows[0][-1])
    shown = ", ".join(str(r[0]) if detail is None else f"{r[0]}: {r[1]} {detail}" for r in rows)
    more = ", ..." if total > len(rows) else ""
    return f"{total} profile(s) (e.g. {shown}{more})"


def history_intervals(rows: Sequence[tuple[Any, ...]]) -> CheckResult:
    """``rows``: (key, broken rows, keys in all), as ``history_sql.intervals_sql`` returns."""
    if not rows:
        return CheckResult("history_intervals", True,
                           "each profile's intervals follow one another, no overlap, no gap")
    return CheckResult("history_intervals", False,
                       f"overlapping or broken intervals in {_examples(rows, 'row(s)')}")


def history_current(rows: Sequence[tuple[Any, ...]]) -> CheckResult:
    """``rows``: (key, current rows, keys in all), as ``history_sql.current_rows_sql``."""
    if not rows:
        return CheckResult("history_current", True,
                           "every profile ever seen has exactly one current history row")
    return CheckResult("history_current", False,
                       f"not exactly one current history row in {_examples(rows, 'current')}")


def history_state(rows: Sequence[tuple[Any, ...]]) -> CheckResult:
    """``rows``: (key, keys in all), as ``history_sql.state_agreement_sql`` returns."""
    if not rows:
        return CheckResult("history_state", True, "current history rows agree with the state table")
    return CheckResult("history_state", False,
                       f"the current history row differs from the state row in "
                       f"{_examples(rows, None)}")


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except WarehouseError as err:
        return CheckResult(name, False, f"cannot read the warehouse: {err}")


def run_checks(
    inspector: Inspector,
    dialect: Dialect,
    topic: str,
    not_null_columns: tuple[str, ...],
    max_age_s: float,
    lag: tuple[tuple[PartitionLag, ...] | None, int, str | None],
) -> list[CheckResult]:
    """``lag``: the partitions as ``lag.measure`` reads them (None with the error when Kafka
    could not be read) and the time they are measured against."""
    names = inspector.names
    partitions, now_ms, kafka_error = lag

    def last() -> LastBatch | None:
        try:
            return last_batch(inspector, names, dialect, topic)
        except WarehouseError:
            return None

    results = [
        freshness(partitions, now_ms, max_age_s, last(), kafka_error),
        _guarded("unique_key", lambda: unique_key(
            fetch(inspector, duplicate_keys_sql(names.current, dialect)))),
        _guarded("not_null", lambda: not_null(not_null_columns, fetch(
            inspector, null_counts_sql(names.current, not_null_columns, dialect))[0])),
    ]
    history = names.history
    if history is not None:
        results += [
            _guarded("history_intervals", lambda: history_intervals(
                fetch(inspector, history_sql.intervals_sql(history, dialect)))),
            _guarded("history_current", lambda: history_current(
                fetch(inspector, history_sql.current_rows_sql(history, names.state, dialect)))),
            _guarded("history_state", lambda: _history_state(inspector, dialect, history)),
        ]
    return results


def _history_state(inspector: Inspector, dialect: Dialect, history: QualifiedName) -> CheckResult:
    """``history_state`` over the columns the state table has now: read from both tables (a
    read-only query each), compared by ``history_state`` when the history table holds them."""
    state = inspector.names.state

    def columns(table: QualifiedName) -> list[tuple[Any, ...]]:
        sql, params = physical_columns_sql(table, dialect)
        return fetch(inspector, sql, tuple(params))

    state_physical, history_physical = columns(state), columns(history)
    missing = [t.sql() for t, rows in ((state, state_physical), (history, history_physical))
               if not rows]
    if missing:
        return CheckResult("history_state", False, f"{' and '.join(missing)} not found")
    upper = dialect == "snowflake"
    schema = table_state(state_physical, [], False, upper).schema
    problem = history_lacks(schema, table_state(history_physical, [], False, upper).schema)
    if problem is not None:
        return CheckResult("history_state", False, problem)
    return history_state(fetch(inspector, history_sql.state_agreement_sql(
        history, state, dialect, state_columns(schema))))


def history_lacks(state: TableSchema, history: TableSchema) -> str | None:
    """Why the current history rows cannot be compared with the state rows: the state table's
    business columns the history table lacks (the next flush or start adds them)."""
    held = {c.name.lower() for c in history.columns}
    lacking = [c.name for c in state.columns if c.name.lower() not in held]
    if not lacking:
        return None
    return (f"the history table lacks column(s) {', '.join(lacking)} of the state table "
            "(added by the next flush, or when kyc-sync starts with history on)")


def render(results: Sequence[CheckResult]) -> str:
    failed = sum(not r.ok for r in results)
    summary = f"{failed} of {len(results)} check(s) failed" if failed else "all checks passed"
    return "\n".join([*(r.line() for r in results), summary])


def to_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "checks": [{"name": r.name, "ok": r.ok, "reason": r.reason} for r in results],
    }
