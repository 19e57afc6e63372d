"""``kyc-sync replay --full-refresh``: rebuild ``kyc_profile_current`` from the whole topic.

1. The group must have no active member (as for any offset move), and the topic must still hold
   its whole history (earliest offset 0 on every partition) unless ``--allow-partial``.
2. Drop the leftovers of a failed earlier rebuild, then run a ``SyncLoop`` until it has caught up,
   with settings overridden: every object under its rebuild name (``<name>__rebuild``: state
   table, its own view, its own ledger) and a one-off consumer group
   ``<group>.full-refresh.<id>`` that starts from the earliest offsets. The live view never
   points at the half-built table.
3. Check the group is still inactive, then swap the rebuilt table in (one DuckDB transaction:
   readers see the old table or the new one, never a half-built one).
4. Set the group's committed offsets to where the rebuild stopped (what it consumed and applied),
   delete the one-off group. ``run`` continues from there.

Anything failing before the swap leaves the live table and the group's offsets untouched.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from consumer.app import build_loop, open_refresher
from consumer.ops.offsets import GroupInfo, KafkaSide, OffsetsError, PartitionOffsets
from consumer.ops.render import text_table
from consumer.ops.replay import refuse_if_active
from consumer.run.observer import FlushCollector
from consumer.settings import Settings
from consumer.source.topics import preflight
from schemas.errors import TerminalError
from warehouse.base import Refresher
from warehouse.errors import WarehouseError
from warehouse.swap import REBUILD_SUFFIX, rebuild_names
from warehouse.tables import TableNames

log = logging.getLogger("kyc_sync.rebuild")


class RefreshError(TerminalError):
    """The full refresh was refused or stopped before the swap; the live table is untouched."""


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    topic: str
    group: str
    marks: tuple[tuple[int, PartitionOffsets], ...]
    group_info: GroupInfo

    @property
    def partial(self) -> tuple[int, ...]:
        """Partitions whose history retention (or deleted records) already dropped."""
        return tuple(p for p, m in self.marks if m.low > 0)

    @property
    def messages(self) -> int:
        return sum(m.high - m.low for _, m in self.marks)

    def refusal(self, allow_partial: bool) -> str | None:
        """Why the refresh must not run; None when it may."""
        if self.partial and not allow_partial:
            return (
                f"refusing the full refresh: the earliest offset of partition(s) "
                f"{', '.join(str(p) for p in self.partial)} is above 0, retention has dropped "
                "history and the rebuilt table would miss those profiles; add --allow-partial "
                "to rebuild from what the topic still holds"
            )
        return None

    def to_json(self, executed: bool) -> dict[str, Any]:
        return {
            "topic": self.topic, "group": self.group, "full_refresh": True,
            "executed": executed, "group_active": self.group_info.active,
            "partial": list(self.partial),
            "partitions": [
                {"partition": p, "log_start": m.low, "log_end": m.high, "to_read": m.high - m.low}
                for p, m in self.marks
            ],
        }

    def render(self, executed: bool, allow_partial: bool) -> str:
        rows = [(p, m.low, m.high, m.high - m.low) for p, m in self.marks]
        lines = [
            f"full refresh of topic {self.topic} for group {self.group}: rebuild the table "
            f"from the earliest offsets into *{REBUILD_SUFFIX}, then swap it in",
            text_table(("partition", "log start", "log end", "to read"), rows),
            f"total: {self.messages} message(s) to read",
        ]
        refusal = self.refusal(allow_partial)
        if self.partial and allow_partial:
            lines.append(f"note: partitions {list(self.partial)} start above offset 0 "
                         "(--allow-partial): profiles only in dropped history will be missing")
        if not executed:
            lines.append("dry run: nothing changed; add --execute to rebuild and swap")
            if refusal is not None:
                lines.append(f"warning: --execute would be refused: {refusal}")
            if self.group_info.active:
                lines.append(f"warning: --execute would be refused now: the group has "
                             f"{self.group_info.summary()}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    rebuild_group: str
    events: int
    batches: int
    offsets: tuple[tuple[int, int], ...]

    def render(self) -> str:
        moved = ", ".join(f"{p}:{o}" for p, o in self.offsets) or "none"
        return (f"rebuilt from {self.events} event(s) in {self.batches} batch(es) and swapped "
                f"in; group offsets set to {moved}")


def plan_refresh(kafka: KafkaSide, group: str) -> RefreshPlan:
    marks = kafka.watermarks(kafka.partitions())
    return RefreshPlan(kafka.topic, group, tuple(sorted(marks.items())),
                       kafka.describe_group(group))


def rebuild_settings(settings: Settings, rebuild_group: str) -> Settings:
    """``settings`` with every object under its rebuild name and the one-off group."""
    wh = settings.warehouse
    return settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"group_id": rebuild_group}),
        "warehouse": wh.model_copy(update={
            "table": wh.table + REBUILD_SUFFIX,
            "state_table": wh.state_table + REBUILD_SUFFIX,
            "ledger_table": wh.ledger_table + REBUILD_SUFFIX,
        }),
    })


def full_refresh(
    settings: Settings, kafka: KafkaSide, plan: RefreshPlan, allow_partial: bool
) -> RefreshResult:
    """Rebuild, swap, move the group's offsets (see the module doc). ``GroupActiveError`` and
    ``RefreshError`` before the swap leave the live table unchanged; a ``RefreshError`` after
    it says the table was swapped but the offsets were not moved."""
    refuse_if_active(kafka.describe_group(plan.group), "run a full refresh")
    refusal = plan.refusal(allow_partial)
    if refusal is not None:
        raise RefreshError(refusal)
    rebuild_group = f"{plan.group}.full-refresh.{uuid.uuid4().hex[:8]}"
    with open_refresher(settings) as live:
        rebuild = rebuild_names(live.names)
        live.discard(rebuild)
        try:
            consumed, events, batches = _rebuild(settings, rebuild_group)
            refuse_if_active(kafka.describe_group(plan.group), "swap the rebuilt table in")
        except BaseException:
            _discard_quietly(live, rebuild)
            raise
        finally:
            kafka.delete_group(rebuild_group)
        live.swap_in(rebuild)
    log.info("full refresh: rebuilt table swapped in (%d events, %d batches)", events, batches)
    if consumed:
        try:
            kafka.alter_offsets(plan.group, consumed)
        except OffsetsError as err:
            raise RefreshError(
                f"the rebuilt table is in place, but the group's offsets were not moved ({err}); "
                "the next run re-reads from the old offsets, which the version guard makes "
                "harmless"
            ) from err
    return RefreshResult(rebuild_group, events, batches, tuple(sorted(consumed.items())))


def _discard_quietly(live: Refresher, rebuild: TableNames) -> None:
    try:
        live.discard(rebuild)
    except WarehouseError as err:
        log.warning("could not drop the rebuild objects (the next refresh will): %s", err)


def _rebuild(settings: Settings, rebuild_group: str) -> tuple[dict[int, int], int, int]:
    """Run the loop into the rebuild objects until caught up; the offsets it reached."""
    overridden = rebuild_settings(settings, rebuild_group)
    preflight(overridden.kafka, overridden.decoding.on_invalid == "dlq")
    collector = FlushCollector()
    loop = build_loop(overridden, until_caught_up=True, observers=[collector])
    log.info("full refresh: reading %s from the earliest offsets as group %s",
             settings.kafka.topic, rebuild_group)
    loop.run()
    if loop.stopping:
        raise RefreshError("the rebuild stopped before catching up; nothing was swapped")
    consumed: dict[int, int] = {}
    for report in collector.reports:
        for r in report.ranges:
            consumed[r.partition] = max(consumed.get(r.partition, 0), r.next_offset)
    return consumed, sum(report.events for report in collector.reports), len(collector.reports)

