"""The reference reduction, one event at a time: the oracle of ``batcher.reducer.Reducer``.

One entry per distinct key (not per event) plus the offset range seen per partition. "Latest" is
the greatest (op_time, partition, offset): see ``Version``; ``payload`` is opaque to the reducer.
With ``keep_versions`` it also keeps every distinct (key, version) it saw, the first delivery of
each (the oracle of ``Reducer(keep_versions=True)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from batcher.ranges import PartitionRange

P = TypeVar("P")


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Total order of the events of one profile: op_time first, then the Kafka position.

    ``op_time`` is microseconds since the Unix epoch (UTC); ties on op_time go to the later
    Kafka position.
    """

    op_time: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Winner(Generic[P]):
    """The latest event of one key in a window."""

    key: int
    version: Version
    op_type: str
    payload: P


@dataclass(frozen=True, slots=True)
class ReferenceReduced(Generic[P]):
    """What a window reduces to: one winner per key and the offsets it covers."""

    winners: tuple[Winner[P], ...]
    ranges: tuple[PartitionRange, ...]
    events: int
    invalid: int
    payload_bytes: int
    versions: tuple[Winner[P], ...] = ()
    """Every distinct (key, version), by key and version; empty unless ``keep_versions``."""

    @property
    def next_offsets(self) -> dict[int, int]:
        return {r.partition: r.next_offset for r in self.ranges}


class ReferenceReducer(Generic[P]):
    """Latest-per-key reduction with offset bookkeeping. Not thread-safe; one per consumer."""

    def __init__(self, keep_versions: bool = False) -> None:
        self.keep_versions = keep_versions
        # (key, version) -> (op_type, payload), the first delivery of each
        self._versions: dict[tuple[int, Version], tuple[str, P]] = {}
        # key -> (op_time, partition, offset, op_type, payload)
        self._latest: dict[int, tuple[int, int, int, str, P]] = {}
        self._first: dict[int, int] = {}
        self._next: dict[int, int] = {}
        self._events = 0
        self._invalid = 0
        self._bytes = 0

    def __len__(self) -> int:
        """Number of distinct keys buffered."""
        return len(self._latest)

    @property
    def events(self) -> int:
        """Events added since the last drain (valid and invalid)."""
        return self._events

    @property
    def invalid(self) -> int:
        """Events since the last drain that yielded no row (dead-lettered)."""
        return self._invalid

    @property
    def payload_bytes(self) -> int:
        return self._bytes

    def add(
        self, key: int, op_time: int, partition: int, offset: int, op_type: str, payload: P,
        size: int = 0,
    ) -> bool:
        """Offer one event; returns True when it is now the latest for its key."""
        # _track, inlined: this runs once per event.
        self._events += 1
        self._bytes += size
        nxt = self._next.get(partition)
        if nxt is None:
            self._first[partition] = offset
            self._next[partition] = offset + 1
        elif offset >= nxt:
            self._next[partition] = offset + 1
        elif offset < self._first[partition]:
            self._first[partition] = offset
        if self.keep_versions:
            self._versions.setdefault(
                (key, Version(op_time, partition, offset)), (op_type, payload))
        latest = self._latest
        current = latest.get(key)
        if current is not None:
            known = current[0]
            if known > op_time or (
                known == op_time and (current[1], current[2]) >= (partition, offset)
            ):
                return False
        latest[key] = (op_time, partition, offset, op_type, payload)
        return True

    def skip(self, partition: int, offset: int, size: int = 0) -> None:
        """Account for an event that yields no row (it went to the dead-letter topic)."""
        self._track(partition, offset, size)
        self._invalid += 1

    def _track(self, partition: int, offset: int, size: int) -> None:
        self._events += 1
        self._bytes += size
        nxt = self._next.get(partition)
        if nxt is None:
            self._first[partition] = offset
            self._next[partition] = offset + 1
        elif offset >= nxt:
            self._next[partition] = offset + 1
        elif offset < self._first[partition]:
            self._first[partition] = offset

    def partitions(self) -> frozenset[int]:
        return frozenset(self._next)

    def ranges(self) -> tuple[PartitionRange, ...]:
        """The offsets buffered so far, per partition (a snapshot; nothing is drained)."""
        return tuple(PartitionRange(p, self._first[p], self._next[p]) for p in sorted(self._next))

    def iter_winners(self) -> Iterator[Winner[P]]:
        for key, (op_time, partition, offset, op_type, payload) in self._latest.items():
            yield Winner(key, Version(op_time, partition, offset), op_type, payload)

    def drain(self) -> ReferenceReduced[P]:
        """Hand over the window's content and start empty."""
        winners = tuple(self.iter_winners())
        reduced = ReferenceReduced(
            winners=winners,
            ranges=self.ranges(),
            events=self._events,
            invalid=self._invalid,
            payload_bytes=self._bytes,
            versions=tuple(
                Winner(key, version, op_type, payload)
                for (key, version), (op_type, payload) in sorted(
                    self._versions.items(), key=lambda item: item[0])
            ),
        )
        self.clear()
        return reduced

    def clear(self) -> None:
        self._versions = {}
        self._latest = {}
        self._first = {}
        self._next = {}
        self._events = 0
        self._invalid = 0
        self._bytes = 0
