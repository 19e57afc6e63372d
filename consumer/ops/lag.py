"""``kyc-sync lag``: how far the group is behind the topic, in messages and in seconds.

Per partition: the committed offset, the log-end offset, the lag in messages and the age of the
oldest unconsumed message (the timestamp of the message at the committed offset, read by a probe
that never joins the group; 0 when the lag is 0). With the group's state and members (each
member's assigned partitions with ``--members``), the last successful batch and the newest
op_time applied, from the warehouse ledger. ``lag --serve`` exports the same figures
(``consumer.ops.exporter``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

from consumer.ops.durations import format_duration
from consumer.ops.ledger import LastBatch
from consumer.ops.offsets import GroupInfo, KafkaSide, PartitionOffsets
from consumer.ops.render import text_table, utc_text
from schemas.errors import TerminalError
from warehouse.errors import WarehouseError


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's offsets, and ``oldest_ms``: the timestamp of its first unconsumed
    message (None: not read)."""

    offsets: PartitionOffsets
    oldest_ms: int | None = None

    @property
    def lag(self) -> int:
        return self.offsets.lag

    def age_s(self, now_ms: int) -> float | None:
        """Seconds since the oldest unconsumed message was written; 0 with no lag, None when
        its timestamp is unknown. Clock skew never makes it negative."""
        if self.lag == 0:
            return 0.0
        if self.oldest_ms is None:
            return None
        return max(0.0, (now_ms - self.oldest_ms) / 1000)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Exit non-zero above these; None: not checked."""

    max_lag: int | None = None
    max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class LagReport:
    topic: str
    group: str
    partitions: tuple[PartitionLag, ...]
    now_ms: int
    last_batch: LastBatch | None = None
    ledger_error: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    group_info: GroupInfo | None = None
    show_members: bool = False

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def max_age_s(self) -> float | None:
        ages = [p.age_s(self.now_ms) for p in self.partitions]
        known = [a for a in ages if a is not None]
        return max(known) if known else None

    def problems(self) -> list[str]:
        """One line per threshold exceeded, and per partition holding messages the group has
        never committed (a partition no member reads shows so, not as lag alone); empty means
        exit 0."""
        found = [
            f"partition {p.offsets.partition}: no committed offset, {p.lag} message(s) never "
            f"read by group {self.group}"
            for p in self.partitions if p.offsets.committed is None and p.lag > 0
        ]
        limits = self.thresholds
        if limits.max_lag is not None and self.total_lag > limits.max_lag:
            found.append(f"lag {self.total_lag} messages > --max-lag {limits.max_lag}")
        if limits.max_age_s is not None:
            for p in self.partitions:
                age = p.age_s(self.now_ms)
                if age is None:
                    found.append(f"partition {p.offsets.partition}: age of the oldest unconsumed "
                                 "message unknown (no timestamp read)")
                elif age > limits.max_age_s:
                    found.append(f"partition {p.offsets.partition}: oldest unconsumed message is "
                                 f"{format_duration(age)} old > --max-age "
                                 f"{format_duration(limits.max_age_s)}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "partitions": [
                {
                    "partition": p.offsets.partition, "committed": p.offsets.committed,
                    "log_end": p.offsets.high,
                    "lag": p.lag, "lag_seconds": _rounded(p.age_s(self.now_ms)),
                }
                for p in self.partitions
            ],
            "total_lag": self.total_lag,
            "max_lag_seconds": _rounded(self.max_age_s),
            "group_state": None if self.group_info is None else self.group_info.state,
            "members": None if self.group_info is None else [
                m.to_json() for m in self.group_info.details],
            "last_batch": None if self.last_batch is None else self.last_batch.to_json(),
            "ledger_error": self.ledger_error,
            "problems": self.problems(),
            "ok": not self.problems(),
        }

    def render(self) -> str:
        rows = []
        for p in self.partitions:
            age = p.age_s(self.now_ms)
            rows.append((p.offsets.partition, p.offsets.committed, p.offsets.high, p.lag,
                         "-" if age is None else format_duration(age)))
        oldest = self.max_age_s
        lines = [
            f"topic {self.topic}, group {self.group}",
            text_table(("partition", "committed", "log end", "lag", "lag age"), rows),
            f"total lag {self.total_lag} message(s), oldest unconsumed "
            f"{'-' if oldest is None else format_duration(oldest)}",
            self._ledger_line(),
        ]
        info = self.group_info
        if info is not None:
            lines.append(f"group state {info.state}, {len(info.details)} member(s)")
            if self.show_members and info.details:
                lines.append(text_table(
                    ("consumer id", "host", "client id", "partitions"),
                    [(m.consumer_id, m.host, m.client_id,
                      ",".join(str(p) for p in m.partitions) or "-") for m in info.details]))
        lines += [f"FAIL {problem}" for problem in self.problems()]
        return "\n".join(lines)

    def _ledger_line(self) -> str:
        if self.ledger_error is not None:
            return f"warehouse ledger unavailable: {self.ledger_error}"
        batch = self.last_batch
        if batch is None:
            return "warehouse ledger: no batch recorded for this topic yet"
        ago = max(0.0, self.now_ms / 1000 - _epoch_s(batch))
        return (
            f"last batch {batch.batch_id} committed {utc_text(batch.committed_at)} "
            f"({format_duration(ago)} ago); newest op_time applied "
            f"{utc_text(batch.newest_op_time)}"
        )


def _epoch_s(batch: LastBatch) -> float:
    return batch.committed_at.replace(tzinfo=UTC).timestamp()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def measure(
    kafka: KafkaSide, group: str, clock: Callable[[], float] = time.time
) -> tuple[tuple[PartitionLag, ...], int]:
    """Read the committed offsets, the watermarks and the oldest unconsumed timestamps;
    returns the partitions and the time (ms) the ages are measured against."""
    partitions = kafka.partitions()
    committed = kafka.committed(group, partitions)
    marks = kafka.watermarks(partitions)
    found = [replace(marks[p], committed=committed.get(p)) for p in partitions]
    behind = {p.partition: p.position for p in found if p.lag > 0}
    stamps = kafka.timestamps_at(behind)
    now_ms = int(clock() * 1000)
    return tuple(PartitionLag(p, stamps.get(p.partition)) for p in found), now_ms


def gather(
    kafka: KafkaSide,
    group: str,
    read_ledger: Callable[[], LastBatch | None],
    thresholds: Thresholds | None = None,
    show_members: bool = False,
    clock: Callable[[], float] = time.time,
) -> LagReport:
    """The whole report, as ``lag`` prints it and ``lag --serve`` exports it: Kafka's side
    (an error there is raised), the group's members, the ledger's last batch (an error there is
    reported in ``ledger_error``)."""
    partitions, now_ms = measure(kafka, group, clock)
    info = kafka.describe_group(group)
    batch, error = None, None
    try:
        batch = read_ledger()
    except (WarehouseError, TerminalError) as err:  # unreadable, unanswered, unsupported
        error = str(err)
    return LagReport(kafka.topic, group, partitions, now_ms, batch, error,
                     thresholds or Thresholds(), info, show_members)
