"""``kyc-sync check``: freshness and data checks of ``kyc_profile_current``, as the seed's dbt
tests had them:

- ``freshness``: the last successful sync (newest ledger row of the topic) is at most
  ``checks.freshness_max_age_s`` old (15 minutes by default);
- ``unique_key``: ``kyc_profile_id`` is unique in the view;
- ``not_null``: the key columns (``checks.not_null``) are never null.

Evaluation is pure (``freshness``, ``unique_key``, ``not_null``); ``run_checks`` feeds them the
rows of ``warehouse.inspect`` queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consumer.ops.durations import format_duration
from consumer.ops.ledger import LastBatch, fetch, last_batch
from consumer.ops.render import utc_text
from schemas.columns import KEY
from warehouse.base import Inspector
from warehouse.errors import WarehouseError
from warehouse.inspect import duplicate_keys_sql, null_counts_sql
from warehouse.tables import Dialect


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.reason}"


def freshness(last: LastBatch | None, now: datetime, max_age_s: float) -> CheckResult:
    """``now`` and the ledger's times are naive UTC."""
    if last is None:
        return CheckResult("freshness", False, "no successful sync recorded for the topic")
    age = (now - last.committed_at).total_seconds()
    text = (f"last successful sync {utc_text(last.committed_at)} is "
            f"{format_duration(max(0.0, age))} old")
    if age > max_age_s:
        return CheckResult("freshness", False, f"{text} > {format_duration(max_age_s)}")
    return CheckResult("freshness", True, f"{text} (max {format_duration(max_age_s)})")


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
    now: datetime,
) -> list[CheckResult]:
    names = inspector.names
    return [
        _guarded("freshness", lambda: freshness(
            last_batch(inspector, names, dialect, topic), now, max_age_s)),
        _guarded("unique_key", lambda: unique_key(
            fetch(inspector, duplicate_keys_sql(names.current, dialect)))),
        _guarded("not_null", lambda: not_null(not_null_columns, fetch(
            inspector, null_counts_sql(names.current, not_null_columns, dialect))[0])),
    ]


def render(results: Sequence[CheckResult]) -> str:
    failed = sum(not r.ok for r in results)
    summary = f"{failed} of {len(results)} check(s) failed" if failed else "all checks passed"
    return "\n".join([*(r.line() for r in results), summary])


def to_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "checks": [{"name": r.name, "ok": r.ok, "reason": r.reason} for r in results],
    }
