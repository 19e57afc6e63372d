"""Domain values of the change stream."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OpType(StrEnum):
    """The operation an audit event records."""

    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


OP_TYPES: frozenset[str] = frozenset(op.value for op in OpType)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Total order of the events of one profile: op_time first, then the Kafka position.

    ``op_time`` is microseconds since the Unix epoch (UTC). Comparing two versions tells which
    event is the later one; ties on op_time go to the later Kafka position.
    """

    op_time: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The offsets of one partition covered by a batch: ``first`` .. ``next_offset - 1``."""

    partition: int
    first: int
    next_offset: int

    @property
    def count(self) -> int:
        return self.next_offset - self.first
