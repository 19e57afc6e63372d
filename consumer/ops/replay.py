"""``kyc-sync replay``: move the group's committed offsets, as
``kafka-consumer-groups --reset-offsets`` does. A dry run unless executed.

Planning is pure: the new offset of a partition is a function of its committed offset, its
watermarks, the ``offsets_for_times`` answer and the option (``plan_move``). Execution checks the
group has no active member and moves the offsets with the admin API (which the broker also
refuses for a group with members).

Replays are safe by construction: the warehouse applies an event only when its version
(op_time, partition, offset) is newer than the row's, tombstones included, so re-reading old
events can neither roll a row back nor bring a deleted profile back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from consumer.ops.offsets import GroupInfo, KafkaSide, PartitionOffsets
from consumer.ops.render import text_table
from schemas.errors import TerminalError, UsageError


class ResetKind(StrEnum):
    EARLIEST = "to-earliest"
    LATEST = "to-latest"
    DATETIME = "to-datetime"
    DURATION = "by-duration"
    SHIFT = "shift-by"
    OFFSET = "to-offset"
    FROM_FILE = "from-file"


@dataclass(frozen=True, slots=True)
class Reset:
    """Where to move: ``value`` is N for shift-by / to-offset, the timestamp (ms since the
    epoch) for to-datetime / by-duration; ``label`` is the option as the user gave it."""

    kind: ResetKind
    value: int = 0
    label: str = ""

    @property
    def by_time(self) -> bool:
        return self.kind in (ResetKind.DATETIME, ResetKind.DURATION)

    def describe(self) -> str:
        text = f"--{self.kind.value}" + (f" {self.label}" if self.label else "")
        if self.by_time:
            moment = datetime.fromtimestamp(self.value / 1000, UTC)
            text += f" (messages from {moment.isoformat(timespec='milliseconds')})"
        return text


@dataclass(frozen=True, slots=True)
class Move:
    """One partition's planned move: from the group's position to ``new_offset``."""

    offsets: PartitionOffsets
    new_offset: int
    clamped: bool = False

    @property
    def partition(self) -> int:
        return self.offsets.partition

    @property
    def committed(self) -> int | None:
        return self.offsets.committed

    @property
    def reread(self) -> int:
        """Messages read before that will be read again."""
        return max(0, self.offsets.position - self.new_offset)

    @property
    def skipped(self) -> int:
        """Unread messages jumped over (never applied)."""
        return max(0, self.new_offset - self.offsets.position)

    @property
    def to_read(self) -> int:
        """Messages between the new offset and the end of the log."""
        return self.offsets.high - self.new_offset


def plan_move(offsets: PartitionOffsets, reset: Reset, at_time: int | None = None) -> Move:
    """The new offset of one partition; targets outside the log are clamped into
    ``[low, high]`` (as ``kafka-consumer-groups`` does) and flagged. ``at_time``: for
    time-based resets, the ``offsets_for_times`` answer (None: no message at or after it); for
    ``--from-file``, the partition's offset in the file."""
    low, high = offsets.low, offsets.high
    if reset.kind is ResetKind.EARLIEST:
        target = low
    elif reset.kind is ResetKind.LATEST:
        target = high
    elif reset.by_time:
        target = high if at_time is None else at_time
    elif reset.kind is ResetKind.FROM_FILE:
        assert at_time is not None, "a --from-file move needs the file's offset"
        target = at_time
    elif reset.kind is ResetKind.SHIFT:
        target = offsets.position + reset.value
    else:
        target = reset.value
    new_offset = min(max(target, low), high)
    return Move(offsets, new_offset, new_offset != target)


def select_partitions(available: Sequence[int], wanted: Iterable[int] | None) -> tuple[int, ...]:
    """``wanted`` (all when None); each must exist."""
    if wanted is None:
        return tuple(available)
    chosen = tuple(sorted(set(wanted)))
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise UsageError(
            f"partitions {unknown} do not exist (the topic has {len(available)} partitions)"
        )
    return chosen


class GroupActiveError(TerminalError):
    """Offsets of a group with active members cannot be moved."""


def refuse_if_active(info: GroupInfo, action: str = "move offsets") -> None:
    if info.active:
        raise GroupActiveError(
            f"refusing to {action}: consumer group {info.group!r} has {info.summary()}. "
            "Stop every kyc-sync instance of the group first (a killed instance stays a member "
            "until its session times out)."
        )


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    topic: str
    group: str
    reset: Reset
    moves: tuple[Move, ...]
    group_info: GroupInfo
    saved_to: str | None = None
    """Where ``--execute`` saved the offsets it replaced."""

    def offsets(self) -> dict[int, int]:
        return {m.partition: m.new_offset for m in self.moves}

    def to_json(self, executed: bool) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "reset": self.reset.describe(),
            "executed": executed,
            "group_active": self.group_info.active,
            "saved_to": self.saved_to,
            "partitions": [
                {
                    "partition": m.partition, "committed": m.committed, "new_offset": m.new_offset,
                    "log_start": m.offsets.low, "log_end": m.offsets.high, "reread": m.reread,
                    "skipped": m.skipped, "to_read": m.to_read, "clamped": m.clamped,
                }
                for m in self.moves
            ],
        }

    def render(self, executed: bool) -> str:
        header = ("partition", "committed", "new offset", "log start", "log end", "re-read",
                  "skipped", "to read")
        rows = [
            (m.partition, m.committed, m.new_offset, m.offsets.low, m.offsets.high, m.reread,
             m.skipped, m.to_read)
            for m in self.moves
        ]
        lines = [
            f"replay {self.reset.describe()} on topic {self.topic}, group {self.group}",
            text_table(header, rows),
            f"total: {sum(m.reread for m in self.moves)} message(s) to re-read, "
            f"{sum(m.skipped for m in self.moves)} to skip",
        ]
        lines += [
            f"note: partition {m.partition}: target outside the log, clamped to {m.new_offset}"
            for m in self.moves if m.clamped
        ]
        if executed:
            lines.append("offsets moved; the next `kyc-sync run` reads from the new offsets")
            if self.saved_to is not None:
                lines.append(f"previous offsets saved to {self.saved_to} (undo: kyc-sync "
                             f"replay --from-file {self.saved_to} --execute)")
        else:
            lines.append("dry run: nothing changed; add --execute to move the offsets")
            if self.group_info.active:
                lines.append(f"warning: --execute would be refused now: the group has "
                             f"{self.group_info.summary()}")
        return "\n".join(lines)


def prepare(
    kafka: KafkaSide, group: str, reset: Reset, wanted: Iterable[int] | None = None,
    targets: Mapping[int, int] | None = None,
) -> ReplayPlan:
    """Read the group and the partitions, plan every move. Changes nothing. ``targets``: the
    offsets of a ``--from-file`` reset (only those partitions move)."""
    if reset.kind is ResetKind.FROM_FILE:
        if targets is None:
            raise ValueError("a --from-file reset needs the file's offsets")
        if wanted is not None:
            raise UsageError("--from-file moves the partitions the file lists; drop --partitions")
        wanted = targets
    partitions = select_partitions(kafka.partitions(), wanted)
    marks = kafka.watermarks(partitions)
    committed = kafka.committed(group, partitions)
    at_time: Mapping[int, int | None] = {}
    if reset.by_time:
        at_time = kafka.offsets_for_time(partitions, reset.value)
    elif targets is not None:
        at_time = targets
    moves = tuple(
        plan_move(
            replace(marks[p], committed=committed.get(p)), reset, at_time.get(p)
        )
        for p in partitions
    )
    return ReplayPlan(kafka.topic, group, reset, moves, kafka.describe_group(group))


def current_offsets(kafka: KafkaSide, group: str) -> dict[int, int]:
    """The group's committed offsets on the topic (partitions without one are left out)."""
    committed = kafka.committed(group, kafka.partitions())
    return {p: o for p, o in committed.items() if o is not None}


def execute(
    kafka: KafkaSide, plan: ReplayPlan, save: Callable[[dict[int, int]], None]
) -> None:
    """Move the offsets, unless the group has active members now; ``save`` receives the
    group's committed offsets first (the undo file), and a failure there moves nothing."""
    refuse_if_active(kafka.describe_group(plan.group))
    save(current_offsets(kafka, plan.group))
    kafka.alter_offsets(plan.group, plan.offsets())
