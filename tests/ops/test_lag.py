"""Unit tests of ``lag``: per-partition lag and age, thresholds, output, and ``measure`` over a
fake Kafka side (only lagging partitions are probed, at the committed offset). Also the
duration parsing the ``--max-age`` options use. No network."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from consumer.ops.durations import format_duration, parse_duration
from consumer.ops.lag import LagReport, PartitionLag, Thresholds, measure
from consumer.ops.ledger import LastBatch
from consumer.ops.offsets import GroupInfo, PartitionOffsets

NOW_MS = 1_800_000_000_000


# (committed, low, high, oldest_ms) -> (lag, age seconds)
LAG_CASES: list[tuple[int | None, int, int, int | None, int, float | None]] = [
    (100, 0, 100, None, 0, 0.0),  # caught up: age 0 without probing
    (90, 0, 100, NOW_MS - 42_500, 10, 42.5),
    (None, 0, 100, NOW_MS - 1_000, 100, 1.0),  # nothing committed: from the log start
    (None, 30, 100, NOW_MS - 1_000, 70, 1.0),
    (5, 30, 100, NOW_MS - 1_000, 70, 1.0),  # committed offset deleted by retention
    (90, 0, 100, None, 10, None),  # no timestamp read
    (90, 0, 100, NOW_MS + 5_000, 10, 0.0),  # producer clock ahead: never negative
]


@pytest.mark.parametrize(("committed", "low", "high", "oldest", "lag", "age"), LAG_CASES)
def test_partition_lag(
    committed: int | None, low: int, high: int, oldest: int | None, lag: int, age: float | None
) -> None:
    partition = PartitionLag(PartitionOffsets(0, committed, low, high), oldest)
    assert partition.lag == lag
    assert partition.age_s(NOW_MS) == age


BATCH = LastBatch("b1", datetime(2027, 1, 15, 8, 0, 0), datetime(2027, 1, 15, 7, 59), 12)


def report(*partitions: PartitionLag, thresholds: Thresholds | None = None) -> LagReport:
    return LagReport("audit", "g", partitions, NOW_MS, BATCH, None, thresholds or Thresholds())


LAGGING = (
    PartitionLag(PartitionOffsets(0, 100, 0, 100)),
    PartitionLag(PartitionOffsets(1, 40, 0, 50), NOW_MS - 120_000),
    PartitionLag(PartitionOffsets(2, 10, 0, 13), NOW_MS - 30_000),
)


@pytest.mark.parametrize(
    ("thresholds", "problems"),
    [
        (Thresholds(), []),
        (Thresholds(max_lag=13), []),
        (Thresholds(max_lag=12), ["lag 13 messages > --max-lag 12"]),
        (Thresholds(max_age_s=120), []),
        (Thresholds(max_age_s=60), [
            "partition 1: oldest unconsumed message is 2m00s old > --max-age 1m00s"]),
        (Thresholds(max_lag=0, max_age_s=10), [
            "lag 13 messages > --max-lag 0",
            "partition 1: oldest unconsumed message is 2m00s old > --max-age 10s",
            "partition 2: oldest unconsumed message is 30s old > --max-age 10s",
        ]),
    ],
)
def test_thresholds(thresholds: Thresholds, problems: list[str]) -> None:
    assert report(*LAGGING, thresholds=thresholds).problems() == problems


def test_unknown_age_fails_max_age() -> None:
    unknown = report(
        PartitionLag(PartitionOffsets(0, 1, 0, 5)), thresholds=Thresholds(max_age_s=60)
    )
    assert unknown.problems() == [
        "partition 0: age of the oldest unconsumed message unknown (no timestamp read)"
    ]


def test_partitions_never_committed_are_flagged() -> None:
    never = report(
        PartitionLag(PartitionOffsets(0, 100, 0, 100)),
        PartitionLag(PartitionOffsets(1, None, 0, 40), NOW_MS - 1_000),
        PartitionLag(PartitionOffsets(2, None, 0, 0)),    # empty: nothing to commit
        PartitionLag(PartitionOffsets(3, None, 30, 30)),  # emptied by retention
    )

    assert never.problems() == [
        "partition 1: no committed offset, 40 message(s) never read by group g"]
    assert never.to_json()["ok"] is False
    assert "FAIL partition 1: no committed offset" in never.render()


def test_json_output() -> None:
    data = report(*LAGGING, thresholds=Thresholds(max_lag=5)).to_json()

    assert json.loads(json.dumps(data)) == data
    assert data["partitions"][1] == {
        "partition": 1, "committed": 40, "log_end": 50, "lag": 10, "lag_seconds": 120.0,
    }
    assert data["total_lag"] == 13
    assert data["max_lag_seconds"] == 120.0
    assert data["last_batch"] == {
        "batch_id": "b1", "committed_at": "2027-01-15T08:00:00.000000Z",
        "newest_op_time": "2027-01-15T07:59:00.000000Z", "batches": 12,
    }
    assert data["ok"] is False
    assert data["problems"] == ["lag 13 messages > --max-lag 5"]


def test_text_output() -> None:
    text = report(*LAGGING).render()
    lines = text.splitlines()

    assert lines[0] == "topic audit, group g"
    assert lines[1].split() == ["partition", "committed", "log", "end", "lag", "lag", "age"]
    assert lines[3].split() == ["1", "40", "50", "10", "2m00s"]
    assert "total lag 13 message(s), oldest unconsumed 2m00s" in text
    assert "last batch b1 committed 2027-01-15T08:00:00Z" in text
    assert "newest op_time applied 2027-01-15T07:59:00Z" in text


def test_text_output_without_the_ledger() -> None:
    missing = LagReport("audit", "g", LAGGING, NOW_MS, None, "database does not exist")
    assert "warehouse ledger unavailable: database does not exist" in missing.render()
    empty = LagReport("audit", "g", LAGGING, NOW_MS)
    assert "no batch recorded for this topic yet" in empty.render()


@dataclass
class ProbeKafka:
    committed_offsets: dict[int, int | None]
    marks: dict[int, PartitionOffsets]
    stamps: dict[int, int]
    probed: list[dict[int, int]] = field(default_factory=list)
    topic: str = "audit"

    def partitions(self) -> tuple[int, ...]:
        return tuple(sorted(self.marks))

    def watermarks(self, partitions: Iterable[int]) -> dict[int, PartitionOffsets]:
        return {p: self.marks[p] for p in partitions}

    def committed(self, group: str, partitions: Iterable[int]) -> dict[int, int | None]:
        return {p: self.committed_offsets.get(p) for p in partitions}

    def timestamps_at(self, offsets: Mapping[int, int]) -> dict[int, int | None]:
        self.probed.append(dict(offsets))
        return {p: self.stamps[p] for p in offsets}

    def offsets_for_time(
        self, partitions: Iterable[int], timestamp_ms: int
    ) -> dict[int, int | None]:
        raise AssertionError("not used by lag")

    def describe_group(self, group: str) -> GroupInfo:
        raise AssertionError("not used by lag")

    def alter_offsets(self, group: str, offsets: Mapping[int, int]) -> None:
        raise AssertionError("lag never moves offsets")

    def close(self) -> None:
        pass


def test_measure_probes_only_lagging_partitions_at_their_position() -> None:
    kafka = ProbeKafka(
        committed_offsets={0: 100, 1: 40, 2: None},
        marks={
            0: PartitionOffsets(0, None, 0, 100),
            1: PartitionOffsets(1, None, 0, 50),
            2: PartitionOffsets(2, None, 5, 9),
        },
        stamps={1: NOW_MS - 3_000, 2: NOW_MS - 9_000},
    )

    partitions, now_ms = measure(kafka, "g", clock=lambda: NOW_MS / 1000)

    assert kafka.probed == [{1: 40, 2: 5}]
    assert now_ms == NOW_MS
    assert [(p.lag, p.age_s(now_ms)) for p in partitions] == [(0, 0.0), (10, 3.0), (4, 9.0)]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("900", 900), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800),
        ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400), ("PT2H", 7200), ("pt15m", 900),
        ("P1DT30M", 88200), ("PT0.5S", 0.5), ("2H", 7200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "2x", "h", "-5", "-5m", "inf", "nan", "1h 30m",
                                  "P", "PT", "P1DT", "m15"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.04, "0s"), (0.5, "0.5s"), (42.25, "42.2s"), (59.97, "1m00s"), (60, "1m00s"),
     (312, "5m12s"), (11_225, "3h07m"), (187_200, "2d04h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
