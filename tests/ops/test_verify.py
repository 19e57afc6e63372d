"""Unit tests of ``verify``'s comparison (``reconcile``, pure) and of ``StreamState``, the
in-memory stand-in for the guarded MERGE: each kind of difference found exactly, rows past the
committed offsets and rows from trimmed history not judged, and the metrics of a scheduled run.
No network; the real stream and warehouses are in tests/integration/test_verify.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest
from prometheus_client import generate_latest

from consumer.ops.offsets import PartitionOffsets
from consumer.ops.verify import (
    SCHEMA,
    Reconciliation,
    StreamState,
    VerifyPlan,
    reconcile,
    state_frame,
    verdict_metrics,
)
from tests.oracles.reducer import ReferenceReducer
from tests.oracles.staging import Row, build_staged
from warehouse.base import Batch

T0 = datetime(2026, 1, 1)


def row(key: int, minute: int, partition: int, offset: int, gold: str = "g",
        deleted: bool = False) -> tuple[Any, ...]:
    """A state row (``COMPARED_COLUMNS``)."""
    return (key, None if deleted else f"{gold}-{key}", f"C{key}", f"P{key}", T0, T0,
            "DELETE" if deleted else "UPDATE", T0 + timedelta(minutes=minute), partition, offset,
            deleted)


PLAN = VerifyPlan("audit", "g", (
    PartitionOffsets(0, 10, 0, 12),  # read 0-9; 10, 11 not committed yet
    PartitionOffsets(1, 8, 3, 8),  # retention dropped 0-2: read 3-7
))
STREAM = [row(1, 1, 0, 1), row(2, 2, 0, 2), row(3, 3, 0, 3), row(4, 4, 0, 4),
          row(5, 5, 0, 5, deleted=True), row(6, 6, 1, 4), row(7, 7, 1, 5)]


def check(table: list[tuple[Any, ...]]) -> Reconciliation:
    return reconcile(PLAN, state_frame(STREAM), state_frame(table), events=9)


def test_a_table_equal_to_the_stream_is_clean() -> None:
    result = check(list(STREAM))
    assert result.ok
    assert result.counts == {"missing": 0, "extra": 0, "stale": 0, "mismatched": 0}
    assert (result.stream_live, result.table_live) == (6, 6)
    assert "OK: the table equals the stream" in result.render()


def test_each_difference_is_found_exactly() -> None:
    table = [
        row(1, 1, 0, 1, gold="DRIFT"),  # changed behind kyc-sync's back: mismatched
        # 2 deleted behind its back: missing
        row(3, 0, 0, 0),  # an older version: stale
        row(4, 4, 0, 4, deleted=True),  # deleted in the table, live in the stream: missing
        row(5, 5, 0, 5),  # a missing delete: extra
        row(6, 6, 1, 4), row(7, 7, 1, 5),
        row(8, 8, 0, 7),  # added behind its back, with a version inside the read range: extra
    ]
    result = check(table)
    assert result.counts == {"missing": 2, "extra": 2, "stale": 1, "mismatched": 1}
    assert [f.key for f in result.examples["missing"]] == [2, 4]
    assert [f.key for f in result.examples["extra"]] == [5, 8]
    assert [f.key for f in result.examples["stale"]] == [3]
    (drift,) = result.examples["mismatched"]
    assert drift.key == 1
    assert "goldtier_id=DRIFT-1" in drift.table
    assert "goldtier_id=g-1" in drift.stream
    assert result.examples["missing"][0].table == "has no row"
    assert not result.ok
    assert "FAIL: 6 profile(s) differ from the stream" in result.render()


def test_rows_past_the_committed_offsets_or_in_trimmed_history_are_not_judged() -> None:
    table = [*STREAM,
             row(20, 9, 0, 11),  # applied, not committed yet
             row(21, 9, 2, 0),  # a partition the plan does not know
             row(22, 0, 1, 1)]  # from history retention dropped, nothing newer in the stream
    result = check(table)
    assert result.ok
    assert (result.ahead, result.ahead_examples) == (2, (20, 21))
    assert (result.unjudged_trimmed, result.unjudged_trimmed_examples) == (1, (22,))
    text = result.render()
    assert "not judged: 2 row(s) newer than the committed offsets" in text
    assert "retention trimmed partition(s) 1 (from offset 3): 1 row(s)" in text
    data = result.to_json()
    assert data["not_judged"]["trimmed_partitions"] == [{"partition": 1, "log_start": 3}]


def test_a_trimmed_row_older_than_the_stream_is_stale() -> None:
    table = [r for r in STREAM if r[0] != 6] + [row(6, 0, 1, 1)]
    assert check(table).counts["stale"] == 1


def test_stream_state_keeps_the_greatest_version_of_every_batch() -> None:
    state = StreamState()
    reducer: ReferenceReducer[Row] = ReferenceReducer()
    events = [(1, 5, 0, 0, "INSERT"), (1, 9, 0, 1, "UPDATE"), (2, 5, 1, 0, "INSERT")]
    later = [(1, 7, 0, 2, "UPDATE"), (2, 6, 1, 1, "DELETE")]  # 1: older op_time; 2: deleted
    for group in (events, later):
        for key, minute, partition, offset, op in group:
            micros = int((T0 + timedelta(minutes=minute) - datetime(1970, 1, 1))
                         .total_seconds() * 1_000_000)
            reducer.add(key, micros, partition, offset, op, (key, op, None, None, None, None))
        reduced = reducer.drain()
        state.apply(Batch("b", "audit", "g", build_staged(reduced.winners, "b", 0),
                          reduced.ranges, reduced.events, 0, T0))
    rows = state.rows().sort("kyc_profile_id")
    assert rows.schema == pl.Schema(SCHEMA)
    assert rows.select("kyc_profile_id", "op_type", "src_offset", "is_deleted").rows() == [
        (1, "UPDATE", 1, False), (2, "DELETE", 1, True)]


@pytest.mark.parametrize("reached", [True, False])
def test_verdict_metrics(reached: bool) -> None:
    result = check([row(1, 1, 0, 1, gold="DRIFT"), *STREAM[1:]]) if reached else None
    text = generate_latest(verdict_metrics("audit", "g", result, 1_800_000_000.0)).decode()
    assert 'kyc_sync_verify_last_run_timestamp_seconds{group="g",topic="audit"} 1.8e+09' in text
    assert f'kyc_sync_verify_success{{group="g",topic="audit"}} {1.0 if reached else 0.0}' in text
    if reached:
        assert 'kyc_sync_verify_differences{group="g",kind="mismatched",topic="audit"} 1.0' in text
    else:
        assert "kyc_sync_verify_differences{" not in text
