"""The columnar reducer the run loop uses, against the reference ``ReferenceReducer`` as its oracle:
any events, in any order, split into any batches, compacted at any size, reduce to the same
latest row per key, the same offset ranges and the same counts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.ranges import PartitionRange
from batcher.reducer import (
    POSITION_BITS,
    Reducer,
    _merge_latest,
    latest_per_key,
    packable,
    positions,
)
from schemas.columns import KEY
from tests.oracles.reducer import ReferenceReducer, Version

Event = tuple[int, int, int, int, str]  # key, op_time, partition, offset, label

SCHEMA = pl.Schema({
    KEY: pl.Int64, "label": pl.String, "op_time": pl.Int64,
    "src_partition": pl.Int32, "src_offset": pl.Int64,
})


def frame(events: Sequence[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        [[e[0] for e in events], [e[4] for e in events], [e[1] for e in events],
         [e[2] for e in events], [e[3] for e in events]],
        schema=SCHEMA, orient="col",
    )


def oracle(events: Sequence[Event]) -> dict[int, tuple[Version, str]]:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    for key, op_time, partition, offset, label in events:
        reducer.add(key, op_time, partition, offset, "UPDATE", label)
    return {w.key: (w.version, w.payload) for w in reducer.drain().winners}


def reduced(rows: pl.DataFrame | None) -> dict[int, tuple[Version, str]]:
    assert rows is not None
    out = {
        r[KEY]: (Version(r["op_time"], r["src_partition"], r["src_offset"]), r["label"])
        for r in rows.iter_rows(named=True)
    }
    assert len(out) == rows.height, "more than one row for a key"
    return out


def test_latest_wins_and_ties_go_to_the_later_position() -> None:
    events: list[Event] = [
        (1, 200, 0, 1, "newer"), (1, 100, 0, 2, "older-arrives-last"),
        (2, 100, 0, 3, "tie-earlier"), (2, 100, 1, 0, "tie-later-partition"),
        (3, 100, 0, 4, "tie-a"), (3, 100, 0, 5, "tie-b-later-offset"),
    ]
    reducer = Reducer(compact_min_rows=2)
    for e in events:
        reducer.track([e[2]], [e[3]])
        reducer.add(frame([e]))
    out = reducer.drain()
    assert {k: v[1] for k, v in reduced(out.rows).items()} == {
        1: "newer", 2: "tie-later-partition", 3: "tie-b-later-offset"
    }
    assert out.ranges == (PartitionRange(0, 1, 6), PartitionRange(1, 0, 1))
    assert out.events == 6


def test_rejected_events_count_and_still_cover_their_offsets() -> None:
    reducer = Reducer()
    reducer.track([0, 0, 0], [10, 11, 12], size=30)
    reducer.reject(2)
    reducer.add(frame([(1, 5, 0, 10, "only")]))
    out = reducer.drain()
    assert (out.events, out.invalid, out.payload_bytes) == (3, 2, 30)
    assert out.ranges == (PartitionRange(0, 10, 13),)
    assert reducer.events == 0
    assert reducer.drain().rows is None


def test_a_window_of_only_rejected_events_has_no_rows() -> None:
    reducer = Reducer()
    reducer.track([3], [7])
    reducer.reject()
    out = reducer.drain()
    assert out.rows is None
    assert {r.partition: r.next_offset for r in out.ranges} == {3: 8}


def test_compaction_keeps_memory_to_the_distinct_keys() -> None:
    reducer = Reducer(compact_min_rows=100)
    for start in range(0, 10_000, 500):
        batch = [(i % 50, start + i, 0, start + i, "x") for i in range(500)]
        reducer.add(frame(batch))
        assert reducer.keys_at_most <= 50 + 500 + 100
    assert reducer.drain().rows is not None


def test_a_background_compaction_counts_its_rows_until_it_is_done() -> None:
    """While a compaction runs, the keys are bounded by what it was given plus what came since;
    the next compaction and ``drain`` wait for it."""
    reducer = Reducer(compact_min_rows=2, background=True)
    reducer.add(frame([(1, 1, 0, 0, "a"), (1, 2, 0, 1, "b")]))
    assert reducer.keys_at_most == 2
    reducer.add(frame([(2, 1, 0, 2, "c")]))
    assert reducer.keys_at_most <= 3
    reducer.add(frame([(1, 3, 0, 3, "d")]))  # a second compaction: after the first
    out = reducer.drain()
    assert reduced(out.rows) == oracle(
        [(1, 1, 0, 0, "a"), (1, 2, 0, 1, "b"), (2, 1, 0, 2, "c"), (1, 3, 0, 3, "d")])
    assert reducer.keys_at_most == 0


def test_an_error_of_a_background_compaction_is_raised_to_the_caller() -> None:
    """A column of two types (a programming error) fails the compaction on its thread: the next
    call that waits for it raises the error."""
    reducer = Reducer(compact_min_rows=1, background=True)
    reducer.add(frame([(1, 1, 0, 0, "a")]))
    reducer.add(frame([(2, 1, 0, 1, "b")]).with_columns(pl.col("label").cast(pl.Int64,
                                                                             strict=False)))
    with pytest.raises(pl.exceptions.PolarsError):
        reducer.drain()


def test_clear_waits_for_the_background_compaction_and_drops_it() -> None:
    reducer = Reducer(compact_min_rows=1, background=True)
    reducer.track([0], [0])
    reducer.add(frame([(1, 1, 0, 0, "a")]))
    reducer.clear()
    assert (reducer.events, reducer.keys_at_most) == (0, 0)
    assert reducer.drain().rows is None


def test_a_compaction_takes_the_state_and_the_frames_over() -> None:
    """The merge empties the lists it is handed: nothing else refers to the old state while the
    new one is built, so each old column is freed once copied."""
    held = [frame([(1, 1, 0, 0, "a"), (2, 1, 0, 1, "b")])]
    frames = [frame([(1, 2, 0, 2, "c")]), frame([(3, 1, 0, 3, "d")])]
    merged = _merge_latest(held, frames)
    assert (held, frames) == ([], [])
    assert reduced(merged) == oracle(
        [(1, 1, 0, 0, "a"), (2, 1, 0, 1, "b"), (1, 2, 0, 2, "c"), (3, 1, 0, 3, "d")])


def _buffer_bytes(column: pl.Series) -> int:
    """Bytes of the data buffers a string or binary column refers to (Arrow views, no copy)."""
    array = column.to_arrow(compat_level=pl.CompatLevel.newest())
    chunks = array.chunks if hasattr(array, "chunks") else [array]
    return sum({b.address: b.size for c in chunks for b in c.buffers()[2:] if b}.values())


@pytest.mark.parametrize("background", [False, True])
def test_the_state_holds_the_bytes_of_its_rows_not_of_every_batch(background: bool) -> None:
    """String and binary values of the winners are copied out of the decoded batches: the
    state refers to buffers about the size of its own values, not to the batches' whole
    buffers (which would grow with the events of the window, not with its keys)."""
    reducer = Reducer(compact_min_rows=1, background=background)
    for b in range(20):
        keys = [10**6 + b * 1000 + k if k % 100 == 0 else k % 50 for k in range(1000)]
        reducer.add(pl.DataFrame({
            KEY: keys, "text": [f"{k:0200d}" for k in keys],
            "blob": [b"%0200d" % k for k in keys],
            "op_time": list(range(b * 1000, b * 1000 + 1000)),
            "src_partition": [0] * 1000, "src_offset": list(range(b * 1000, b * 1000 + 1000)),
        }, schema_overrides={"src_partition": pl.Int32}))
    rows = reducer.drain().rows
    assert rows is not None
    assert rows.height == 50 + 200
    for name in ("text", "blob"):
        assert _buffer_bytes(rows.get_column(name)) <= 2 * rows.height * 200, name


def test_compact_min_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="compact_min_rows"):
        Reducer(compact_min_rows=0)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Event], list[int], int]:
    """Events with few keys and op_times (ties), unique positions, in any order; batch cuts."""
    count = draw(st.integers(0, 120))
    positions = draw(st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10_000)),
        min_size=count, max_size=count, unique=True,
    ))
    events = [
        (draw(st.integers(0, 15)), draw(st.integers(0, 6)), p, o, f"e{n}")
        for n, (p, o) in enumerate(positions)
    ]
    cuts = sorted(draw(st.lists(st.integers(0, count), max_size=8)))
    return events, cuts, draw(st.integers(1, 40))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.booleans())
def test_matches_the_reference_reducer(
    history: tuple[list[Event], list[int], int], background: bool
) -> None:
    """Compacting on the caller's thread or on one of its own reduces to the same rows."""
    events, cuts, compact_min_rows = history
    reducer = Reducer(compact_min_rows=compact_min_rows, background=background)
    bounds = [0, *cuts, len(events)]
    for start, end in itertools.pairwise(bounds):
        batch = events[start:end]
        reducer.track([e[2] for e in batch], [e[3] for e in batch], size=len(batch))
        reducer.add(frame(batch))
    out = reducer.drain()
    if not events:
        assert out.rows is None
        assert out.ranges == ()
        return
    assert reduced(out.rows) == oracle(events)
    parts = {e[2] for e in events}
    assert out.ranges == tuple(
        PartitionRange(p, min(e[3] for e in events if e[2] == p),
                       max(e[3] for e in events if e[2] == p) + 1)
        for p in sorted(parts)
    )
    assert (out.events, out.payload_bytes) == (len(events), len(events))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_batches_of_different_columns_reduce_to_the_reference(
    history: tuple[list[Event], list[int], int], data: st.DataObject
) -> None:
    """Batches decoded from different writer schemas: a batch may lack the label, or carry a
    column the others lack; each winner keeps its own event's values, null where its batch
    lacked the column, whichever batches the state was compacted from."""
    events, cuts, compact_min_rows = history
    reducer = Reducer(compact_min_rows=compact_min_rows)
    expected: list[Event] = []
    extra: dict[tuple[int, int], str | None] = {}
    bounds = [0, *cuts, len(events)]
    for start, end in itertools.pairwise(bounds):
        batch = events[start:end]
        shape = data.draw(st.sampled_from(("both", "label only", "extra only")))
        rows = frame(batch)
        if shape != "label only":
            rows = rows.with_columns(("x" + pl.col("label")).alias("extra"))
        if shape == "extra only":
            rows = rows.drop("label")
        for e in batch:
            extra[(e[2], e[3])] = None if shape == "label only" else "x" + e[4]
            expected.append(e if shape != "extra only" else (*e[:4], ""))
        reducer.add(rows)
    out = reducer.drain()
    if not events:
        assert out.rows is None
        return
    winners = out.rows
    assert winners is not None
    for name in ("label", "extra"):
        if name not in winners.columns:
            winners = winners.with_columns(pl.lit(None, pl.String).alias(name))
    got = {
        r[KEY]: (Version(r["op_time"], r["src_partition"], r["src_offset"]), r["label"] or "",
                 r["extra"])
        for r in winners.iter_rows(named=True)
    }
    assert len(got) == winners.height, "more than one row for a key"
    want = {
        key: (version, label, extra[(version.partition, version.offset)])
        for key, (version, label) in oracle(expected).items()
    }
    assert got == want


@settings(max_examples=200, deadline=None)
@given(histories())
def test_reducing_twice_changes_nothing(history: tuple[list[Event], list[int], int]) -> None:
    events = history[0]
    once = latest_per_key(frame(events))
    assert latest_per_key(pl.concat([once, frame(events)])).sort(KEY).equals(once.sort(KEY))


# -- keep_versions: every distinct version, for the history table --------------------------------


def versions_oracle(events: Sequence[Event]) -> dict[tuple[int, Version], str]:
    reducer: ReferenceReducer[str] = ReferenceReducer(keep_versions=True)
    for key, op_time, partition, offset, label in events:
        reducer.add(key, op_time, partition, offset, "UPDATE", label)
    return {(v.key, v.version): v.payload for v in reducer.drain().versions}


def versions_of(rows: pl.DataFrame | None) -> dict[tuple[int, Version], str]:
    assert rows is not None
    out = {
        (r[KEY], Version(r["op_time"], r["src_partition"], r["src_offset"])): r["label"]
        for r in rows.iter_rows(named=True)
    }
    assert len(out) == rows.height, "a version kept twice"
    return out


@st.composite
def redelivered(draw: st.DrawFn) -> tuple[list[Event], list[int], int]:
    """``histories`` with redeliveries (the same event again, later) and, sometimes, offsets
    too large to pack into one integer with the partition."""
    events, _, compact_min_rows = draw(histories())
    if draw(st.booleans()):
        events = [(k, t, p, o + 2**POSITION_BITS, label) for k, t, p, o, label in events]
    deliveries = list(events)
    for _ in range(draw(st.integers(0, 30)) if events else 0):
        i = draw(st.integers(0, len(deliveries) - 1))
        deliveries.insert(draw(st.integers(i, len(deliveries))), deliveries[i])
    cuts = sorted(draw(st.lists(st.integers(0, len(deliveries)), max_size=8)))
    return deliveries, cuts, compact_min_rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(redelivered())
def test_keeps_every_distinct_version_once(history: tuple[list[Event], list[int], int]) -> None:
    events, cuts, compact_min_rows = history
    reducer = Reducer(compact_min_rows=compact_min_rows, keep_versions=True)
    bounds = [0, *cuts, len(events)]
    for start, end in itertools.pairwise(bounds):
        batch = events[start:end]
        reducer.track([e[2] for e in batch], [e[3] for e in batch])
        reducer.add(frame(batch))
        distinct = len(set(events))  # pending rows stay below max(min rows, a quarter of state)
        assert reducer.keys_at_most <= distinct + max(compact_min_rows, distinct // 4)
    out = reducer.drain()
    if not events:
        assert (out.rows, out.versions) == (None, None)
        return
    assert versions_of(out.versions) == versions_oracle(events)
    assert reduced(out.rows) == oracle(events)  # the winners are the same as without history
    assert out.events == len(events)


def test_versions_memory_follows_distinct_versions_not_deliveries() -> None:
    reducer = Reducer(compact_min_rows=100, keep_versions=True)
    events = [(i % 50, i, 0, i, f"e{i}") for i in range(300)]
    for _ in range(20):  # the same 300 events delivered 20 times
        for start in range(0, 300, 50):
            reducer.add(frame(events[start:start + 50]))
        assert reducer.keys_at_most <= 300 + 100 + 50
    out = reducer.drain()
    assert out.versions is not None
    assert out.versions.height == 300
    assert out.rows is not None
    assert out.rows.height == 50


def test_positions_pack_only_when_they_fit() -> None:
    fits = frame([(1, 0, 3, 2**POSITION_BITS - 1, "a")])
    assert packable(fits)
    assert positions(fits).to_list() == [3 * 2**POSITION_BITS + 2**POSITION_BITS - 1]
    assert not packable(frame([(1, 0, 0, 2**POSITION_BITS, "a")]))
    assert not packable(frame([(1, 0, 2**15, 0, "a")]))
