"""Latest-per-key reduction of columnar batches: the reducer the run loop uses.

The latest event of a key is the one with the greatest (op_time, partition, offset); the
one-at-a-time reference in ``tests/oracles`` is its oracle. Batches of events arrive as polars
frames; they are kept as they are until they hold half as many rows as the reduced state, then
state and batches are compacted in one sort: memory follows the number of distinct keys (at most
one and a half times it between compactions, plus the sort's own copy of the key and version
columns), and each event is sorted a bounded number of times. Half rather than as many: the peak
of a compaction is lower by a quarter of the state, for half as much sorting again (three rows
sorted per event instead of two; a few per cent of the ingest's time).

Frames decoded from different writer schemas may hold different columns (a field added or removed
upstream): ``aligned`` lines them up by name before they are reduced, a column a frame lacks being
null in its rows. A column's values have one type whatever the writer's (``int`` and ``long`` are
both 64-bit integers until the warehouse stores them), so aligning never converts a value.

With ``keep_versions`` (profile history on) the reducer keeps every distinct (key, version)
instead of the latest per key: history needs each version the window saw, not only the winner.
A compaction then only drops redeliveries (the same key and version, i.e. the same Kafka
position): the pending rows are made distinct and those the state already holds are removed
(lookups that hash the pending side, on the position packed into one integer), and the rest is
appended to the state without copying it. So memory follows the distinct
versions of the window, plus at most a quarter of them pending; the winners are picked from the
versions when the window drains. Versions of different writer schemas are aligned the same
way: a version carries null in a column its writer schema lacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from batcher.ranges import PartitionRange
from schemas.columns import KEY, VERSION


@dataclass(frozen=True, slots=True)
class Reduced:
    """What a window reduces to: one row per key (its latest event) and the offsets covered;
    with ``keep_versions``, also every distinct version of each key."""

    rows: pl.DataFrame | None
    """None when no event of the window yielded a row (all were dead-lettered)."""
    ranges: tuple[PartitionRange, ...]
    events: int
    invalid: int
    payload_bytes: int
    versions: pl.DataFrame | None = None
    """Every distinct (key, version) of the window, ``rows`` among them; None unless the reducer
    keeps versions (or when ``rows`` is None)."""



def latest_rows(frame: pl.DataFrame) -> pl.Series:
    """The row numbers of the latest row of each key (the greatest version; a full duplicate
    keeps either), in ascending order. Only the key and version columns are sorted."""
    return (
        frame.select(KEY, *VERSION)
        .with_row_index("_row")
        .sort([KEY, *VERSION])
        .filter(pl.col(KEY).is_last_distinct())
        .get_column("_row")
        .sort()  # a gather in row order reads each chunk in turn: several times faster
    )


def latest_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key: the row with the greatest version (a full duplicate keeps either).

    The other columns are gathered once, for the winners: the peak is the winners' copy, not a
    sorted copy of every row."""
    return own_strings(frame[latest_rows(frame)])


def _latest_of(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """``latest_per_key`` of the frames stacked, taking them over (the list is emptied). The
    winners are gathered one column at a time and each column of the frames is released once
    gathered, so the peak is the frames plus one gathered column, not frames plus winners."""
    frame = aligned(frames)
    frames.clear()
    rows = latest_rows(frame)
    columns: list[pl.Series] = []
    for name in frame.columns:
        columns.append(own_strings(frame.get_column(name).gather(rows).to_frame()).to_series())
        frame = frame.drop(name)
    return pl.DataFrame(columns)


def own_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its string columns copied into buffers of their own. A gathered string
    keeps pointing into the buffer of the frame it came from, which then stays alive whole: the
    state would hold the strings of every batch any winner came from (most of the window's
    events), not only the winners'."""
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not strings:
        return frame
    return frame.with_columns(pl.concat_str([pl.col(name), pl.lit("")]) for name in strings)


def aligned(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The frames as one, columns lined up by name (null where a frame lacks one); a column
    with two types is a programming error (``polars`` raises)."""
    first = frames[0].schema
    if all(f.schema == first for f in frames[1:]):
        return pl.concat(frames, how="vertical", rechunk=False)
    return pl.concat(frames, how="diagonal", rechunk=False)


def distinct_versions(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (key, version): a redelivered event is kept once (either copy; both carry the
    same message). As in ``latest_per_key``, only the key and version columns are hashed and the
    other columns gathered once."""
    kept = (
        frame.select(KEY, *VERSION)
        .with_row_index("_row")
        .unique(subset=[KEY, *VERSION], keep="any")
        .get_column("_row")
        .sort()
    )
    return frame if kept.len() == frame.height else frame[kept]


POSITION_BITS = 48
"""A Kafka position (partition, offset) packs into one int64 as ``partition << 48 | offset``
while offsets stay below 2**48 and partitions below 2**15 (always, in practice); otherwise the
reducer compares (key, version) columns instead, exact too, with more memory."""


def packable(rows: pl.DataFrame) -> bool:
    """Every position of ``rows`` packs into one int64 (``POSITION_BITS``)."""
    if rows.height == 0:
        return True
    bounds = rows.select(
        pl.col("src_offset").min().alias("o0"), pl.col("src_offset").max().alias("o1"),
        pl.col("src_partition").min().alias("p0"), pl.col("src_partition").max().alias("p1"),
    ).row(0)
    o0, o1, p0, p1 = (int(v) for v in bounds)
    return o0 >= 0 and o1 < 2**POSITION_BITS and p0 >= 0 and p1 < 2**(63 - POSITION_BITS)


def positions(rows: pl.DataFrame) -> pl.Series:
    """Each row's Kafka position as one int64 (only for ``packable`` rows). A position names one
    message, so it names one version: the same position is the same event redelivered."""
    return rows.select(
        pl.col("src_partition").cast(pl.Int64) * 2**POSITION_BITS + pl.col("src_offset")
    ).to_series()


def _append_new_versions(
    state: pl.DataFrame | None, pending: list[pl.DataFrame], packed: bool
) -> pl.DataFrame:
    """``state`` (distinct versions) with the versions of ``pending`` it lacks appended, without
    copying ``state``. The lookups hash the pending side only and scan the state side."""
    new = aligned(pending)
    if not packed:
        new = distinct_versions(new)
        if state is not None:
            ids = [KEY, *VERSION]
            known = state.select(ids).join(new.select(ids), on=ids, how="semi")
            if known.height:
                new = new.join(known, on=ids, how="anti")
    else:
        mine = positions(new)
        keep = mine.is_first_distinct()
        if state is not None:
            held = positions(state)
            seen = held.filter(held.is_in(mine.implode()))
            if seen.len():
                keep &= ~mine.is_in(seen.implode())
        if not keep.all():
            new = new.filter(keep)
    return new if state is None else aligned([state, new])


class Reducer:
    """Not thread-safe; one per consumer. Added frames hold the key and version columns and
    any payload columns (``aligned``).

    ``keep_versions``: keep every distinct version of each key (for the history table), not only
    the latest."""

    def __init__(self, compact_min_rows: int = 200_000, keep_versions: bool = False) -> None:
        if compact_min_rows <= 0:
            raise ValueError("compact_min_rows must be > 0")
        self.compact_min_rows = compact_min_rows
        self.keep_versions = keep_versions
        self._packed = True  # every position seen so far packs into one int64
        self._state: pl.DataFrame | None = None
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._first: dict[int, int] = {}
        self._next: dict[int, int] = {}
        self._events = 0
        self._invalid = 0
        self._bytes = 0

    @property
    def events(self) -> int:
        """Events seen since the last drain (valid and invalid)."""
        return self._events

    @property
    def invalid(self) -> int:
        """Events since the last drain that yielded no row (dead-lettered)."""
        return self._invalid

    @property
    def payload_bytes(self) -> int:
        return self._bytes

    @property
    def keys_at_most(self) -> int:
        """Distinct keys buffered (distinct versions with ``keep_versions``), counted exactly at
        the last compaction plus rows added since."""
        return (0 if self._state is None else self._state.height) + self._pending_rows

    def track(self, partitions: Sequence[int], offsets: Sequence[int], size: int = 0) -> None:
        """Account for events seen (whether they yield a row or not): count and offset ranges."""
        count = len(offsets)
        if count == 0:
            return
        self._events += count
        self._bytes += size
        parts = np.asarray(partitions, dtype=np.int64)
        offs = np.asarray(offsets, dtype=np.int64)
        distinct = np.unique(parts).tolist()
        for partition in distinct:
            mine = offs[parts == partition] if len(distinct) > 1 else offs
            low, high = int(mine.min()), int(mine.max())
            if partition in self._next:
                self._first[partition] = min(self._first[partition], low)
                self._next[partition] = max(self._next[partition], high + 1)
            else:
                self._first[partition] = low
                self._next[partition] = high + 1

    def reject(self, count: int = 1) -> None:
        """Count tracked events that yield no row (sent to the dead-letter topic)."""
        self._invalid += count

    def add(self, rows: pl.DataFrame) -> None:
        """Offer rows of tracked events (key, version columns and payload columns)."""
        if rows.height == 0:
            return
        self._pending.append(rows)
        self._pending_rows += rows.height
        if self.keep_versions and self._packed:
            self._packed = packable(rows)
        state_rows = 0 if self._state is None else self._state.height
        # Each compaction reads the state once: amortized over as many pending rows as a share
        # of it. Versions are only appended to, so a compaction of theirs is cheaper.
        state_rows //= 4 if self.keep_versions else 2
        if self._pending_rows >= max(self.compact_min_rows, state_rows):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        if self.keep_versions:
            self._state = _append_new_versions(self._state, self._pending, self._packed)
        else:
            frames = ([] if self._state is None else [self._state]) + self._pending
            self._state = None
            self._pending = []
            self._state = _latest_of(frames)
        self._pending = []
        self._pending_rows = 0

    def partitions(self) -> frozenset[int]:
        return frozenset(self._next)

    def ranges(self) -> tuple[PartitionRange, ...]:
        """The offsets seen so far, per partition (a snapshot; nothing is drained)."""
        return tuple(PartitionRange(p, self._first[p], self._next[p]) for p in sorted(self._next))

    def drain(self) -> Reduced:
        """Hand over the window's content and start empty."""
        self._compact()
        rows, versions = self._state, None
        if self.keep_versions and rows is not None:
            rows, versions = latest_per_key(rows), rows
        reduced = Reduced(
            rows=rows, ranges=self.ranges(), events=self._events, invalid=self._invalid,
            payload_bytes=self._bytes, versions=versions,
        )
        self.clear()
        return reduced

    def clear(self) -> None:
        self._packed = True
        self._state = None
        self._pending = []
        self._pending_rows = 0
        self._first = {}
        self._next = {}
        self._events = 0
        self._invalid = 0
        self._bytes = 0
