"""Unit tests of ``replay``: the pure planning of new offsets (tables of cases), argument
parsing, and the refusal / execution logic over a fake Kafka side. No network."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import pytest

from batcher.ranges import PartitionRange
from batcher.window import FlushReason
from consumer.ops.arguments import parse_count, parse_datetime_ms, parse_partitions
from consumer.ops.offsets import GroupInfo, PartitionOffsets
from consumer.ops.rebuild import RefreshPlan, coverage, rebuild_settings, shortfall
from consumer.ops.replay import (
    GroupActiveError,
    Move,
    Reset,
    ResetKind,
    execute,
    plan_move,
    prepare,
    select_partitions,
)
from consumer.run.observer import FlushReport
from consumer.settings import KafkaSettings, Settings
from schemas.errors import UsageError

E, L, D, S, N = (ResetKind.EARLIEST, ResetKind.LATEST, ResetKind.DATETIME, ResetKind.SHIFT,
                 ResetKind.OFFSET)

# (committed, low, high, at_time, reset) -> (new offset, clamped)
PLAN_CASES: list[tuple[int | None, int, int, int | None, Reset, int, bool]] = [
    # to-earliest / to-latest: the watermarks, whatever is committed
    (40, 0, 100, None, Reset(E), 0, False),
    (40, 25, 100, None, Reset(E), 25, False),
    (None, 0, 100, None, Reset(L), 100, False),
    (40, 0, 100, None, Reset(L), 100, False),
    # to-datetime / by-duration: the offsets_for_times answer; none after the time -> log end
    (40, 0, 100, 17, Reset(D, 1_700_000_000_000), 17, False),
    (40, 0, 100, None, Reset(D, 1_700_000_000_000), 100, False),
    (40, 0, 100, 17, Reset(ResetKind.DURATION, 1_700_000_000_000), 17, False),
    (40, 20, 100, 5, Reset(D, 1), 20, True),  # below the log start (deleted meanwhile)
    # shift-by: from the committed offset, clamped into the log
    (40, 0, 100, None, Reset(S, -10), 30, False),
    (40, 0, 100, None, Reset(S, 10), 50, False),
    (40, 0, 100, None, Reset(S, -100), 0, True),
    (40, 0, 100, None, Reset(S, 100), 100, True),
    (None, 10, 100, None, Reset(S, 5), 15, False),  # nothing committed: from the log start
    (3, 10, 100, None, Reset(S, 0), 10, False),  # committed below the log start
    # to-offset: as given, clamped
    (40, 0, 100, None, Reset(N, 70), 70, False),
    (40, 10, 100, None, Reset(N, 3), 10, True),
    (40, 10, 100, None, Reset(N, 300), 100, True),
    # an empty partition
    (None, 0, 0, None, Reset(S, -5), 0, True),
]


@pytest.mark.parametrize(
    ("committed", "low", "high", "at_time", "reset", "new_offset", "clamped"), PLAN_CASES
)
def test_plan_move(
    committed: int | None, low: int, high: int, at_time: int | None, reset: Reset,
    new_offset: int, clamped: bool,
) -> None:
    offsets = PartitionOffsets(3, committed, low, high)
    move = plan_move(offsets, reset, at_time)

    assert (move.offsets, move.partition, move.committed) == (offsets, 3, committed)
    assert (move.new_offset, move.clamped) == (new_offset, clamped)
    assert low <= move.new_offset <= high


# (committed, low, high, new) -> (re-read, skipped, to read)
COUNT_CASES = [
    (40, 0, 100, 10, 30, 0, 90),
    (40, 0, 100, 70, 0, 30, 30),
    (40, 0, 100, 40, 0, 0, 60),
    (None, 10, 100, 10, 0, 0, 90),  # nothing committed: the group starts at the log start
    (5, 10, 100, 10, 0, 0, 90),  # committed offset deleted by retention
    (None, 10, 100, 100, 0, 90, 0),
]


@pytest.mark.parametrize(
    ("committed", "low", "high", "new", "reread", "skipped", "to_read"), COUNT_CASES
)
def test_move_counts(
    committed: int | None, low: int, high: int, new: int, reread: int, skipped: int,
    to_read: int,
) -> None:
    move = Move(PartitionOffsets(0, committed, low, high), new)
    assert (move.reread, move.skipped, move.to_read) == (reread, skipped, to_read)


def test_reset_describe_names_the_option_and_time() -> None:
    assert Reset(E).describe() == "--to-earliest"
    assert Reset(S, -5, "-5").describe() == "--shift-by -5"
    assert Reset(D, 1_705_312_800_000).describe() == (
        "--to-datetime (messages from 2024-01-15T10:00:00.000+00:00)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:00:00Z", 1_705_312_800_000),
        ("2024-01-15T10:00:00", 1_705_312_800_000),  # no offset: UTC
        ("2024-01-15T11:00:00+01:00", 1_705_312_800_000),
        ("2024-01-15T10:00:00.250Z", 1_705_312_800_250),
        ("2024-01-15", 1_705_276_800_000),
    ],
)
def test_parse_datetime(text: str, expected: int) -> None:
    assert parse_datetime_ms(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", ""])
def test_parse_datetime_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_datetime_ms(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("0,2", (0, 2)), ("2,0,2", (0, 2)), ("1", (1,)), (" 3 , 1 ", (1, 3))]
)
def test_parse_partitions(text: str, expected: tuple[int, ...]) -> None:
    assert parse_partitions(text) == expected


@pytest.mark.parametrize("text", ["", ",", "a", "-1", "0,x"])
def test_parse_partitions_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="partition list"):
        parse_partitions(text)


def test_parse_count() -> None:
    assert parse_count("12") == 12
    with pytest.raises(ValueError, match=">= 0"):
        parse_count("-1")
    with pytest.raises(ValueError, match="integer"):
        parse_count("x")


def test_select_partitions() -> None:
    assert select_partitions((0, 1, 2), None) == (0, 1, 2)
    assert select_partitions((0, 1, 2), (2, 0)) == (0, 2)
    with pytest.raises(UsageError, match=r"partitions \[5\] do not exist"):
        select_partitions((0, 1, 2), (0, 5))


@pytest.mark.parametrize(
    ("state", "members", "active"),
    [
        ("EMPTY", (), False),
        ("DEAD", (), False),
        ("STABLE", ("c@h",), True),
        ("PREPARING_REBALANCING", (), True),
        ("COMPLETING_REBALANCING", ("c@h",), True),
        ("UNKNOWN", (), True),
    ],
)
def test_group_activity(state: str, members: tuple[str, ...], active: bool) -> None:
    assert GroupInfo("g", state, members).active is active


# --------------------------------------------------------------------------- orchestration


@dataclass
class FakeKafka:
    """A ``KafkaSide`` answering from dictionaries, recording what was moved."""

    marks: dict[int, PartitionOffsets]
    committed_offsets: dict[int, int | None]
    at_time: dict[int, int | None] = field(default_factory=dict)
    groups: list[GroupInfo] = field(default_factory=list)
    moved: list[tuple[str, dict[int, int]]] = field(default_factory=list)
    topic: str = "audit"

    def partitions(self) -> tuple[int, ...]:
        return tuple(sorted(self.marks))

    def watermarks(self, partitions: Iterable[int]) -> dict[int, PartitionOffsets]:
        return {p: self.marks[p] for p in partitions}

    def offsets_for_time(
        self, partitions: Iterable[int], timestamp_ms: int
    ) -> dict[int, int | None]:
        return {p: self.at_time.get(p) for p in partitions}

    def committed(self, group: str, partitions: Iterable[int]) -> dict[int, int | None]:
        return {p: self.committed_offsets.get(p) for p in partitions}

    def describe_group(self, group: str) -> GroupInfo:
        return self.groups.pop(0) if len(self.groups) > 1 else self.groups[0]

    def alter_offsets(self, group: str, offsets: Mapping[int, int]) -> None:
        self.moved.append((group, dict(offsets)))

    def timestamps_at(self, offsets: Mapping[int, int]) -> dict[int, int | None]:
        raise AssertionError("not used by replay")

    def close(self) -> None:
        pass


IDLE = GroupInfo("g", "EMPTY")
BUSY = GroupInfo("g", "STABLE", ("rdkafka@10.0.0.7",))


def fake(*groups: GroupInfo) -> FakeKafka:
    return FakeKafka(
        marks={
            0: PartitionOffsets(0, None, 0, 100),
            1: PartitionOffsets(1, None, 0, 50),
            2: PartitionOffsets(2, None, 10, 10),
        },
        committed_offsets={0: 100, 1: 20, 2: None},
        at_time={0: 60, 1: None, 2: None},
        groups=list(groups),
    )


def test_prepare_plans_every_partition_and_changes_nothing() -> None:
    kafka = fake(IDLE)

    plan = prepare(kafka, "g", Reset(D, 1_000))

    assert plan.offsets() == {0: 60, 1: 50, 2: 10}
    assert [(m.reread, m.skipped) for m in plan.moves] == [(40, 0), (0, 30), (0, 0)]
    assert kafka.moved == []
    assert "dry run: nothing changed" in plan.render(executed=False)
    assert plan.to_json(executed=False)["partitions"][0] == {
        "partition": 0, "committed": 100, "new_offset": 60, "log_start": 0, "log_end": 100,
        "reread": 40, "skipped": 0, "to_read": 40, "clamped": False,
    }


def test_prepare_only_the_chosen_partitions() -> None:
    plan = prepare(fake(IDLE), "g", Reset(E), (0, 2))
    assert plan.offsets() == {0: 0, 2: 10}


def test_execute_moves_the_planned_offsets() -> None:
    kafka = fake(IDLE)
    plan = prepare(kafka, "g", Reset(S, -10, "-10"))

    saved: list[dict[int, int]] = []
    execute(kafka, plan, saved.append)

    assert saved == [{0: 100, 1: 20}]  # saved before the move; 2 had no committed offset
    assert kafka.moved == [("g", {0: 90, 1: 10, 2: 10})]
    assert "offsets moved" in plan.render(executed=True)


def test_execute_refuses_an_active_group() -> None:
    kafka = fake(BUSY)
    plan = prepare(kafka, "g", Reset(E))
    assert "warning: --execute would be refused now" in plan.render(executed=False)

    with pytest.raises(GroupActiveError, match=r"1 active member.*rdkafka@10\.0\.0\.7"):
        execute(kafka, plan, lambda _offsets: None)
    assert kafka.moved == []


def test_execute_rechecks_the_group_at_execution() -> None:
    kafka = fake(IDLE, BUSY)  # idle while planning, a member joined since
    plan = prepare(kafka, "g", Reset(E))

    with pytest.raises(GroupActiveError):
        execute(kafka, plan, lambda _offsets: None)
    assert kafka.moved == []


# --------------------------------------------------------------------------- full refresh


def refresh_plan(*lows: int) -> RefreshPlan:
    marks = tuple((p, PartitionOffsets(p, None, low, 100)) for p, low in enumerate(lows))
    return RefreshPlan("audit", "g", marks)


def test_full_refresh_refuses_a_topic_that_lost_history() -> None:
    assert refresh_plan(0, 0).refusal(allow_partial=False) is None
    reason = refresh_plan(0, 7, 3).refusal(allow_partial=False)
    assert reason is not None
    assert "partition(s) 1, 2" in reason
    assert "--allow-partial" in reason
    assert refresh_plan(0, 7).refusal(allow_partial=True) is None
    assert refresh_plan(0, 7).messages == 193


def test_full_refresh_dry_run_text() -> None:
    text = refresh_plan(0, 7).render(executed=False, allow_partial=False)
    assert "dry run: nothing changed" in text
    assert "would be refused: refusing the full refresh" in text


def test_rebuild_settings_rename_every_object_and_the_group() -> None:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="b:9092", group_id="kyc-sync"))

    rebuilt = rebuild_settings(settings, "kyc-sync.full-refresh.ab12")

    assert rebuilt.kafka.group_id == "kyc-sync.full-refresh.ab12"
    assert rebuilt.kafka.topic == settings.kafka.topic
    assert (rebuilt.warehouse.table, rebuilt.warehouse.state_table,
            rebuilt.warehouse.ledger_table, rebuilt.warehouse.columns_table) == (
        "kyc_profile_current__rebuild", "kyc_profile_state__rebuild", "kyc_sync_ledger__rebuild",
        "kyc_sync_columns__rebuild",
    )
    assert settings.warehouse.state_table == "kyc_profile_state"  # the original is unchanged


def test_from_file_moves_the_partitions_the_file_lists() -> None:
    kafka = fake(IDLE)
    reset = Reset(ResetKind.FROM_FILE, 0, "saved.csv")

    plan = prepare(kafka, "g", reset, targets={0: 40, 1: 70})

    assert plan.offsets() == {0: 40, 1: 50}  # 70 is past the log end: clamped, flagged
    assert [m.clamped for m in plan.moves] == [False, True]
    assert "replay --from-file saved.csv" in plan.render(executed=False)
    with pytest.raises(UsageError, match="do not exist"):
        prepare(kafka, "g", reset, targets={7: 1})
    with pytest.raises(UsageError, match="drop --partitions"):
        prepare(kafka, "g", reset, (0,), targets={0: 1})


def test_execute_names_the_undo_file() -> None:
    kafka = fake(IDLE)
    plan = prepare(kafka, "g", Reset(E))
    execute(kafka, plan, lambda _offsets: None)
    text = replace(plan, saved_to="/tmp/g.csv").render(executed=True)
    assert "previous offsets saved to /tmp/g.csv (undo: kyc-sync replay --from-file " \
        "/tmp/g.csv --execute)" in text


def test_a_failing_save_moves_nothing() -> None:
    kafka = fake(IDLE)
    plan = prepare(kafka, "g", Reset(E))

    def fail(_offsets: dict[int, int]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        execute(kafka, plan, fail)
    assert kafka.moved == []


# --------------------------------------------------------------------------- refresh coverage


def flushed(*ranges: tuple[int, int, int]) -> FlushReport:
    return FlushReport("b", FlushReason.CAUGHT_UP, 0, 0, 0, None,
                       tuple(PartitionRange(*r) for r in ranges), 0.0, 0.0)


def test_coverage_joins_the_windows_of_each_partition() -> None:
    planned = (PartitionRange(0, 0, 10), PartitionRange(1, 5, 8), PartitionRange(2, 3, 3))
    reads = coverage(planned, [flushed((0, 0, 4), (1, 5, 8)), flushed((0, 4, 10))])
    assert [r.covered for r in reads] == [((0, 10),), ((5, 8),), ()]
    assert [r.read for r in reads] == [10, 3, 0]
    assert shortfall(reads) is None


def test_a_short_read_refuses_the_swap_with_the_numbers() -> None:
    """What ``auto.offset.reset=latest`` did before the rebuild assigned its offsets: it read
    nothing, and the empty table was swapped in."""
    planned = (PartitionRange(0, 0, 60), PartitionRange(1, 0, 5))
    problem = shortfall(coverage(planned, [flushed((1, 0, 5), (0, 58, 60))]))
    assert problem == (
        "refusing to swap in the rebuilt table: it did not read every planned event (partition "
        "0: planned offsets 0-59 (60 events), read 2 (applied + dead-lettered; offsets 58-59)); "
        "the live table and the group's offsets are unchanged")
    assert shortfall(coverage(planned, [])) is not None
    gap = coverage((PartitionRange(0, 0, 10),), [flushed((0, 0, 4)), flushed((0, 5, 10))])
    assert not gap[0].complete
