"""The reference profile history: the oracle of the history table, built from the events alone.

Per key, its distinct events (one per version: a redelivery is the same version) sorted by
(op_time, partition, offset); each is valid from its op_time until the next one's (open for the
last, the current one). A DELETE is a version too, flagged deleted. No reducer, no SQL.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tests.oracles.reducer import Version

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Interval(Generic[P]):
    """One row of the history table."""

    key: int
    version: Version
    op_type: str
    payload: P
    valid_to: int | None
    """The next version's op_time (microseconds); None for the current version."""

    @property
    def valid_from(self) -> int:
        return self.version.op_time

    @property
    def is_current(self) -> bool:
        return self.valid_to is None

    @property
    def is_deleted(self) -> bool:
        return self.op_type == "DELETE"

    def live_at(self, moment: int) -> bool:
        """A live version of the profile at ``moment``: [valid_from, valid_to), not deleted."""
        return (not self.is_deleted and self.valid_from <= moment
                and (self.valid_to is None or moment < self.valid_to))


def build_history(
    events: Iterable[tuple[int, Version, str, P]],
) -> dict[int, tuple[Interval[P], ...]]:
    """``events``: (key, version, op_type, payload), in any order, duplicates allowed (the first
    one of a version is kept). Per key its intervals, oldest first."""
    distinct: dict[tuple[int, int, int, int], tuple[Version, str, P]] = {}
    for key, version, op_type, payload in events:
        distinct.setdefault((key, version.op_time, version.partition, version.offset),
                            (version, op_type, payload))
    history: dict[int, tuple[Interval[P], ...]] = {}
    # Plain tuples sort in C; the order is (key, op_time, partition, offset), as ``Version``.
    for key, group in itertools.groupby(sorted(distinct.items()), key=lambda i: i[0][0]):
        versions = [value for _, value in group]
        history[key] = tuple(
            Interval(key, version, op_type, payload,
                     versions[i + 1][0].op_time if i + 1 < len(versions) else None)
            for i, (version, op_type, payload) in enumerate(versions)
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
