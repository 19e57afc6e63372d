"""``kyc-sync verify``: prove that the state table equals the stream, without writing anything.

1. **Plan**: per partition, the earliest offset still in the log up to the group's committed
   offset: what the table must reflect (the group commits only what is in the warehouse).
2. **Reduce**: a run loop reads exactly those ranges — assigned explicitly, under a one-off
   group name ``<group>.verify.<id>`` that never joins a group nor commits — decodes and reduces
   them as a full refresh does, and keeps what the guarded MERGE would leave in memory
   (``StreamState``). Invalid events are counted, not dead-lettered again.
3. **Compare** (``reconcile``, pure): with every row of the state table, tombstones included.
   A profile is *missing* (live in the stream, absent or deleted in the table), *extra* (live
   in the table, absent or deleted in the stream), *stale* (the table holds an older version)
   or *mismatched* (same version, other values; or a version the stream does not end with).

Not judged, and said so: table rows whose version lies past the committed offsets (applied but
not committed yet, or written behind kyc-sync's back with such a version), and — when retention
trimmed a partition — rows whose version lies in the dropped history and that the stream has
nothing newer for. Profiles whose every event was dropped are invisible to both sides.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import polars as pl
from prometheus_client import CollectorRegistry, Gauge

from batcher.ranges import PartitionRange
from batcher.reducer import latest_per_key
from consumer.app import build_loop, open_inspector
from consumer.ops.ledger import fetch
from consumer.ops.offsets import KafkaSide, PartitionOffsets
from consumer.ops.rebuild import coverage
from consumer.ops.render import text_table
from consumer.run.observer import FlushCollector
from consumer.settings import Settings
from consumer.source.deadletters import CountedDeadLetters
from consumer.telemetry.progress import Progress
from schemas.columns import BASE_SCHEMA, BUSINESS_COLUMNS, KEY
from schemas.errors import TerminalError
from schemas.evolution import TableState
from warehouse.base import ApplyResult, Batch
from warehouse.inspect import COMPARED_COLUMNS, state_rows_sql

PHASES: tuple[str, ...] = ("read", "compare")
KINDS: tuple[str, ...] = ("missing", "extra", "stale", "mismatched")
"""The differences ``verify`` counts; any of them makes it exit 1."""
EXAMPLES = 5
VALUE_COLUMNS: tuple[str, ...] = (*(c.name for c in BUSINESS_COLUMNS[1:]), "op_type")
SCHEMA: dict[str, pl.DataType] = {
    KEY: pl.Int64(), "goldtier_id": pl.String(), "cid": pl.String(), "party_id": pl.String(),
    "created_date": pl.Datetime("us"), "updated_date": pl.Datetime("us"),
    "op_type": pl.String(), "op_time": pl.Datetime("us"), "src_partition": pl.Int64(),
    "src_offset": pl.Int64(), "is_deleted": pl.Boolean(),
}
assert tuple(SCHEMA) == COMPARED_COLUMNS


class VerifyError(TerminalError):
    """The stream could not be read as planned: no verdict."""


@dataclass(frozen=True, slots=True)
class VerifyPlan:
    topic: str
    group: str
    marks: tuple[PartitionOffsets, ...]

    @property
    def ranges(self) -> tuple[PartitionRange, ...]:
        """From the earliest offset to the group's position (its committed offset)."""
        return tuple(PartitionRange(m.partition, m.low, m.position) for m in self.marks)

    @property
    def trimmed(self) -> tuple[PartitionOffsets, ...]:
        return tuple(m for m in self.marks if m.low > 0)

    @property
    def uncommitted(self) -> tuple[int, ...]:
        return tuple(m.partition for m in self.marks if m.committed is None)


def plan_verify(kafka: KafkaSide, group: str) -> VerifyPlan:
    partitions = kafka.partitions()
    committed = kafka.committed(group, partitions)
    marks = kafka.watermarks(partitions)
    return VerifyPlan(kafka.topic, group, tuple(
        replace(marks[p], committed=committed.get(p)) for p in partitions
    ))


class StreamState:
    """A ``Warehouse`` that keeps in memory what the guarded MERGE would leave: per key, the
    row of the greatest version among every batch applied."""

    def __init__(self, table: TableState | None = None) -> None:
        self.frame: pl.DataFrame | None = None
        self.table = table or TableState(BASE_SCHEMA, None, False)

    def open(self) -> None:
        """Nothing to open."""

    def table_state(self) -> TableState:
        """The live table's columns: the stream is decoded against them, as the run does."""
        return self.table

    def apply(self, batch: Batch) -> ApplyResult:
        rows = pl.from_arrow(batch.rows)
        assert isinstance(rows, pl.DataFrame)
        rows = rows.select(pl.col(name).cast(dtype) for name, dtype in SCHEMA.items())
        frames = [rows] if self.frame is None else [self.frame, rows]
        self.frame = latest_per_key(pl.concat(frames, how="vertical"))
        return ApplyResult(0, 0, 0, 0, None, None, 0.0)

    def close(self) -> None:
        """Keeps the frame: it is the result."""

    def rows(self) -> pl.DataFrame:
        return pl.DataFrame(schema=SCHEMA) if self.frame is None else self.frame


@dataclass(frozen=True, slots=True)
class Finding:
    """One key found in a class, with what each side holds, in words."""

    key: int
    table: str
    stream: str

    def to_json(self) -> dict[str, Any]:
        return {"kyc_profile_id": self.key, "table": self.table, "stream": self.stream}


@dataclass(frozen=True, slots=True)
class Reconciliation:
    topic: str
    group: str
    ranges: tuple[PartitionRange, ...]
    trimmed: tuple[PartitionOffsets, ...]
    counts: dict[str, int]
    examples: dict[str, tuple[Finding, ...]]
    unjudged_trimmed: int
    unjudged_trimmed_examples: tuple[int, ...]
    ahead: int
    ahead_examples: tuple[int, ...]
    stream_live: int
    table_live: int
    events: int
    invalid: dict[str, int] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "group": self.group, "ok": self.ok,
            "read": [{"partition": r.partition, "from": r.first, "to": r.next_offset}
                     for r in self.ranges],
            "events": self.events, "invalid_events": self.invalid,
            "stream_live_profiles": self.stream_live, "table_live_profiles": self.table_live,
            "differences": self.counts,
            "examples": {k: [f.to_json() for f in v] for k, v in self.examples.items()},
            "not_judged": {
                "newer_than_committed": self.ahead,
                "newer_than_committed_examples": list(self.ahead_examples),
                "trimmed_history": self.unjudged_trimmed,
                "trimmed_history_examples": list(self.unjudged_trimmed_examples),
                "trimmed_partitions": [
                    {"partition": m.partition, "log_start": m.low} for m in self.trimmed
                ],
            },
        }

    def render(self) -> str:
        rows = [(r.partition, r.first, r.next_offset, r.count) for r in self.ranges]
        lines = [
            f"verify topic {self.topic} against the state table, group {self.group}",
            text_table(("partition", "from offset", "to offset", "events"), rows),
            f"read {self.events} event(s) ({_invalid_text(self.invalid)}); live profiles: "
            f"{self.stream_live} in the stream, {self.table_live} in the table",
        ]
        for kind in KINDS:
            count = self.counts[kind]
            lines.append(f"{kind:<10} {count}")
            lines += [f"  {f.key}: table {f.table}; stream {f.stream}"
                      for f in self.examples[kind]]
        if self.ahead:
            lines.append(
                f"not judged: {self.ahead} row(s) newer than the committed offsets (applied "
                f"and not committed yet, or written behind kyc-sync's back), e.g. "
                f"{_keys(self.ahead_examples)}")
        if self.trimmed:
            where = ", ".join(f"{m.partition} (from offset {m.low})" for m in self.trimmed)
            lines.append(
                f"retention trimmed partition(s) {where}: {self.unjudged_trimmed} row(s) of the "
                "table come from dropped history and cannot be judged"
                + (f", e.g. {_keys(self.unjudged_trimmed_examples)}"
                   if self.unjudged_trimmed else "")
                + "; profiles whose every event was dropped cannot be seen")
        lines.append("OK: the table equals the stream" if self.ok else
                     f"FAIL: {self.differences} profile(s) differ from the stream")
        return "\n".join(lines)


def _invalid_text(invalid: dict[str, int]) -> str:
    if not invalid:
        return "none invalid"
    return "invalid: " + ", ".join(f"{k} {v}" for k, v in sorted(invalid.items()))


def _keys(keys: Sequence[int]) -> str:
    return ", ".join(str(k) for k in keys) or "-"


def state_frame(rows: Sequence[Sequence[Any]]) -> pl.DataFrame:
    """The state table's rows (``COMPARED_COLUMNS``) as a frame of ``SCHEMA``."""
    return pl.DataFrame([tuple(r) for r in rows], schema=SCHEMA, orient="row")


def reconcile(
    plan: VerifyPlan, stream: pl.DataFrame, table: pl.DataFrame, events: int = 0,
    invalid: dict[str, int] | None = None,
) -> Reconciliation:
    """Compare the reduced stream with the state table (see the module doc)."""
    ranges = plan.ranges
    bounds = pl.DataFrame(
        {"src_partition": [r.partition for r in ranges], "_first": [r.first for r in ranges],
         "_next": [r.next_offset for r in ranges]},
        schema={"src_partition": pl.Int64(), "_first": pl.Int64(), "_next": pl.Int64()},
    )
    t = table.join(bounds, on="src_partition", how="left")
    joined = stream.join(t, on=KEY, how="full", suffix="_t", coalesce=True)
    s_in, t_in = pl.col("src_offset").is_not_null(), pl.col("src_offset_t").is_not_null()
    newer = _newer("_t", "")
    ahead = t_in & (pl.col("_next").is_null() | (pl.col("src_offset_t") >= pl.col("_next")))
    trimmed = (t_in & ~ahead & (pl.col("src_offset_t") < pl.col("_first"))
               & (~s_in | newer))
    s_live = s_in & ~pl.col("is_deleted").fill_null(True)
    t_live = t_in & ~pl.col("is_deleted_t").fill_null(True)
    values_differ = pl.any_horizontal(
        pl.col(c).ne_missing(pl.col(c + "_t")) for c in VALUE_COLUMNS)
    classified = joined.with_columns(
        ahead.alias("_ahead"), trimmed.alias("_trimmed"),
    ).with_columns(
        (~pl.col("_ahead") & ~pl.col("_trimmed")).alias("_judged"),
    ).with_columns(
        (pl.col("_judged") & s_live & ~t_live).alias("missing"),
        (pl.col("_judged") & t_live & ~s_live).alias("extra"),
        (pl.col("_judged") & s_live & t_live & _newer("", "_t")).alias("stale"),
        (pl.col("_judged") & s_live & t_live & ~_newer("", "_t")
         & (newer | values_differ)).alias("mismatched"),
    ).sort(KEY)
    counts = {k: int(classified.get_column(k).sum()) for k in KINDS}
    examples = {k: tuple(_finding(r) for r in classified.filter(pl.col(k)).head(EXAMPLES)
                         .iter_rows(named=True)) for k in KINDS}

    def keys(flag: str) -> tuple[int, ...]:
        return tuple(int(k) for k in classified.filter(pl.col(flag)).head(EXAMPLES)
                     .get_column(KEY).to_list())

    return Reconciliation(
        plan.topic, plan.group, ranges, plan.trimmed, counts, examples,
        unjudged_trimmed=int(classified.get_column("_trimmed").sum()),
        unjudged_trimmed_examples=keys("_trimmed"),
        ahead=int(classified.get_column("_ahead").sum()), ahead_examples=keys("_ahead"),
        stream_live=int(stream.filter(~pl.col("is_deleted")).height),
        table_live=int(table.filter(~pl.col("is_deleted")).height),
        events=events, invalid=dict(invalid or {}),
    )


def _newer(left: str, right: str) -> pl.Expr:
    """The version of side ``left`` is strictly greater than that of side ``right``."""
    t, p, o = (pl.col(c + left) for c in ("op_time", "src_partition", "src_offset"))
    t2, p2, o2 = (pl.col(c + right) for c in ("op_time", "src_partition", "src_offset"))
    return ((t > t2) | ((t == t2) & ((p > p2) | ((p == p2) & (o > o2))))).fill_null(False)


def _finding(row: dict[str, Any]) -> Finding:
    return Finding(int(row[KEY]), _side(row, "_t"), _side(row, ""))


def _side(row: dict[str, Any], suffix: str) -> str:
    if row.get("src_offset" + suffix) is None:
        return "has no row"
    state = "deleted" if row["is_deleted" + suffix] else "live"
    values = " ".join(f"{c}={_text(row[c + suffix])}" for c in ("goldtier_id", "cid", "party_id"))
    return (f"{state} {values} op_time={_text(row['op_time' + suffix])} "
            f"at {row['src_partition' + suffix]}:{row['src_offset' + suffix]}")


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return "null" if value is None else str(value)


def verify(settings: Settings, plan: VerifyPlan, progress: Progress | None = None
           ) -> Reconciliation:
    """Read, reduce, compare; writes nothing (no warehouse write, no commit, no copy)."""
    progress = progress or Progress("verify", plan.ranges, PHASES)
    group = f"{plan.group}.verify.{uuid.uuid4().hex[:8]}"
    overridden = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"group_id": group}),
        "decoding": settings.decoding.model_copy(update={"on_invalid": "dlq"}),
    })
    progress.phase("read")
    with open_inspector(settings) as inspector:
        table = inspector.table_state()
    state, sink, collector = StreamState(table), CountedDeadLetters(), FlushCollector()
    loop = build_loop(overridden, observers=[collector, progress], bounds=plan.ranges,
                      warehouse=state, dead_letters=sink)
    loop.install_signal_handlers()
    loop.run()
    if loop.stopping:
        raise VerifyError("verify was stopped before it read every planned event; no verdict")
    short = [r for r in coverage(plan.ranges, collector.reports) if not r.complete]
    if short:
        raise VerifyError("verify did not read every planned event ("
                          + "; ".join(r.describe() for r in short) + "); no verdict")
    progress.phase("compare")
    with open_inspector(settings) as inspector:
        rows = fetch(inspector, state_rows_sql(inspector.names.state, settings.warehouse.kind))
    return reconcile(plan, state.rows(), state_frame(rows),
                     events=sum(r.events for r in collector.reports), invalid=sink.counts)


def verdict_metrics(
    topic: str, group: str, result: Reconciliation | None, now_s: float
) -> CollectorRegistry:
    """The gauges a scheduled ``verify --textfile`` leaves for Prometheus (node exporter's
    textfile collector): differences per kind, rows not judged, when it ran, whether it
    reached a verdict (0: it could not read the stream or the table)."""
    registry = CollectorRegistry()
    labels = ["topic", "group"]
    Gauge("kyc_sync_verify_last_run_timestamp_seconds", "Unix time verify last ran.",
          labels, registry=registry).labels(topic, group).set(now_s)
    Gauge("kyc_sync_verify_success", "1 when verify reached a verdict, 0 when it could not.",
          labels, registry=registry).labels(topic, group).set(0 if result is None else 1)
    differences = Gauge("kyc_sync_verify_differences",
                        "Profiles of the state table that differ from the stream, by kind.",
                        [*labels, "kind"], registry=registry)
    unjudged = Gauge("kyc_sync_verify_not_judged",
                     "Rows of the state table verify could not judge, by reason.",
                     [*labels, "reason"], registry=registry)
    if result is not None:
        for kind in KINDS:
            differences.labels(topic, group, kind).set(result.counts[kind])
        unjudged.labels(topic, group, "newer_than_committed").set(result.ahead)
        unjudged.labels(topic, group, "trimmed_history").set(result.unjudged_trimmed)
    return registry
