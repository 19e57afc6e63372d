"""``kyc-sync dlq inspect`` and ``kyc-sync dlq redrive``: what the dead-letter topic holds, and
putting the messages that now decode back through the normal path.

Both read the dead-letter topic by assigning its partitions (no group membership, no
rebalance). ``inspect`` reads all of it and counts by class and reason (digits in reasons are
folded, so "key 5 disagrees with 6" and "key 7 disagrees with 8" count together), with the
source offsets and failure times they cover. ``redrive`` reads from where its own consumer
group (``<group>.dlq-redrive``, or ``<group>.dlq-redrive.<class>`` with ``--class``) last
stopped, or from the start with ``--from-start``, up to the end it saw when it began; it decodes
each message with the normal decoder (so a fixed schema file, a registry schema now readable,
a column now added all count). With ``--execute`` the events that decode are reduced and
applied as one batch with their original partition and offset as their version: the guard
makes old events harmless (an event older than the row it meets is skipped as stale); with
profile history on, each of them is also a version of the history table, between its
neighbours; then the group's offsets are committed. Messages that are still invalid stay in
the topic and are not copied again. Without ``--execute`` nothing is written and nothing
committed.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from batcher.ranges import PartitionRange
from batcher.reducer import Reducer
from consumer.decode.decoder import Decoded, Decoder, RegistryUnavailable, rows_of
from consumer.ops.offsets import OffsetsError
from consumer.ops.render import text_table
from consumer.run.retry import retry_transient
from consumer.settings import Settings
from consumer.source.client import admin_config, consumer_config
from consumer.source.topics import partition_count
from schemas.errors import InvalidEvent, TerminalError
from warehouse.base import ApplyResult, Batch, Warehouse
from warehouse.staging import stage_frame

log = logging.getLogger("kyc_sync.dlq")

HEADER = "kyc_sync."
READ_TIMEOUT_S = 30.0


class DeadLetterTopicError(TerminalError):
    """The dead-letter topic cannot be read."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of the dead-letter topic, with what kyc-sync wrote in its headers."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    reason: str
    source_partition: int | None
    source_offset: int | None
    failed_at_ms: int | None

    @classmethod
    def of(cls, msg: Message) -> DeadLetter:
        raw = msg.headers() or []
        items = raw.items() if isinstance(raw, dict) else raw
        meta: dict[str, str] = {}
        for name, value in items:
            if name.startswith(HEADER):  # the last copy wins (a redriven message keeps its own)
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                meta[name[len(HEADER):]] = text or ""
        partition: int = msg.partition()  # type: ignore[assignment]
        offset: int = msg.offset()  # type: ignore[assignment]
        return cls(
            partition, offset, msg.key(), msg.value(),
            meta.get("error_class", "unknown"), meta.get("reason", ""),
            _int(meta.get("source_partition")), _int(meta.get("source_offset")),
            _int(meta.get("failed_at_ms")),
        )


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def reason_pattern(reason: str) -> str:
    """A reason with its numbers folded: the reasons of one kind of problem count together."""
    return re.sub(r"\d+", "#", reason)


@dataclass
class Summary:
    """Counts of a run of dead letters (``inspect``)."""

    topic: str
    letters: list[DeadLetter] = field(default_factory=list)
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)
    """DLQ partition -> (low, high) watermarks."""

    def by_class(self) -> list[dict[str, Any]]:
        out = []
        for error_class in sorted({d.error_class for d in self.letters}):
            mine = [d for d in self.letters if d.error_class == error_class]
            times = [d.failed_at_ms for d in mine if d.failed_at_ms is not None]
            sources: dict[int, list[int]] = {}
            for d in mine:
                if d.source_partition is not None and d.source_offset is not None:
                    sources.setdefault(d.source_partition, []).append(d.source_offset)
            out.append({
                "class": error_class, "count": len(mine),
                "first_failed_at": _iso(min(times)) if times else None,
                "last_failed_at": _iso(max(times)) if times else None,
                "source_offsets": [
                    {"partition": p, "first": min(o), "last": max(o), "count": len(o)}
                    for p, o in sorted(sources.items())
                ],
            })
        return out

    def by_reason(self, top: int = 20) -> list[dict[str, Any]]:
        counts: Counter[tuple[str, str]] = Counter(
            (d.error_class, reason_pattern(d.reason)) for d in self.letters
        )
        example: dict[tuple[str, str], str] = {}
        for d in self.letters:
            example.setdefault((d.error_class, reason_pattern(d.reason)), d.reason)
        return [{"class": c, "reason": r, "count": n, "example": example[(c, r)]}
                for (c, r), n in counts.most_common(top)]

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "messages": len(self.letters),
            "partitions": [{"partition": p, "log_start": lo, "log_end": hi}
                           for p, (lo, hi) in sorted(self.partitions.items())],
            "classes": self.by_class(), "reasons": self.by_reason(),
        }

    def render(self) -> str:
        lines = [f"dead-letter topic {self.topic}: {len(self.letters)} message(s)"]
        if not self.letters:
            return lines[0]
        lines.append(text_table(
            ("class", "count", "first failed at", "last failed at", "source offsets"),
            [(c["class"], c["count"], c["first_failed_at"] or "-", c["last_failed_at"] or "-",
              ", ".join(f"p{s['partition']}:{s['first']}..{s['last']}"
                        for s in c["source_offsets"]) or "-")
             for c in self.by_class()],
        ))
        lines.append("reasons (numbers folded as #):")
        lines.append(text_table(
            ("count", "class", "reason"),
            [(r["count"], r["class"], _short(r["reason"])) for r in self.by_reason()],
        ))
        return "\n".join(lines)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(text: str, width: int = 300) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- reading --------------------------------------------------------------------------------


class DeadLetterReader:
    """Reads the dead-letter topic by assignment; commits a group's offsets when asked."""

    def __init__(self, settings: Settings, group: str, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.topic = settings.kafka.dead_letter_topic
        self.timeout_s = timeout_s
        config = consumer_config(settings.kafka)
        config.update({
            "group.id": group, "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        })
        config.pop("partition.assignment.strategy", None)
        self.consumer = Consumer(config)
        self.admin = AdminClient(admin_config(settings.kafka))

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """Per partition of the dead-letter topic: (log start, log end)."""
        try:
            count = partition_count(self.admin, self.topic, self.timeout_s)
        except KafkaException as err:
            raise DeadLetterTopicError(f"metadata of topic {self.topic!r}: {err}") from None
        if count is None:
            raise DeadLetterTopicError(f"dead-letter topic {self.topic!r} does not exist")
        marks = {}
        for p in range(count):
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=self.timeout_s
                )
            except KafkaException as err:
                raise DeadLetterTopicError(f"watermarks of {self.topic}[{p}]: {err}") from None
            marks[p] = (int(low), int(high))
        return marks

    def committed(self, partitions: Iterable[int]) -> dict[int, int | None]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        try:
            found = self.consumer.committed(tps, timeout=self.timeout_s)
        except KafkaException as err:
            raise DeadLetterTopicError(f"committed offsets of the redrive group: {err}") from None
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def read(self, start: dict[int, int], end: dict[int, int]) -> list[DeadLetter]:
        """Every message from ``start`` up to (not including) ``end``, per partition."""
        todo = {p: s for p, s in start.items() if s < end.get(p, 0)}
        if not todo:
            return []
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in todo.items()])
        out: list[DeadLetter] = []
        remaining = set(todo)
        idle = 0.0
        while remaining:
            batch = self.consumer.consume(500, 1.0)
            if not batch:
                idle += 1.0
                if idle > self.timeout_s:
                    raise DeadLetterTopicError(
                        f"no message of {self.topic} for {self.timeout_s:.0f}s before its end "
                        f"(partitions {sorted(remaining)})"
                    )
                continue
            idle = 0.0
            for msg in batch:
                partition: int = msg.partition()  # type: ignore[assignment]
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise DeadLetterTopicError(f"reading {self.topic}: {error}")
                    if partition in remaining and (msg.offset() or 0) >= end[partition]:
                        remaining.discard(partition)
                    continue
                offset: int = msg.offset()  # type: ignore[assignment]
                if partition not in remaining or offset >= end[partition]:
                    continue
                out.append(DeadLetter.of(msg))
                if offset + 1 >= end[partition]:
                    remaining.discard(partition)
        return out

    def commit(self, offsets: dict[int, int]) -> None:
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        if tps:
            self.consumer.commit(offsets=tps, asynchronous=False)

    def close(self) -> None:
        self.consumer.close()


# -- redrive --------------------------------------------------------------------------------


def redrive_group(settings: Settings, error_class: str | None) -> str:
    """The redrive's own consumer group (one per class filter, so that redriving one class
    does not move past the others)."""
    base = f"{settings.kafka.group_id}.dlq-redrive"
    return base if error_class is None else f"{base}.{error_class}"


@dataclass
class Redrive:
    """What a redrive found: the messages that now decode and those still invalid."""

    topic: str
    group: str
    error_class: str | None
    start: dict[int, int]
    end: dict[int, int]
    read: int = 0
    skipped: int = 0
    """Messages of another class than ``--class``: not looked at."""
    decoded: list[tuple[DeadLetter, Decoded]] = field(default_factory=list)
    invalid: list[tuple[DeadLetter, InvalidEvent]] = field(default_factory=list)
    result: ApplyResult | None = None
    batch_id: str | None = None

    def decoded_by_class(self) -> dict[str, int]:
        return dict(Counter(d.error_class for d, _ in self.decoded))

    def invalid_by_reason(self) -> list[dict[str, Any]]:
        counts: Counter[tuple[str, str]] = Counter(
            (e.error_class, reason_pattern(e.reason)) for _, e in self.invalid
        )
        return [{"class": c, "reason": r, "count": n} for (c, r), n in counts.most_common()]

    def to_json(self, executed: bool) -> dict[str, Any]:
        result = self.result
        return {
            "topic": self.topic, "group": self.group, "class": self.error_class,
            "executed": executed, "read": self.read, "skipped_other_class": self.skipped,
            "decodes_now": len(self.decoded), "decodes_now_by_class": self.decoded_by_class(),
            "still_invalid": len(self.invalid), "still_invalid_by_reason":
                self.invalid_by_reason(),
            "offsets": [{"partition": p, "from": self.start.get(p, 0), "to": o}
                        for p, o in sorted(self.end.items())],
            "batch_id": self.batch_id,
            "applied": None if result is None else {
                "inserted": result.inserted, "updated": result.updated,
                "deleted": result.deleted, "skipped_stale": result.skipped_stale,
            },
        }

    def render(self, executed: bool) -> str:
        span = ", ".join(f"p{p}:{self.start.get(p, 0)}..{o}" for p, o in sorted(self.end.items()))
        which = "every class" if self.error_class is None else f"class {self.error_class}"
        lines = [
            f"dead-letter topic {self.topic} ({which}), group {self.group}: read {self.read} "
            f"message(s) at offsets {span or 'none'}",
            f"decode now: {len(self.decoded)}"
            + (f" ({', '.join(f'{c}: {n}' for c, n in sorted(self.decoded_by_class().items()))})"
               if self.decoded else ""),
            f"still invalid, left in the topic: {len(self.invalid)}",
        ]
        if self.skipped:
            lines.append(f"other classes, not looked at: {self.skipped}")
        for found in self.invalid_by_reason()[:20]:
            lines.append(f"  {found['count']:>6}  {found['class']}: {_short(found['reason'])}")
        if not executed:
            lines.append("dry run: nothing written, no offset committed; add --execute to apply")
        elif self.result is not None:
            r = self.result
            lines.append(
                f"applied as batch {self.batch_id}: inserted {r.inserted}, updated {r.updated}, "
                f"deleted {r.deleted}, skipped as stale {r.skipped_stale}; group offsets "
                "committed"
            )
        else:
            lines.append("nothing to apply; group offsets committed")
        return "\n".join(lines)


def classify(
    letters: Sequence[DeadLetter], decoder: Decoder, plan: Redrive
) -> None:
    """Decode each dead letter with the normal decoder; a registry away stops the redrive
    (``RegistryUnavailable``: nothing is applied, nothing committed)."""
    for letter in letters:
        if plan.error_class is not None and letter.error_class != plan.error_class:
            plan.skipped += 1
            continue
        try:
            plan.decoded.append((letter, decoder.decode(letter.value, letter.key)))
        except InvalidEvent as invalid:
            plan.invalid.append((letter, invalid))


def redrive_batch(plan: Redrive, decoder: Decoder, history: bool = False) -> Batch | None:
    """The events that decode, reduced to one row per key, as a batch. Their version is their
    original partition and offset (from the headers; the dead-letter position without them),
    so that the guard orders them exactly as if they had been applied the first time. With
    ``history`` (profile history on), the batch carries their distinct versions too: the
    history table gets each one, between its neighbours, as if it had never been a dead
    letter."""
    if not plan.decoded:
        return None
    reducer = Reducer(keep_versions=history)
    pairs = list(enumerate(d for _, d in plan.decoded))
    positions = [
        (d.source_partition if d.source_partition is not None else d.partition,
         d.source_offset if d.source_offset is not None else d.offset)
        for d, _ in plan.decoded
    ]
    reducer.track([p for p, _ in positions], [o for _, o in positions])
    rows = rows_of(pairs)
    where = rows.get_column("_message").to_numpy()
    reducer.add(rows.drop("_message").with_columns(
        pl.Series("src_partition", np.asarray([p for p, _ in positions])[where], dtype=pl.Int32),
        pl.Series("src_offset", np.asarray([o for _, o in positions])[where], dtype=pl.Int64),
    ))
    reduced = reducer.drain()
    assert reduced.rows is not None
    now = datetime.now(UTC).replace(tzinfo=None)
    batch_id = uuid.uuid4().hex
    schema = decoder.contract.table
    synced = int(now.replace(tzinfo=UTC).timestamp() * 1_000_000)
    ranges = tuple(
        PartitionRange(p, plan.start.get(p, 0), o) for p, o in sorted(plan.end.items())
        if o > plan.start.get(p, 0)
    )
    return Batch(
        batch_id=batch_id, topic=plan.topic, consumer_group=plan.group,
        rows=stage_frame(reduced.rows, batch_id, synced, schema), ranges=ranges,
        events_in=len(plan.decoded) + len(plan.invalid), invalid_events=len(plan.invalid),
        started_at=now, schema=schema,
        history=None if reduced.versions is None
        else stage_frame(reduced.versions, batch_id, synced, schema),
    )


def redrive(
    settings: Settings, decoder: Decoder, warehouse: Warehouse, error_class: str | None,
    from_start: bool, execute: bool,
) -> Redrive:
    """See the module doc."""
    group = redrive_group(settings, error_class)
    reader = DeadLetterReader(settings, group)
    try:
        marks = reader.watermarks()
        end = {p: hi for p, (_, hi) in marks.items()}
        committed = {} if from_start else reader.committed(marks)
        start = {p: max(lo, committed.get(p) or lo) for p, (lo, _) in marks.items()}
        plan = Redrive(reader.topic, group, error_class, start, end)
        letters = reader.read(start, end)
        plan.read = len(letters)
        retry_transient(warehouse.open, settings.warehouse.retry_max_s, "warehouse open")
        decoder.contract.start(retry_transient(
            warehouse.table_state, settings.warehouse.retry_max_s, "warehouse read"))
        classify(letters, decoder, plan)
        if not execute:
            return plan
        batch = redrive_batch(plan, decoder, settings.history.enabled)
        if batch is not None:
            plan.batch_id = batch.batch_id
            plan.result = retry_transient(
                lambda: warehouse.apply(batch), settings.warehouse.retry_max_s, "warehouse apply"
            )
        try:
            reader.commit({p: o for p, o in end.items() if o > start.get(p, 0)})
        except KafkaException as err:
            raise OffsetsError(
                f"the events were applied, but the redrive group's offsets were not committed "
                f"({err}); the next redrive reads them again, which the guard makes harmless"
            ) from None
        return plan
    except RegistryUnavailable as err:
        raise DeadLetterTopicError(f"{err}: nothing applied, nothing committed") from None
    finally:
        reader.close()
        warehouse.close()


def inspect(settings: Settings) -> Summary:
    reader = DeadLetterReader(settings, f"{settings.kafka.group_id}.dlq-inspect")
    try:
        marks = reader.watermarks()
        summary = Summary(reader.topic, partitions=marks)
        summary.letters = reader.read(
            {p: lo for p, (lo, _) in marks.items()}, {p: hi for p, (_, hi) in marks.items()}
        )
        return summary
    finally:
        reader.close()
