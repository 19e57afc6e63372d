"""``kyc-sync replay --full-refresh``: rebuild the table from the topic while the live instances
keep running. The live group is never stopped and its offsets are never moved.

1. **Plan**: per partition, the earliest offset still in the log and the log end now (the
   planned watermarks). Refused when retention dropped the start of a partition, unless
   ``--allow-partial``.
2. **Recover**: tables a killed earlier refresh left under the rebuild names are merged into the
   live table under the version guard (harmless: they hold real events; after a swap they hold
   the writes that raced it), then dropped.
3. **Build**: a run loop reads each planned range from its planned start offset, assigned
   explicitly (never through ``auto.offset.reset``), up to the planned end, and writes it into
   the rebuild objects (``<name>__rebuild``, its own column metadata included: the rebuilt
   table takes the column policy of the settings) under a one-off group name
   ``<group>.full-refresh.<id>`` that never joins a group nor commits. Readers keep seeing the
   live table.
4. **Check**: per partition, the events read — applied or dead-lettered — must equal the
   messages planned. Otherwise the swap is refused (exit 1, with the numbers) and the live
   table stays as it is.
5. **Level, swap, level, finish** (``warehouse.swap``): the live rows outside the rebuilt ranges
   are merged into the rebuild, the tables trade names atomically, the table swapped out is
   merged once more into the live name (writes that raced the swap), the rebuild's ledger rows
   join the live ledger and the swapped-out objects are dropped.

Anything failing before the swap leaves the live table as it was (the rebuild objects are
dropped); after it, the error says what is left and running the refresh again completes it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from batcher.ranges import PartitionRange
from consumer.app import build_loop, open_refresher
from consumer.ops.offsets import KafkaSide, PartitionOffsets
from consumer.ops.render import text_table
from consumer.run.observer import FlushCollector, FlushReport
from consumer.run.retry import retry_transient
from consumer.settings import Settings
from consumer.source.topics import preflight
from consumer.telemetry.progress import Progress
from schemas.errors import TerminalError
from schemas.evolution import ColumnPolicy, TableState
from warehouse.base import Refresher
from warehouse.errors import WarehouseError
from warehouse.swap import REBUILD_SUFFIX

log = logging.getLogger("kyc_sync.rebuild")
T = TypeVar("T")

PHASES: tuple[str, ...] = ("recover", "build", "check", "level", "swap", "catch up", "finish")
"""The phases of a full refresh, in order (the progress metric's ``phase`` label)."""


class RefreshError(TerminalError):
    """The full refresh was refused or stopped; the message says what the live table holds."""


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    topic: str
    group: str
    marks: tuple[tuple[int, PartitionOffsets], ...]

    @property
    def partial(self) -> tuple[int, ...]:
        """Partitions whose history retention (or deleted records) already dropped."""
        return tuple(p for p, m in self.marks if m.low > 0)

    @property
    def messages(self) -> int:
        return sum(m.high - m.low for _, m in self.marks)

    @property
    def ranges(self) -> tuple[PartitionRange, ...]:
        """What the rebuild reads: each partition from its earliest offset to its log end."""
        return tuple(PartitionRange(p, m.low, m.high) for p, m in self.marks)

    def refusal(self, allow_partial: bool) -> str | None:
        """Why the refresh must not run; None when it may."""
        if self.partial and not allow_partial:
            return (
                f"refusing the full refresh: the earliest offset of partition(s) "
                f"{', '.join(str(p) for p in self.partial)} is above 0, retention has dropped "
                "history and the rebuilt table would miss those profiles; add --allow-partial "
                "to rebuild from what the topic still holds (profiles only in the dropped "
                "history are kept from the live table)"
            )
        return None

    def to_json(self, executed: bool) -> dict[str, Any]:
        return {
            "topic": self.topic, "group": self.group, "full_refresh": True,
            "executed": executed, "partial": list(self.partial),
            "partitions": [
                {"partition": p, "log_start": m.low, "log_end": m.high, "to_read": m.high - m.low}
                for p, m in self.marks
            ],
        }

    def render(self, executed: bool, allow_partial: bool) -> str:
        rows = [(p, m.low, m.high, m.high - m.low) for p, m in self.marks]
        lines = [
            f"full refresh of topic {self.topic} for group {self.group}: rebuild the table "
            f"into *{REBUILD_SUFFIX} beside the running group, bring it level, swap it in",
            text_table(("partition", "log start", "log end", "to read"), rows),
            f"total: {self.messages} message(s) to read",
        ]
        refusal = self.refusal(allow_partial)
        if self.partial and allow_partial:
            lines.append(f"note: partitions {list(self.partial)} start above offset 0 "
                         "(--allow-partial): profiles only in the dropped history are kept "
                         "from the live table")
        if not executed:
            lines.append("dry run: nothing changed; add --execute to rebuild and swap")
            if refusal is not None:
                lines.append(f"warning: --execute would be refused: {refusal}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class PartitionRead:
    """What the rebuild read of one partition: the planned range and the offsets covered."""

    planned: PartitionRange
    covered: tuple[tuple[int, int], ...]

    @property
    def read(self) -> int:
        """Events read (applied or dead-lettered): the length of the covered offsets."""
        return sum(end - start for start, end in self.covered)

    @property
    def complete(self) -> bool:
        if self.planned.count <= 0:
            return True
        return self.covered == ((self.planned.first, self.planned.next_offset),)

    def describe(self) -> str:
        p = self.planned
        where = ", ".join(f"{a}-{b - 1}" for a, b in self.covered) or "none"
        return (f"partition {p.partition}: planned offsets {p.first}-{p.next_offset - 1} "
                f"({p.count} events), read {self.read} (applied + dead-lettered; offsets {where})")


def coverage(
    planned: Sequence[PartitionRange], reports: Iterable[FlushReport]
) -> tuple[PartitionRead, ...]:
    """Per planned partition, the union of the offsets the flushed windows covered, clipped to
    the plan (a pure function of the flush reports)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for report in reports:
        for r in report.ranges:
            spans.setdefault(r.partition, []).append((r.first, r.next_offset))
    found = []
    for plan in planned:
        merged: list[tuple[int, int]] = []
        for first, after in sorted(spans.get(plan.partition, [])):
            start, end = max(first, plan.first), min(after, plan.next_offset)
            if start >= end:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        found.append(PartitionRead(plan, tuple(merged)))
    return tuple(found)


def shortfall(reads: Sequence[PartitionRead]) -> str | None:
    """Why the rebuilt table must not be swapped in; None when every range was read."""
    short = [r for r in reads if not r.complete]
    if not short:
        return None
    return (
        "refusing to swap in the rebuilt table: it did not read every planned event ("
        + "; ".join(r.describe() for r in short)
        + "); the live table and the group's offsets are unchanged"
    )


@dataclass(frozen=True, slots=True)
class RefreshResult:
    rebuild_group: str
    events: int
    invalid: int
    batches: int
    reads: tuple[PartitionRead, ...]

    def render(self) -> str:
        read = ", ".join(f"{r.planned.partition}:{r.read}/{r.planned.count}" for r in self.reads)
        return (f"rebuilt from {self.events} event(s) ({self.invalid} dead-lettered) in "
                f"{self.batches} batch(es), read per partition {read or 'none'}; brought level "
                "with the live table and swapped in; the group's offsets were not moved")

    def to_json(self) -> dict[str, Any]:
        return {
            "rebuild_group": self.rebuild_group, "events": self.events,
            "invalid": self.invalid, "batches": self.batches,
            "read": {str(r.planned.partition): r.read for r in self.reads},
        }


def plan_refresh(kafka: KafkaSide, group: str) -> RefreshPlan:
    marks = kafka.watermarks(kafka.partitions())
    return RefreshPlan(kafka.topic, group, tuple(sorted(marks.items())))


def rebuild_settings(settings: Settings, rebuild_group: str) -> Settings:
    """``settings`` with every object under its rebuild name and the one-off group."""
    wh = settings.warehouse
    return settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"group_id": rebuild_group}),
        "warehouse": wh.model_copy(update={
            "table": wh.table + REBUILD_SUFFIX,
            "state_table": wh.state_table + REBUILD_SUFFIX,
            "ledger_table": wh.ledger_table + REBUILD_SUFFIX,
            "columns_table": wh.columns_table + REBUILD_SUFFIX,
        }),
        "history": settings.history.model_copy(
            update={"table": settings.history.table + REBUILD_SUFFIX}),
    })


def full_refresh(
    settings: Settings,
    plan: RefreshPlan,
    allow_partial: bool,
    progress: Progress | None = None,
) -> RefreshResult:
    """Recover, build, check, level, swap, catch up, finish (see the module doc)."""
    refusal = plan.refusal(allow_partial)
    if refusal is not None:
        raise RefreshError(refusal)
    phases = progress or Progress("full refresh", plan.ranges, PHASES)
    rebuild_group = f"{plan.group}.full-refresh.{uuid.uuid4().hex[:8]}"
    budget, lock_budget = settings.warehouse.retry_max_s, settings.warehouse.lock_wait_max_s

    def step(what: str, call: Callable[[], T]) -> T:
        return retry_transient(call, budget, f"full refresh: {what}", lock_wait_max_s=lock_budget)

    with open_refresher(settings) as live:
        phases.phase("recover")
        _recover(live, step)
        changed = _policy_change(settings, step(
            "read the live table", live.table_state))
        phases.phase("build")
        try:
            collector = _build(settings, rebuild_group, plan.ranges, phases)
            phases.phase("check")
            reads = coverage(plan.ranges, collector.reports)
            problem = shortfall(reads)
            if problem is not None:
                raise RefreshError(problem)
            phases.phase("level")
            if changed is not None:
                _refuse_old_policy_rows(live, plan, changed, step)
            step("bring the rebuild level", lambda: live.level(plan.ranges, into_live=False))
        except BaseException:
            _discard_quietly(live, step)
            raise
        phases.phase("swap")
        try:
            step("swap", lambda: live.swap_in(plan.ranges))
        except (WarehouseError, TerminalError) as err:
            raise RefreshError(
                f"the swap failed: {err}; the rebuild is kept under the rebuild name and the "
                "next full refresh merges it into the live table before it starts"
            ) from err
        log.info("full refresh: rebuilt table swapped in")
        try:
            phases.phase("catch up")
            step("merge the writes that raced the swap",
                 lambda: live.level(plan.ranges, into_live=True))
            phases.phase("finish")
            step("finish", live.finish)
        except (WarehouseError, TerminalError) as err:
            raise RefreshError(
                f"the rebuilt table is in place, but {err}; the table swapped out is kept under "
                f"the rebuild name: run the full refresh again, which first merges it into the "
                "live table"
            ) from err
    reports = collector.reports
    return RefreshResult(
        rebuild_group,
        events=sum(r.events for r in reports),
        invalid=sum(r.invalid for r in reports),
        batches=sum(1 for r in reports if r.result is not None),
        reads=reads,
    )


def _policy_change(settings: Settings, state: TableState) -> str | None:
    """How the settings' column policy differs from the live table's; None when it does not."""
    recorded = state.policy or ColumnPolicy()
    wanted = settings.columns.policy()
    if recorded == wanted:
        return None
    return f"from {recorded.describe()} to {wanted.describe()}"


def _refuse_old_policy_rows(
    live: Refresher, plan: RefreshPlan, changed: str,
    step: Callable[[str, Callable[[], int]], int],
) -> None:
    """A refresh that changes the column policy may not copy live rows into the rebuild, nor
    history versions: they hold values under the old policy (plain where they must be
    hashed)."""
    outside = step("count the live rows outside the plan", lambda: live.outside_rows(plan.ranges))
    if outside:
        raise RefreshError(
            f"the column policy changes {changed}, but {outside} live row(s) (history versions "
            "included) lie outside the rebuilt ranges (events applied after the plan by running "
            "instances, or dropped by retention) and hold values under the old policy; stop "
            "every instance and run the full refresh again (the topic must hold every event)"
        )


def _recover(live: Refresher, step: Callable[[str, Callable[[], None]], None]) -> None:
    """Merge what an earlier refresh left under the rebuild names into the live table, then
    drop it. Creating the rebuild objects first makes this one path whether or not they exist."""
    step("prepare", live.prepare)
    step("merge an earlier refresh's leftovers", lambda: live.level((), into_live=True))
    step("drop an earlier refresh's leftovers", live.finish)


def _discard_quietly(live: Refresher, step: Callable[[str, Callable[[], None]], None]) -> None:
    try:
        step("drop the rebuild", live.discard)
    except (WarehouseError, TerminalError) as err:
        log.warning("could not drop the rebuild objects (the next refresh will): %s", err)


def _build(
    settings: Settings, rebuild_group: str, ranges: tuple[PartitionRange, ...],
    progress: Progress,
) -> FlushCollector:
    """Run the loop over the planned ranges into the rebuild objects."""
    overridden = rebuild_settings(settings, rebuild_group)
    topics = preflight(overridden.kafka, overridden.decoding.on_invalid == "dlq")
    collector = FlushCollector()
    loop = build_loop(overridden, observers=[collector, progress], bounds=ranges,
                      topics=topics)
    loop.install_signal_handlers()
    log.info("full refresh: reading %s from the planned offsets as %s",
             settings.kafka.topic, rebuild_group)
    loop.run()
    if loop.stopping:
        raise RefreshError("the rebuild was stopped before it read every planned event; "
                           "nothing was swapped")
    return collector
