"""The reference profile history: the oracle of the history table, built from the events alone.

Per key, its distinct events (one per version: a redelivery is the same version) sorted by
(op_time, partition, offset); each is valid from its op_time until the next one's (open for the
last, the current one). A DELETE is a version too, flagged deleted. No reducer, no SQL.

Intervals are named tuples and events plain tuples: the chaos run builds this oracle over
hundreds of thousands of events.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Generic, NamedTuple, TypeVar

from tests.oracles.reducer import Version

P = TypeVar("P")

HistoryEvent = tuple[int, int, int, int, str, P]
"""(key, op_time, partition, offset, op_type, payload); op_time in microseconds."""


class Interval(NamedTuple, Generic[P]):
    """One row of the history table."""

    key: int
    op_time: int
    partition: int
    offset: int
    op_type: str
    payload: P
    valid_to: int | None
    """The next version's op_time (microseconds); None for the current version."""

    @property
    def version(self) -> Version:
        return Version(self.op_time, self.partition, self.offset)

    @property
    def valid_from(self) -> int:
        return self.op_time

    @property
    def is_current(self) -> bool:
        return self.valid_to is None

    @property
    def is_deleted(self) -> bool:
        return self.op_type == "DELETE"

    def live_at(self, moment: int) -> bool:
        """A live version of the profile at ``moment``: [valid_from, valid_to), not deleted."""
        return (not self.is_deleted and self.op_time <= moment
                and (self.valid_to is None or moment < self.valid_to))


def build_history(events: Iterable[HistoryEvent[P]]) -> dict[int, tuple[Interval[P], ...]]:
    """``events`` in any order, duplicates allowed (the first one of a version is kept). Per key
    its intervals, oldest first."""
    per_key: dict[int, dict[tuple[int, int, int], tuple[str, P]]] = {}
    for key, op_time, partition, offset, op_type, payload in events:
        per_key.setdefault(key, {}).setdefault((op_time, partition, offset), (op_type, payload))
    history: dict[int, tuple[Interval[P], ...]] = {}
    for key in sorted(per_key):
        # Plain tuples sort in C, in the order of ``Version``: (op_time, partition, offset).
        versions = sorted(per_key[key].items(), key=itemgetter(0))
        nexts = [version[0] for version, _ in versions[1:]] + [None]
        history[key] = tuple(
            Interval(key, op_time, partition, offset, op_type, payload, valid_to)
            for ((op_time, partition, offset), (op_type, payload)), valid_to
            in zip(versions, nexts, strict=True)
        )
    return history


def as_of(history: dict[int, tuple[Interval[P], ...]], moment: int) -> dict[int, Interval[P]]:
    """The live version of each profile at ``moment`` (absent: not yet seen, or deleted)."""
    live: dict[int, Interval[P]] = {}
    for key, intervals in history.items():
        for interval in intervals:
            if interval.live_at(moment):
                live[key] = interval
    return live
