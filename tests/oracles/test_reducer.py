"""Unit tests of the latest-per-key reducer: ordering, offsets bookkeeping, and its algebra."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.ranges import PartitionRange
from tests.oracles.reducer import ReferenceReduced, ReferenceReducer, Version, Winner


@dataclass(frozen=True)
class Ev:
    """One audit event as the reducer sees it; ``payload`` tells events apart in the results."""

    key: int
    op_time: int
    partition: int
    offset: int
    op_type: str = "UPDATE"
    payload: str = ""

    @property
    def version(self) -> Version:
        return Version(self.op_time, self.partition, self.offset)

    @property
    def label(self) -> str:
        return self.payload or f"{self.op_type}@{self.op_time}/{self.partition}:{self.offset}"


def reduce_all(events: Sequence[Ev]) -> ReferenceReduced[str]:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    for e in events:
        reducer.add(e.key, e.op_time, e.partition, e.offset, e.op_type, e.label)
    return reducer.drain()


def by_key(reduced: ReferenceReduced[str]) -> dict[int, tuple[Version, str, str]]:
    return {w.key: (w.version, w.op_type, w.payload) for w in reduced.winners}


# --------------------------------------------------------------------------- who wins

WINNER_CASES = [
    pytest.param(
        [Ev(1, 200, 0, 1, payload="newer"), Ev(1, 100, 0, 2, payload="older")],
        "newer",
        id="out-of-order-op-time-older-arrives-last",
    ),
    pytest.param(
        [Ev(1, 100, 0, 2, payload="older"), Ev(1, 200, 0, 1, payload="newer")],
        "newer",
        id="out-of-order-op-time-newer-arrives-last",
    ),
    pytest.param(
        [Ev(1, 100, 0, 5, payload="a"), Ev(1, 100, 0, 6, payload="b")],
        "b",
        id="equal-op-time-later-offset-wins",
    ),
    pytest.param(
        [Ev(1, 100, 0, 6, payload="b"), Ev(1, 100, 0, 5, payload="a")],
        "b",
        id="equal-op-time-later-offset-wins-arriving-first",
    ),
    pytest.param(
        [Ev(1, 100, 1, 0, payload="p1"), Ev(1, 100, 0, 999, payload="p0")],
        "p1",
        id="equal-op-time-later-partition-wins-over-higher-offset",
    ),
    pytest.param(
        [Ev(1, 100, 0, 999, payload="p0"), Ev(1, 100, 1, 0, payload="p1")],
        "p1",
        id="equal-op-time-later-partition-wins-arriving-last",
    ),
    pytest.param(
        [Ev(1, 101, 0, 0, payload="time"), Ev(1, 100, 9, 999, payload="position")],
        "time",
        id="op-time-dominates-kafka-position",
    ),
    pytest.param(
        [Ev(1, 300, 0, 7, "DELETE", "del"), Ev(1, 100, 0, 8, "INSERT", "ins")],
        "del",
        id="delete-then-older-insert-delete-stays",
    ),
    pytest.param(
        [Ev(1, 100, 0, 7, "DELETE", "del"), Ev(1, 300, 0, 8, "INSERT", "ins")],
        "ins",
        id="delete-then-newer-insert-insert-wins",
    ),
    pytest.param(
        [Ev(1, 100, 0, 7, "INSERT", "ins"), Ev(1, 100, 0, 8, "DELETE", "del")],
        "del",
        id="insert-and-delete-same-op-time-later-offset-wins",
    ),
]


@pytest.mark.parametrize(("events", "expected"), WINNER_CASES)
def test_latest_event_wins(events: list[Ev], expected: str) -> None:
    winners = by_key(reduce_all(events))
    assert list(winners) == [1]
    want = next(e for e in events if e.label == expected)
    assert winners[1] == (want.version, want.op_type, expected)


@pytest.mark.parametrize(
    ("first", "second", "accepted"),
    [
        pytest.param(Ev(1, 100, 0, 1), Ev(1, 200, 0, 2), True, id="newer-accepted"),
        pytest.param(Ev(1, 200, 0, 1), Ev(1, 100, 0, 2), False, id="older-refused"),
        pytest.param(Ev(1, 100, 0, 1), Ev(1, 100, 0, 1), False, id="exact-duplicate-refused"),
        pytest.param(Ev(1, 100, 0, 1), Ev(2, 50, 0, 2), True, id="other-key-accepted"),
    ],
)
def test_add_tells_whether_event_is_now_latest(first: Ev, second: Ev, accepted: bool) -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    assert reducer.add(first.key, first.op_time, first.partition, first.offset, "UPDATE", "a")
    assert (
        reducer.add(second.key, second.op_time, second.partition, second.offset, "UPDATE", "b")
        is accepted
    )


@pytest.mark.parametrize(
    "copies", [pytest.param(2, id="redelivered-once"), pytest.param(5, id="redelivered-4x")]
)
def test_exact_duplicates_keep_first_delivery(copies: int) -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    for i in range(copies):
        reducer.add(7, 100, 3, 42, "INSERT", f"delivery-{i}", size=10)
    reduced = reducer.drain()
    assert by_key(reduced) == {7: (Version(100, 3, 42), "INSERT", "delivery-0")}
    assert reduced.events == copies
    assert reduced.payload_bytes == 10 * copies
    assert reduced.ranges == (PartitionRange(3, 42, 43),)


def test_keys_are_independent() -> None:
    events = [
        Ev(1, 100, 0, 0, payload="k1-old"),
        Ev(2, 500, 0, 1, payload="k2-new"),
        Ev(1, 300, 1, 0, payload="k1-new"),
        Ev(2, 200, 1, 1, payload="k2-old"),
        Ev(3, 1, 0, 2, "DELETE", "k3-only"),
    ]
    winners = by_key(reduce_all(events))
    assert {k: v[2] for k, v in winners.items()} == {1: "k1-new", 2: "k2-new", 3: "k3-only"}
    assert winners[3][1] == "DELETE"


# --------------------------------------------------------------------------- offsets and counters


@pytest.mark.parametrize(
    ("positions", "skipped", "expected"),
    [
        pytest.param([], [], (), id="nothing"),
        pytest.param([(0, 10)], [], (PartitionRange(0, 10, 11),), id="one-event"),
        pytest.param(
            [(0, 10), (0, 11), (0, 12)], [], (PartitionRange(0, 10, 13),), id="contiguous"
        ),
        pytest.param([(0, 10), (0, 15)], [], (PartitionRange(0, 10, 16),), id="gap-covered"),
        pytest.param(
            [(0, 12), (0, 10), (0, 11)], [], (PartitionRange(0, 10, 13),), id="out-of-order"
        ),
        pytest.param(
            [(2, 5), (0, 100), (2, 6), (1, 0)],
            [],
            (PartitionRange(0, 100, 101), PartitionRange(1, 0, 1), PartitionRange(2, 5, 7)),
            id="several-partitions-sorted",
        ),
        pytest.param(
            [(0, 11)], [(0, 10), (0, 12)], (PartitionRange(0, 10, 13),), id="skips-widen-range"
        ),
        pytest.param(
            [], [(4, 7), (4, 8)], (PartitionRange(4, 7, 9),), id="only-invalid-events"
        ),
        pytest.param(
            [(0, 1)],
            [(3, 9)],
            (PartitionRange(0, 1, 2), PartitionRange(3, 9, 10)),
            id="skip-on-other-partition",
        ),
    ],
)
def test_offset_ranges_per_partition(
    positions: list[tuple[int, int]],
    skipped: list[tuple[int, int]],
    expected: tuple[PartitionRange, ...],
) -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    for i, (partition, offset) in enumerate(positions):
        reducer.add(i % 3, 1000 + i, partition, offset, "UPDATE", "x")
    for partition, offset in skipped:
        reducer.skip(partition, offset)
    assert reducer.partitions() == frozenset(r.partition for r in expected)
    reduced = reducer.drain()
    assert reduced.ranges == expected
    assert reduced.next_offsets == {r.partition: r.next_offset for r in expected}
    assert reduced.events == len(positions) + len(skipped)
    assert reduced.invalid == len(skipped)


def test_skip_counts_events_and_bytes_but_yields_no_winner() -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    reducer.add(1, 100, 0, 0, "INSERT", "a", size=30)
    reducer.skip(0, 1, size=7)
    reducer.skip(0, 2)
    assert len(reducer) == 1
    assert reducer.events == 3
    assert reducer.invalid == 2
    assert reducer.payload_bytes == 37
    reduced = reducer.drain()
    assert [w.key for w in reduced.winners] == [1]
    assert (reduced.events, reduced.invalid, reduced.payload_bytes) == (3, 2, 37)
    assert reduced.ranges == (PartitionRange(0, 0, 3),)
    assert reduced.ranges[0].count == 3


@pytest.mark.parametrize(
    ("keys", "expected_len"),
    [
        pytest.param([], 0, id="empty"),
        pytest.param([1], 1, id="one"),
        pytest.param([1, 1, 1], 1, id="same-key-thrice"),
        pytest.param([1, 2, 1, 3, 2], 3, id="three-distinct"),
    ],
)
def test_len_counts_distinct_keys(keys: list[int], expected_len: int) -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    for offset, key in enumerate(keys):
        reducer.add(key, 100, 0, offset, "UPDATE", "x")
    reducer.skip(0, len(keys))
    assert len(reducer) == expected_len
    assert reducer.events == len(keys) + 1


def test_drain_hands_over_and_resets() -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    reducer.add(1, 100, 0, 5, "INSERT", "a", size=3)
    reducer.skip(1, 9, size=4)
    first = reducer.drain()
    assert len(first.winners) == 1
    assert first.events == 2

    assert len(reducer) == 0
    assert (reducer.events, reducer.invalid, reducer.payload_bytes) == (0, 0, 0)
    assert reducer.partitions() == frozenset()
    assert list(reducer.iter_winners()) == []
    empty = reducer.drain()
    assert empty == ReferenceReduced(winners=(), ranges=(), events=0, invalid=0, payload_bytes=0)

    # A key seen in a drained window competes afresh: an older event is accepted again.
    assert reducer.add(1, 50, 0, 6, "UPDATE", "b")
    again = reducer.drain()
    assert again.winners == (Winner(1, Version(50, 0, 6), "UPDATE", "b"),)
    assert again.ranges == (PartitionRange(0, 6, 7),)


def test_clear_discards_window() -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer()
    reducer.add(1, 100, 0, 5, "INSERT", "a", size=3)
    reducer.skip(0, 6)
    reducer.clear()
    empty: ReferenceReduced[str] = ReferenceReduced(
        winners=(), ranges=(), events=0, invalid=0, payload_bytes=0
    )
    assert reducer.drain() == empty


# --------------------------------------------------------------------------- properties

OP_TYPES = ("INSERT", "UPDATE", "DELETE")


@st.composite
def event_streams(draw: st.DrawFn) -> list[Ev]:
    """A delivery sequence: distinct Kafka positions, each one event, some redelivered.

    Few keys, partitions and op_times so that ties on op_time and on partition are common.
    """
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, 2),  # partition
                st.integers(0, 30),  # offset
                st.integers(1, 4),  # key
                st.integers(0, 5),  # op_time
                st.sampled_from(OP_TYPES),
            ),
            max_size=40,
            unique_by=lambda row: (row[0], row[1]),
        )
    )
    events = [Ev(key, time, partition, offset, op) for partition, offset, key, time, op in rows]
    if not events:
        return []
    redelivered = draw(st.lists(st.sampled_from(events), max_size=10))
    return draw(st.permutations(events + redelivered))


def oracle(events: Sequence[Ev]) -> dict[int, tuple[Version, str, str]]:
    """Independent model: per key, the last event of the list sorted by version."""
    result: dict[int, tuple[Version, str, str]] = {}
    for key in {e.key for e in events}:
        latest = sorted(
            (e for e in events if e.key == key), key=lambda e: (e.op_time, e.partition, e.offset)
        )[-1]
        result[key] = (latest.version, latest.op_type, latest.label)
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams())
def test_reducer_matches_oracle(events: list[Ev]) -> None:
    reduced = reduce_all(events)
    assert by_key(reduced) == oracle(events)
    assert len({w.key for w in reduced.winners}) == len(reduced.winners)
    assert reduced.events == len(events)
    expected_ranges = {
        p: (
            min(e.offset for e in events if e.partition == p),
            max(e.offset for e in events if e.partition == p) + 1,
        )
        for p in {e.partition for e in events}
    }
    assert {r.partition: (r.first, r.next_offset) for r in reduced.ranges} == expected_ranges


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams(), st.data())
def test_reducing_chunk_winners_is_associative(events: list[Ev], data: st.DataObject) -> None:
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(events)), max_size=5), label="cut points")
    )
    bounds = [0, *cuts, len(events)]
    chunks = [events[a:b] for a, b in pairwise(bounds)]

    second_pass: ReferenceReducer[str] = ReferenceReducer()
    for chunk in chunks:
        for w in reduce_all(chunk).winners:
            second_pass.add(
                w.key, w.version.op_time, w.version.partition, w.version.offset, w.op_type,
                w.payload,
            )
    assert by_key(second_pass.drain()) == by_key(reduce_all(events))


def test_keep_versions_keeps_each_version_once_first_delivery() -> None:
    reducer: ReferenceReducer[str] = ReferenceReducer(keep_versions=True)
    for e in (Ev(1, 20, 0, 2, payload="b"), Ev(1, 10, 0, 1, payload="a"),
              Ev(1, 20, 0, 2, payload="b-again"), Ev(2, 5, 1, 0, "DELETE", "x")):
        reducer.add(e.key, e.op_time, e.partition, e.offset, e.op_type, e.label)
    out = reducer.drain()
    assert [(v.key, v.version, v.payload) for v in out.versions] == [
        (1, Version(10, 0, 1), "a"), (1, Version(20, 0, 2), "b"), (2, Version(5, 1, 0), "x")]
    assert {w.key: w.payload for w in out.winners} == {1: "b", 2: "x"}
    assert reducer.drain().versions == ()
    assert reduce_all([Ev(1, 1, 0, 0)]).versions == ()  # off by default
