"""The Kafka offsets a window covers, per partition."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The offsets of one partition covered by a batch: ``first`` .. ``next_offset - 1``."""

    partition: int
    first: int
    next_offset: int

    @property
    def count(self) -> int:
        return self.next_offset - self.first
