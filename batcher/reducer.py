"""Latest-per-key reduction of columnar batches: the reducer the run loop uses.

The latest event of a key is the one with the greatest (op_time, partition, offset); the
one-at-a-time reference in ``tests/oracles`` is its oracle. Batches of events arrive as polars
frames; they are kept as they are until they hold a third as many rows as the reduced state, then
compacted into it. A compaction sorts the pending rows' key and version columns only, to find the
latest pending row of each key, and meets the state by a hash join on the key: a state row newer
than (or as new as) the pending one stays, otherwise the pending row replaces it. The state is
never sorted again, so each event is sorted once; the state's columns are copied once per
compaction (without its superseded rows), one column at a time, each released once copied.
Memory follows the number of distinct keys: at most four thirds of it between compactions (with
``background``, batches arriving while a compaction runs add up to a third of the state again).
A third rather than a half: a 1M-profile window peaks ~25 MiB lower, for a compaction every
333k events instead of 500k (each copies the state once, on a CPU of its own in the loop).

Each compaction copies the state's strings and bytes into buffers of their own: gathered values
point into the buffers of the batches they came from (losers and superseded rows included), which
would otherwise stay alive whole. Copying them costs less than the buffers it frees.

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

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

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
    # A gather in row order reads each chunk in turn: several times faster.
    return _latest_versions(frame).get_column("_row").sort()


def latest_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key: the row with the greatest version (a full duplicate keeps either).

    The other columns are gathered once, for the winners: the peak is the winners' copy, not a
    sorted copy of every row."""
    return own_buffers(frame[latest_rows(frame)])


def _latest_versions(frame: pl.DataFrame) -> pl.DataFrame:
    """The key and version of each key's latest row of ``frame``, with its row number (``_row``).
    Only the key and version columns are sorted."""
    return (
        frame.select(KEY, *VERSION)
        .with_row_index("_row")
        .sort([KEY, *VERSION])
        .filter(pl.col(KEY).is_last_distinct())
    )


def _pending_is_newer() -> pl.Expr:
    """After a join of pending winners with the state on the key (state columns suffixed
    ``_state``): True where the pending row's version is greater. An equal version is the same
    event redelivered: the state's row stays."""
    time, partition, offset = (pl.col(name) for name in VERSION)
    time_s, partition_s, offset_s = (pl.col(f"{name}_state") for name in VERSION)
    return (
        (time > time_s)
        | ((time == time_s) & (
            (partition > partition_s) | ((partition == partition_s) & (offset > offset_s))
        ))
    ).fill_null(False)


def _merge_latest(held: list[pl.DataFrame], frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The state (``held``: one frame, one row per key, or none) with the latest rows of
    ``frames`` merged in, taking both over (the lists are emptied: nothing else may refer to
    them). The new state is built one column at a time, each source column released once
    copied: the peak is state and frames plus one column. Its strings are copied into buffers
    of their own (``own_buffers``)."""
    state = held.pop() if held else None
    pending = aligned(frames)
    frames.clear()
    if state is None:
        return latest_per_key(pending)
    winners = _latest_versions(pending)
    met = winners.join(
        state.select(KEY, *VERSION).with_row_index("_state_row"),
        on=KEY, how="inner", suffix="_state", nulls_equal=True,
    ).select("_row", "_state_row", _pending_is_newer().alias("_newer"))
    newer = met.get_column("_newer")
    keep_state = None
    superseded = met.get_column("_state_row").filter(newer).to_numpy()
    if len(superseded):
        mask = np.ones(state.height, dtype=bool)
        mask[superseded] = False
        keep_state = pl.Series(mask)
    rows = winners.get_column("_row")
    older = met.get_column("_row").filter(~newer)
    if older.len():
        rows = rows.filter(~rows.is_in(older.implode()))
    rows = rows.sort()  # a gather in row order reads each chunk in turn
    del winners, met
    if state.schema != pending.schema:
        state, pending = _lined_up(state, pending)
    columns: list[pl.Series] = []
    for name in state.columns:
        kept = state.get_column(name)
        if keep_state is not None:
            kept = kept.filter(keep_state)
        column = pl.concat([kept, pending.get_column(name).gather(rows)], rechunk=False)
        columns.append(own_buffers(column.to_frame()).to_series())
        state, pending = state.drop(name), pending.drop(name)
    return pl.DataFrame(columns)


def _lined_up(a: pl.DataFrame, b: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both frames with the columns of both, in one order (null where a frame lacks one)."""
    schema = pl.concat([a.clear(), b.clear()], how="diagonal").schema
    return tuple(  # type: ignore[return-value]
        f.with_columns(
            pl.lit(None, dtype).alias(name) for name, dtype in schema.items() if name not in f
        ).select(schema.names())
        for f in (a, b)
    )


def own_buffers(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its string and binary columns copied into buffers of their own. A gathered
    or filtered value keeps pointing into the buffers of the frame it came from, which then stay
    alive whole: the state would hold the values of every batch any winner came from (most of
    the window's events), not only the winners'."""
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if strings:
        frame = frame.with_columns(pl.concat_str([pl.col(name), pl.lit("")]) for name in strings)
    binaries = [name for name, dtype in frame.schema.items() if dtype == pl.Binary]
    if binaries:  # exported to Arrow, a column carries only the bytes its rows use
        frame = frame.with_columns(
            pl.from_arrow(frame.get_column(name).to_arrow()).alias(name)  # type: ignore[union-attr]
            for name in binaries
        )
    return frame


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


def _in_background(work: Callable[[], pl.DataFrame]) -> Future[pl.DataFrame]:
    """Run ``work`` on a thread of its own; its result (or its error) is the future's."""
    future: Future[pl.DataFrame] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as err:  # handed to whoever takes the result
            future.set_exception(err)

    threading.Thread(target=run, name="kyc-sync-compact", daemon=True).start()
    return future


class Reducer:
    """Not thread-safe; one per consumer. Added frames hold the key and version columns and
    any payload columns (``aligned``).

    ``keep_versions``: keep every distinct version of each key (for the history table), not only
    the latest.

    ``background``: a compaction runs on a thread of its own while ``add`` goes on taking
    batches (polars releases the GIL: on a second CPU, the compaction costs the caller nothing).
    At most one runs at a time: the next compaction, ``drain`` and ``clear`` wait for it (one
    compaction: under a second for a million keys); its error is raised there. The rows reduced
    are the same; memory holds, besides, the batches added while a compaction runs."""

    def __init__(
        self, compact_min_rows: int = 200_000, keep_versions: bool = False,
        background: bool = False,
    ) -> None:
        if compact_min_rows <= 0:
            raise ValueError("compact_min_rows must be > 0")
        self.compact_min_rows = compact_min_rows
        self.keep_versions = keep_versions
        self.background = background
        self._packed = True  # every position seen so far packs into one int64
        self._state: pl.DataFrame | None = None
        self._merging: Future[pl.DataFrame] | None = None
        self._merging_rows = 0  # the rows the compaction in flight was given (state + pending)
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
        return self._state_rows() + self._pending_rows

    def _state_rows(self) -> int:
        """Rows of the state: counted exactly, or what the compaction in flight was given."""
        return self._merging_rows if self._state is None else self._state.height

    def track(
        self, partitions: Sequence[int] | np.ndarray[Any, Any],
        offsets: Sequence[int] | np.ndarray[Any, Any], size: int = 0,
    ) -> None:
        """Account for events seen (whether they yield a row or not): count and offset ranges.
        Arrays of int64 are taken as they are (no copy)."""
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
        if self._merging is not None and self._merging.done():
            self._settle()
        state_rows = self._state_rows()
        # Each compaction reads the state once: amortized over as many pending rows as a share
        # of it (a third: see the module's docstring). Versions are only appended to, so a
        # compaction of theirs is cheaper.
        state_rows //= 4 if self.keep_versions else 3
        if self._pending_rows >= max(self.compact_min_rows, state_rows):
            self._compact(self.background)

    def _compact(self, background: bool = False) -> None:
        """Fold the pending frames into the state (after the compaction in flight)."""
        self._settle()
        if not self._pending:
            return
        rows = self._state_rows() + self._pending_rows
        if self.keep_versions:
            work = partial(_append_new_versions, self._state, self._pending, self._packed)
        else:  # handed over in lists the merge empties: it frees each column once copied
            work = partial(_merge_latest, [] if self._state is None else [self._state],
                           self._pending)
        self._state, self._pending, self._pending_rows = None, [], 0
        if background:
            self._merging, self._merging_rows = _in_background(work), rows
        else:
            self._state = work()

    def _settle(self) -> None:
        """Wait for the compaction in flight, if any; its result is the state."""
        merging = self._merging
        if merging is None:
            return
        self._merging, self._merging_rows = None, 0
        self._state = merging.result()

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
        if self._merging is not None:
            self._merging.exception()  # waits; what it built is dropped, its error too
            self._merging, self._merging_rows = None, 0
        self._packed = True
        self._state = None
        self._pending = []
        self._pending_rows = 0
        self._first = {}
        self._next = {}
        self._events = 0
        self._invalid = 0
        self._bytes = 0
