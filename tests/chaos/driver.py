"""The chaos driver: real ``kyc-sync run`` processes in one consumer group, one DuckDB file, a
real broker, and everything that can go wrong going wrong while events keep arriving.

``run_chaos`` does, in order:

1. creates the topic and starts ``consumers`` processes (1 s window, small ``max_events``,
   profile history on (``history``), injected transient warehouse faults, a 6 s session
   timeout so that a killed member's partitions move on quickly, metrics on a free port);
   ``static_members`` of them run with a ``group.instance.id`` (static membership: a restarted
   incarnation takes its predecessor's place without a rebalance), the others as dynamic
   members;
2. produces in a background thread, a steady stream (1 500 events/s by default) for the whole
   chaos phase, with one idempotent producer that records the (partition, offset) of every
   delivery. ``Planner`` plans (and Avro-encodes) each chunk just before it is produced:
   ``events`` messages over ``profiles`` profiles, keyed by profile to partition
   ``key % partitions``, with out-of-order op_times (and op_time ties), ~5 % exact duplicate
   redeliveries of recent events and ``poison_rate`` poison messages (bytes that do not decode,
   truncated or extended Avro, keys that are not ids or disagree with the record, empty
   values), each checked to be rejected by the real decoder;
3. SIGKILLs a random consumer that has joined the group at random moments (``kills`` times at
   least, and for as long as production runs), restarting it after a short random delay or,
   a quarter of the time, after more than the session timeout, sparing the others until it is
   back (the group shrinks, then grows again: the survivors give partitions up, flushing what
   they buffered); restarts the broker once, while production runs (skipped, and noted, when
   the broker is external); a consumer exit the driver did not cause is recorded as a crash;
4. stops the group with SIGTERM (each member must exit 0 within 60 s, or it is a hang), waits
   until the group is empty, then runs one ``kyc-sync run --until-caught-up`` so that everything
   left is applied and committed (with windows of up to ``FINAL_MAX_EVENTS``: a catch-up, not
   the chaos, whose small windows are the members');
5. compares the warehouse with the oracle (``harness.oracle`` over the delivered valid events,
   duplicates included at their own positions; with history on, also the history table with
   ``harness.history_oracle``: every distinct version, its interval), the dead-letter topic with
   the poison positions, and the group's committed offsets with the end of the topic.

Each consumer incarnation logs to ``<workdir>/logs/c<slot>.<incarnation>.log``; the final
catch-up run to ``final.log``.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.decode.decoder import PlainAvroDecoder
from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from schemas.errors import InvalidEvent
from tests.chaos.targets import DuckDBTarget, SnowflakeTarget, State, Target
from tests.integration.harness import (
    BASE_US,
    Event,
    Produced,
    cli_env,
    committed,
    history_oracle,
    oracle,
    start_cli,
)
from tools.localkafka import LocalKafka, create_topic

QUIET = 0  # librdkafka log_level of the driver's own clients
FINAL_MAX_EVENTS = 20_000
"""``window.max_events`` of the final catch-up run."""
SESSION_TIMEOUT_MS = 6_000  # the broker's group.min.session.timeout.ms default
STOP_WAIT_S = 60.0
"""How long the group may take to stop after SIGTERM before a member counts as hung."""
SHUTDOWN_TIMEOUT_S = 50.0
"""Each member's shutdown budget: below ``STOP_WAIT_S``, so a member over it exits 1 (a crash
the run reports), not a hang."""
JOINED = "assigned partitions"
FAULT_LINE = re.compile(r"injected transient warehouse fault #(\d+)")
Say = Callable[[str], None]
# Signatures counted in the consumers' logs and reported (they are expected, not failures).
LOG_SIGNS: dict[str, str] = {
    "flushes": "flush batch_id=",
    "revoke_flushes": "revoked: flushing what is buffered",
    "dropped_buffers": "dropped the buffer uncommitted",
    "commit_failures": "offset commit failed",
    "lock_retries": "locked by another process",
    "lock_waits": "625 (57014)",
    "errors": " ERROR ",
    "tracebacks": "Traceback (most recent call last)",
}


class ChaosError(RuntimeError):
    """The driver itself could not do its job (not a finding about kyc-sync)."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Planned:
    """One message to produce. ``event`` is None for a poison message."""

    key: bytes
    value: bytes
    partition: int
    event: Event | None
    duplicate: bool = False


class Planner:
    """Plans the topic's messages, chunk by chunk, deterministically from ``seed``.

    Every profile is inserted once (in random order) among the first new events, then random
    INSERT/UPDATE/DELETE changes. op_time grows 1 ms per message, but ``late_rate`` of the events
    are back-dated by up to 50 000 messages and ``tie_rate`` repeat the op_time of their
    profile's latest event (the Kafka position breaks the tie). Duplicates repeat the exact bytes
    of one of the last 2 000-4 000 valid events. Poison messages are checked with the decoder."""

    def __init__(
        self, profiles: int, partitions: int, seed: int, poison_rate: float = 0.01,
        duplicate_rate: float = 0.05, late_rate: float = 0.10, tie_rate: float = 0.01,
    ) -> None:
        if profiles <= 0 or partitions <= 0:
            raise ValueError("need profiles > 0 and partitions > 0")
        self.profiles = profiles
        self.partitions = partitions
        self.poison_rate = poison_rate
        self.duplicate_rate = duplicate_rate
        self.late_rate = late_rate
        self.tie_rate = tie_rate
        self.rng = random.Random(seed)
        self.encoder = AuditEncoder(audit_schema())
        self.decoder = PlainAvroDecoder(audit_schema())
        self.first_seen = list(range(profiles))
        self.rng.shuffle(self.first_seen)
        self.last_op_time: dict[int, int] = {}
        self.recent: list[Planned] = []
        self.fresh = 0
        self.index = 0

    def take(self, count: int) -> list[Planned]:
        """The next ``count`` messages, values encoded."""
        rng = self.rng
        out: list[Planned] = []
        for i in range(self.index, self.index + count):
            draw = rng.random()
            if draw < self.poison_rate:
                out.append(self._poison(i))
                continue
            if draw < self.poison_rate + self.duplicate_rate and self.recent:
                original = rng.choice(self.recent)
                out.append(Planned(original.key, original.value, original.partition,
                                   original.event, duplicate=True))
                continue
            out.append(self._fresh(i))
        self.index += count
        return out

    def _fresh(self, i: int) -> Planned:
        rng = self.rng
        if self.fresh < self.profiles:
            key, op = self.first_seen[self.fresh], "INSERT"
        else:
            key = rng.randrange(self.profiles)
            op_draw = rng.random()
            op = "DELETE" if op_draw < 0.1 else "INSERT" if op_draw < 0.2 else "UPDATE"
        self.fresh += 1
        op_time = BASE_US + i * 1_000
        latest = self.last_op_time.get(key)
        if latest is not None and rng.random() < self.tie_rate:
            op_time = latest
        elif rng.random() < self.late_rate:
            op_time -= rng.randint(1, 50_000) * 1_000
        self.last_op_time[key] = op_time if latest is None else max(op_time, latest)
        event = Event(key, op, op_time, f"GT-{i:09d}", key % self.partitions)
        planned = Planned(message_key(key), self.encoder.encode(event.record()),
                          event.partition, event)
        self.recent.append(planned)
        if len(self.recent) > 4_000:
            del self.recent[:2_000]
        return planned

    def _poison(self, i: int) -> Planned:
        """A message the decoder must reject; checked with the real decoder."""
        rng, profiles = self.rng, self.profiles
        key = rng.randrange(profiles)
        valid = self.encoder.encode(
            Event(key, "UPDATE", BASE_US + i * 1_000, f"POISON-{i}", 0).record()
        )
        other = (key + 1 + rng.randrange(profiles - 1)) % profiles if profiles > 1 else key + 1
        kind = rng.randrange(6)
        if kind == 0:  # random bytes
            item = (message_key(key), b"\x00\x01" + rng.randbytes(rng.randrange(8, 80)), key)
        elif kind == 1:  # truncated
            item = (message_key(key), valid[:-3], key)
        elif kind == 2:  # trailing bytes
            item = (message_key(key), valid + b"\x00", key)
        elif kind == 3:  # the key names another profile (produced to that profile's partition)
            item = (message_key(other), valid, other)
        elif kind == 4:  # the key is not an id
            item = (f"profile-{key}".encode(), valid, key)
        else:  # empty value
            item = (message_key(key), b"", key)
        msg_key, value, route = item
        try:
            self.decoder.decode(value, msg_key)
        except InvalidEvent:
            return Planned(msg_key, value, route % self.partitions, None)
        # Random bytes that happen to decode (astronomically unlikely): a certain poison instead.
        return Planned(message_key(key), b"", key % self.partitions, None)


# --------------------------------------------------------------------------- production


@dataclass
class PacedProducer:
    """Plans and produces ``total`` messages in a background thread, paced over ``seconds``
    (each chunk is planned and encoded just before it is produced); records every position."""

    bootstrap: str
    topic: str
    planner: Planner
    total: int
    seconds: float
    chunk: int = 500
    messages: list[Planned] = field(default_factory=list)
    positions: list[tuple[int, int] | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: BaseException | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    sent: int = 0
    thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise ChaosError(f"production did not finish within {timeout:.0f}s")
        if self.error is not None:
            raise ChaosError(f"production failed: {self.error!r}") from self.error
        if self.failures:
            raise ChaosError(f"{len(self.failures)} deliveries failed, e.g. {self.failures[0]}")

    def _delivered(self, index: int, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))
        else:
            self.positions[index] = (msg.partition(), msg.offset())

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as err:  # reported by join()
            self.error = err

    def _produce(self) -> None:
        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "log_level": QUIET,  # connection errors while the broker restarts are expected
            "enable.idempotence": True,  # exact positions across the broker restart
            "acks": "all",
            "linger.ms": 25,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "message.timeout.ms": 600_000,
        })
        self.started_at = time.monotonic()
        while self.sent < self.total and not self.stopping.is_set():
            batch = self.planner.take(min(self.chunk, self.total - self.sent))
            base = len(self.messages)
            self.messages += batch
            self.positions += [None] * len(batch)
            for index, planned in enumerate(batch, base):
                callback = partial(self._delivered, index)
                while True:
                    try:
                        producer.produce(self.topic, key=planned.key, value=planned.value,
                                         partition=planned.partition, on_delivery=callback)
                        break
                    except BufferError:
                        producer.poll(0.1)
                self.sent += 1
            producer.poll(0)
            due = self.started_at + self.seconds * self.sent / self.total
            while (left := due - time.monotonic()) > 0:
                producer.poll(min(left, 0.2))
        remaining = producer.flush(600)
        self.finished_at = time.monotonic()
        if remaining:
            raise ChaosError(f"{remaining} messages not delivered after 600s")

    def produced(self) -> tuple[Produced, list[tuple[int, int]]]:
        """The delivered valid events with their positions (duplicates included), and the
        positions of the delivered poison messages."""
        valid = Produced()
        poison: list[tuple[int, int]] = []
        for planned, position in zip(self.messages, self.positions, strict=True):
            if position is None:
                continue
            if planned.event is None:
                poison.append(position)
            else:
                valid.events.append((planned.event, position[0], position[1]))
        return valid, poison

    def duplicates(self) -> int:
        return sum(1 for m, p in zip(self.messages, self.positions, strict=True)
                   if m.duplicate and p is not None)


# --------------------------------------------------------------------------- the consumers


@dataclass
class Member:
    slot: int
    incarnation: int
    log: Path
    process: subprocess.Popen[bytes]
    retired: bool = False  # killed by the driver, or its exit already reported
    _joined: bool = False

    @property
    def joined(self) -> bool:
        """The process got its first assignment: it is in the group, signal handlers installed."""
        if not self._joined and self.log.exists():
            self._joined = JOINED in self.log.read_text(errors="replace")
        return self._joined


@dataclass
class Fleet:
    """The long-running ``kyc-sync run`` processes, one slot each, restartable."""

    env: dict[str, str]
    logs: Path
    seed: int
    # Slots that run as static members (group.instance.id): a restarted incarnation takes its
    # predecessor's place and partitions at once, without waiting for the session timeout.
    static: frozenset[int] = frozenset()
    members: dict[int, Member] = field(default_factory=dict)
    incarnations: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    all_logs: list[Path] = field(default_factory=list)

    def start(self, slot: int) -> Member:
        self.incarnations += 1
        env = dict(self.env, KYC_SYNC_FAULTS__SEED=str(self.seed * 10_000 + self.incarnations))
        if slot in self.static:
            options = json.loads(env["KYC_SYNC_KAFKA__CLIENT_OPTIONS"])
            options["group.instance.id"] = f"{env['KYC_SYNC_KAFKA__GROUP_ID']}-slot{slot}"
            env["KYC_SYNC_KAFKA__CLIENT_OPTIONS"] = json.dumps(options)
        log = self.logs / f"c{slot}.{self.incarnations:03d}.log"
        self.all_logs.append(log)
        member = Member(slot, self.incarnations, log, start_cli(env, "run", log=log))
        self.members[slot] = member
        return member

    def alive(self) -> list[int]:
        return [s for s, m in self.members.items() if m.process.poll() is None and not m.retired]

    def joined(self, timeout_s: float, every: bool = False) -> list[int]:
        """Live slots that have joined the group, waiting up to ``timeout_s`` for one (or, with
        ``every``, for all of them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            alive = self.alive()
            ready = [s for s in alive if self.members[s].joined]
            if (ready and not every) or (every and len(ready) == len(alive)):
                return ready
            if time.monotonic() > deadline:
                return ready
            time.sleep(0.1)

    def kill(self, slot: int) -> None:
        member = self.members[slot]
        member.retired = True
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
        member.process.wait()

    def reap(self) -> list[int]:
        """Slots whose process exited without being told to: recorded as crashes."""
        exited = []
        for slot, member in self.members.items():
            code = member.process.poll()
            if code is not None and not member.retired:
                member.retired = True  # reported once
                exited.append(slot)
                # A member started while the broker restarts waits for it (start-up included):
                # no exit is expected.
                self.crashes.append(f"consumer {slot} incarnation {member.incarnation} exited "
                                    f"with {code} (log {member.log})")
        return exited

    def terminate_all(self, timeout_s: float) -> None:
        """SIGTERM every member; each must exit 0 within ``timeout_s`` (else: a hang). A member
        that had not joined yet may still be importing, before its signal handlers exist: its
        death by SIGTERM is noted, not counted as a crash."""
        starting: set[int] = set()
        for slot, member in self.members.items():
            if member.process.poll() is None and not member.retired:
                if not member.joined:
                    starting.add(slot)
                member.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for slot, member in self.members.items():
            if member.retired:
                continue
            try:
                code = member.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.hangs.append(f"consumer {slot} incarnation {member.incarnation} did not exit "
                                  f"{timeout_s:.0f}s after SIGTERM (log {member.log})")
                member.process.kill()
                member.process.wait()
                continue
            if code == -signal.SIGTERM and slot in starting:
                self.notes.append(f"consumer {slot} incarnation {member.incarnation} was still "
                                  "starting when SIGTERMed and ended by the signal")
            elif code != 0:
                self.crashes.append(f"consumer {slot} incarnation {member.incarnation} exited "
                                    f"with {code} after SIGTERM (log {member.log})")

    def kill_all(self) -> None:
        for member in self.members.values():
            if member.process.poll() is None:
                member.process.kill()
            member.process.wait()


# --------------------------------------------------------------------------- checks


def latest_versions(produced: Produced) -> State:
    """The oracle with tombstones: key -> (version of its latest event, is a DELETE)."""
    latest: State = {}
    for event, partition, offset in produced.events:
        version = (event.op_time, partition, offset)
        known = latest.get(event.kyc_profile_id)
        if known is None or version > known[0]:
            latest[event.kyc_profile_id] = (version, event.op_type == "DELETE")
    return latest


@dataclass(frozen=True, slots=True)
class Comparison:
    lost: int
    stale: int
    resurrected: int
    ahead: int
    diff: int
    examples: tuple[str, ...]
    history_diff: int = 0


def compare_history(target: Target, produced: Produced) -> tuple[int, list[str]]:
    """Keys whose history rows (versions, values, intervals) differ from the oracle's."""
    expected = history_oracle(produced)
    table = target.read_history()
    keys = sorted(k for k in expected.keys() | table.keys() if expected.get(k) != table.get(k))
    examples = [f"history key={k} oracle={expected.get(k)} table={table.get(k)}"
                for k in keys[:5]]
    return len(keys), examples


def compare(target: Target, produced: Produced, history: bool = False) -> Comparison:
    """The table against the oracle.

    lost: keys whose latest event (live or DELETE) is not what the state table holds (missing,
    or an older version); stale: live rows of the table older than the oracle's latest event;
    resurrected: live rows of the table that the oracle does not have live; ahead: state rows
    newer than any delivered event (the oracle missed a delivery); diff: keys where
    ``kyc_profile_current`` differs from ``harness.oracle``."""
    expected = oracle(produced)
    table = target.read_current()
    state = target.read_state()
    latest = latest_versions(produced)
    examples: list[str] = []

    def note(kind: str, key: int) -> None:
        if len(examples) < 10:
            examples.append(f"{kind} key={key} oracle={latest.get(key)} state={state.get(key)} "
                            f"expected={expected.get(key)} table={table.get(key)}")

    lost = stale = resurrected = ahead = 0
    for key, (version, _deleted) in latest.items():
        held = state.get(key)
        if held is None or held[0] < version:
            lost += 1
            note("lost", key)
    for key in table:
        held = state.get(key)
        known = latest.get(key)
        if known is not None and held is not None and held[0] < known[0]:
            stale += 1
            note("stale", key)
        if key not in expected:
            resurrected += 1
            note("resurrected", key)
    for key, (version, _deleted) in state.items():
        known = latest.get(key)
        if known is None or version > known[0]:
            ahead += 1
            note("ahead", key)
    keys = expected.keys() | table.keys()
    diff = sum(1 for k in keys if expected.get(k) != table.get(k))
    history_diff = 0
    if history:
        history_diff, found = compare_history(target, produced)
        examples += found
    return Comparison(lost, stale, resurrected, ahead, diff, tuple(examples), history_diff)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "log_level": QUIET,
                         "group.id": f"chaos-probe-{uuid.uuid4()}"})
    try:
        return {
            p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1])
            for p in range(partitions)
        }
    finally:
        consumer.close()


def read_dead_letters(bootstrap: str, topic: str) -> tuple[int, set[tuple[int, int]], Counter[str]]:
    """All of ``topic``: (message count, distinct source positions, error classes)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": QUIET})
    meta = admin.list_topics(topic=topic, timeout=30).topics.get(topic)
    if meta is None or meta.error is not None:
        return 0, set(), Counter()
    parts = sorted(meta.partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "log_level": QUIET,
                         "group.id": f"chaos-dlq-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    count = 0
    positions: set[tuple[int, int]] = set()
    classes: Counter[str] = Counter()
    try:
        ends = {p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1])
                for p in parts}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + 120
        while pending:
            if time.monotonic() > deadline:
                raise ChaosError(f"reading {topic} timed out; partitions left {sorted(pending)}")
            for msg in consumer.consume(1_000, 0.5):
                if msg.error() is not None:
                    continue
                count += 1
                headers = _header_map(msg.headers())
                positions.add((int(headers["kyc_sync.source_partition"]),
                               int(headers["kyc_sync.source_offset"])))
                classes[headers.get("kyc_sync.error_class", "?")] += 1
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    pending.discard(partition)
    finally:
        consumer.close()
    return count, positions, classes


def _header_map(raw: Any) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in items}


def wait_group_empty(bootstrap: str, group: str, timeout_s: float) -> bool:
    """Wait until ``group`` has no members (a SIGKILLed member stays until its session expires)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": QUIET})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group], request_timeout=10)[group]
            if not description.result(15).members:
                return True
        except Exception:  # the coordinator may be loading after the restart; ask again
            pass
        time.sleep(0.5)
    return False


def count_in_logs(logs: Iterable[Path]) -> tuple[int, dict[str, int]]:
    """Injected warehouse faults (distinct fault numbers per incarnation) and ``LOG_SIGNS``."""
    faults = 0
    signs = dict.fromkeys(LOG_SIGNS, 0)
    for log in logs:
        if not log.exists():
            continue
        text = log.read_text(errors="replace")
        faults += len(set(FAULT_LINE.findall(text)))
        for name, sign in LOG_SIGNS.items():
            signs[name] += text.count(sign)
    return faults, signs


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class ChaosResult:
    warehouse: str
    events: int
    profiles: int
    partitions: int
    consumers: int
    static_members: int
    kills: int
    broker_restarts: int
    warehouse_faults: int
    final_run_faults: int  # of warehouse_faults, those of the final catch-up run
    poison: int
    dlq: int  # distinct source positions among the dead letters
    dlq_raw: int  # dead-letter messages, re-sent copies included
    dlq_unexpected: int  # dead-lettered positions that are not poison positions
    duplicates: int
    lost: int
    stale: int
    resurrected: int
    ahead: int
    diff: int
    history: bool  # the consumers kept the history table
    history_diff: int  # keys whose history differs from the oracle's
    uncommitted: int  # messages between the group's committed offsets and the end, at the end
    unreported: int  # messages on the topic without a delivery report (the oracle lacks them)
    final_exit: int
    crashes: tuple[str, ...]
    hangs: tuple[str, ...]
    incarnations: int
    log_signs: dict[str, int]
    examples: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    phase_seconds: dict[str, float]
    workdir: Path

    @property
    def clean(self) -> bool:
        return (
            self.lost == self.stale == self.diff == self.resurrected == self.ahead == 0
            and self.history_diff == 0 and self.dlq == self.poison and self.dlq_unexpected == 0
            and self.uncommitted == 0 and self.unreported == 0 and self.final_exit == 0
            and not self.crashes and not self.hangs
        )

    def line(self) -> str:
        return (
            f"chaos: warehouse={self.warehouse} events={self.events} profiles={self.profiles} "
            f"kills={self.kills} "
            f"broker_restarts={self.broker_restarts} warehouse_faults={self.warehouse_faults} "
            f"poison={self.poison} dlq={self.dlq} lost={self.lost} stale={self.stale} "
            f"diff={self.diff}"
            + (f" history_diff={self.history_diff}" if self.history else " history=off")
        )

    def details(self) -> str:
        phases = " ".join(f"{k}={v:.1f}s" for k, v in self.phase_seconds.items())
        signs = " ".join(f"{k}={v}" for k, v in self.log_signs.items())
        lines = [
            f"chaos details: partitions={self.partitions} consumers={self.consumers} "
            f"static_members={self.static_members} final_run_faults={self.final_run_faults} "
            f"incarnations={self.incarnations} duplicates={self.duplicates} "
            f"dlq_raw={self.dlq_raw} dlq_unexpected={self.dlq_unexpected} "
            f"resurrected={self.resurrected} ahead={self.ahead} uncommitted={self.uncommitted} "
            f"unreported={self.unreported} "
            f"final_exit={self.final_exit} seconds={self.seconds:.1f}",
            f"chaos phases: {phases}",
            f"chaos logs: {signs} (in {self.workdir / 'logs'})",
        ]
        lines += [f"chaos note: {n}" for n in self.notes]
        lines += [f"chaos CRASH: {c}" for c in self.crashes]
        lines += [f"chaos HANG: {h}" for h in self.hangs]
        lines += [f"chaos mismatch: {e}" for e in self.examples]
        return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def consumer_env(
    bootstrap: str, topic: str, target: Target, workdir: Path, group: str, fault_times: int,
    fault_probability: float, max_events: int, consume_batch: int, history: bool = True,
) -> dict[str, str]:
    return cli_env(
        bootstrap, topic, workdir / "kyc.duckdb", group,
        **target.env(),
        KYC_SYNC_WINDOW__SECONDS="1",
        KYC_SYNC_WINDOW__MAX_EVENTS=str(max_events),
        KYC_SYNC_KAFKA__CONSUME_BATCH=str(consume_batch),
        KYC_SYNC_KAFKA__CLIENT_OPTIONS=json.dumps(
            {"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 1_000}
        ),
        KYC_SYNC_FAULTS__WAREHOUSE="transient",
        KYC_SYNC_FAULTS__TIMES=str(fault_times),
        KYC_SYNC_FAULTS__PROBABILITY=str(fault_probability),
        KYC_SYNC_METRICS__PORT="0",  # several processes on one host
        KYC_SYNC_LOG_LEVEL="INFO",
        KYC_SYNC_HISTORY__ENABLED="true" if history else "false",
        # A member stopping finishes the write in flight, then flushes the rest, both retrying
        # injected faults: on a slow warehouse (the Snowflake double on a loaded machine: 20 s
        # a flush) the default 30 s can run out.
        KYC_SYNC_RUN__SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
    )


def run_chaos(
    bootstrap: str,
    broker: LocalKafka | None,
    workdir: Path,
    events: int,
    profiles: int,
    partitions: int = 6,
    consumers: int = 3,
    kills: int = 20,
    poison_rate: float = 0.01,
    seed: int = 20_251_125,
    *,
    duplicate_rate: float = 0.05,
    produce_seconds: float | None = None,
    kill_interval_s: tuple[float, float] = (1.5, 4.5),
    restart_delay_s: tuple[float, float] = (0.1, 1.5),
    slow_restarts: float = 0.25,
    fault_times: int = 3,
    fault_probability: float = 0.25,
    final_faults: int = 3,
    max_events: int = 2_000,
    consume_batch: int = 500,
    static_members: int = 1,
    history: bool = True,
    topic: str | None = None,
    say: Say = _stderr,
    target: Target | None = None,
    at_half: Callable[[], str] | None = None,
) -> ChaosResult:
    """Run the chaos scenario (module docstring) and return what it found.

    Consumers inject transient warehouse faults: each incarnation fails up to ``fault_times``
    flushes with ``fault_probability``; the final catch-up run fails its first ``final_faults``
    flush attempts. Production is paced over ``produce_seconds`` (default: 1 500 events/s, at
    least 30 s: a steady stream the group keeps up with between kills, so that rebalances find
    buffered events); the broker restarts once 60 % is produced (or at half the kills). Kills come
    every ``kill_interval_s`` (uniform); a killed consumer restarts after ``restart_delay_s``
    (uniform) or, with probability ``slow_restarts``, after 1.2-1.6 session timeouts — and then
    no other consumer is killed until it has rejoined. ``target``: the warehouse (default: a
    DuckDB file in ``workdir``); without ``broker`` the broker restart is skipped. ``at_half``
    runs once when half the events are produced; it returns a note for the result."""
    if not 0 < profiles <= events:
        raise ValueError("need 0 < profiles <= events")
    began = time.monotonic()
    phases: dict[str, float] = {}
    notes: list[str] = []
    workdir = Path(workdir).resolve()
    logs = workdir / "logs"
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)  # profile data: owner only
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    warehouse: Target = target or DuckDBTarget(workdir / "kyc.duckdb")
    topic = topic or f"chaos-{uuid.uuid4().hex[:10]}"
    group = f"g-{topic}"
    rng = random.Random(seed)

    def mark(phase: str, since: float) -> float:
        now = time.monotonic()
        phases[phase] = now - since
        return now

    def log(message: str) -> None:
        say(f"[chaos {time.monotonic() - began:6.1f}s] {message}")

    create_topic(bootstrap, topic, partitions)
    env = consumer_env(bootstrap, topic, warehouse, workdir, group, fault_times,
                       fault_probability, max_events, consume_batch, history)
    fleet = Fleet(env, logs, seed, static=frozenset(range(consumers - static_members, consumers)))
    pace = produce_seconds if produce_seconds is not None else max(30.0, events / 1_500)
    planner = Planner(profiles, partitions, seed, poison_rate, duplicate_rate)
    producer = PacedProducer(bootstrap, topic, planner, events, pace)
    kills_done = broker_restarts = 0
    final_exit = -1
    final: subprocess.Popen[bytes] | None = None
    t = began
    try:
        for slot in range(consumers):
            fleet.start(slot)
        producer.start()
        log(f"topic {topic}: {partitions} partitions; {consumers} consumers started; producing "
            f"{events} messages over {profiles} profiles, paced over {pace:.0f}s")
        restart_pending = broker is not None
        if broker is None:
            notes.append("no broker of its own: the broker restart was skipped (broker_restarts=0)")
        pending: dict[int, float] = {}  # killed slot -> when it restarts
        next_kill = time.monotonic() + rng.uniform(*kill_interval_s)
        next_report = 5
        regrowing: tuple[int, float] | None = None  # (slot, give up waiting at) of a slow restart
        while kills_done < kills or producer.running:
            time.sleep(0.1)
            now = time.monotonic()
            for slot, due in sorted(pending.items()):
                if due <= now:
                    del pending[slot]
                    fleet.start(slot)
            for slot in fleet.reap():
                log(f"consumer {slot} exited on its own: restarting it")
                fleet.start(slot)
            if regrowing is not None:
                slot, give_up = regrowing
                if slot not in pending and (fleet.members[slot].joined or now > give_up):
                    regrowing = None
            if now >= next_kill and regrowing is None:
                # Kill members that are in the group (a process still importing is no test).
                candidates = [s for s in fleet.alive() if fleet.members[s].joined]
                if candidates:
                    victim = rng.choice(candidates)
                    fleet.kill(victim)
                    kills_done += 1
                    # Mostly back at once; sometimes after the session timeout, so that the
                    # group first shrinks (the others take its partitions) and then grows again
                    # (they give some up: revocations with buffered events).
                    # The others are spared until it is back, so that they live to give up the
                    # partitions they took over.
                    if rng.random() < slow_restarts:
                        delay = rng.uniform(1.2, 1.6) * SESSION_TIMEOUT_MS / 1000
                        regrowing = (victim, time.monotonic() + delay + 30)
                    else:
                        delay = rng.uniform(*restart_delay_s)
                    pending[victim] = time.monotonic() + delay
                    next_kill = time.monotonic() + rng.uniform(*kill_interval_s)
            if at_half is not None and producer.sent >= events // 2:
                notes.append(at_half())
                log(notes[-1])
                at_half = None
            if broker is not None and restart_pending and (
                producer.sent >= 0.6 * events or kills_done >= kills // 2
            ):
                restart_pending = False
                log(f"restarting the broker after {kills_done} kills, {producer.sent}/{events} "
                    "produced")
                if not producer.running:
                    notes.append("the broker restart happened after production had finished")
                restart_began = time.monotonic()
                broker.restart()
                broker_restarts += 1
                log(f"broker back after {time.monotonic() - restart_began:.1f}s")
            if kills_done >= next_report:
                next_report += 5
                _, signs = count_in_logs(fleet.all_logs)
                log(f"{kills_done} kills, {producer.sent}/{events} produced, "
                    f"{signs['flushes']} flushes so far")
        for slot in sorted(pending):
            fleet.start(slot)
        t = mark("chaos", t)
        producer.join(timeout=900)
        log(f"production done, {kills_done} kills done: stopping the group with SIGTERM")
        for slot in fleet.reap():
            log(f"consumer {slot} exited on its own before the final phase")
        fleet.joined(timeout_s=20, every=True)
        fleet.terminate_all(timeout_s=STOP_WAIT_S)
        if not wait_group_empty(bootstrap, group, timeout_s=60):
            notes.append("the group still had members 60s after the SIGTERMs")
        t = mark("stop", t)

        final_log = logs / "final.log"
        fleet.all_logs.append(final_log)
        final_env = dict(env, KYC_SYNC_FAULTS__TIMES=str(final_faults),
                         KYC_SYNC_FAULTS__PROBABILITY="1.0", KYC_SYNC_FAULTS__SEED=str(seed),
                         KYC_SYNC_WINDOW__MAX_EVENTS=str(FINAL_MAX_EVENTS))
        final = start_cli(final_env, "run", "--until-caught-up", log=final_log)
        try:
            final_exit = final.wait(timeout=240 + events / 2_000)
        except subprocess.TimeoutExpired:
            fleet.hangs.append(f"the final --until-caught-up run did not finish (log {final_log})")
            final.kill()
            final.wait()
        log(f"final catch-up run exited with {final_exit}")
        t = mark("final", t)
    finally:
        producer.stopping.set()
        fleet.kill_all()
        if final is not None and final.poll() is None:
            final.kill()
            final.wait()

    valid, poison_positions = producer.produced()
    ends = end_offsets(bootstrap, topic, partitions)
    done = committed(bootstrap, group, topic, partitions)
    uncommitted = sum(end - max(done.get(p, 0), 0) for p, end in ends.items())
    delivered = len(valid.events) + len(poison_positions)
    dlq_raw, dlq_positions, classes = read_dead_letters(bootstrap, f"{topic}.dlq")
    poison_set = set(poison_positions)
    comparison = compare(warehouse, valid, history)
    faults, signs = count_in_logs(fleet.all_logs)
    signs.update(warehouse.signs())
    notes.append("dead-letter classes: "
                 + ", ".join(f"{k}={v}" for k, v in sorted(classes.items())))
    if dlq_raw > len(dlq_positions):
        notes.append(f"{dlq_raw - len(dlq_positions)} dead letters were re-sent (a kill between "
                     "the dead-letter produce and the offset commit)")
    notes += fleet.notes
    mark("verify", t)
    return ChaosResult(
        warehouse=warehouse.name,
        events=delivered,
        profiles=profiles,
        partitions=partitions,
        consumers=consumers,
        static_members=len(fleet.static),
        kills=kills_done,
        broker_restarts=broker_restarts,
        warehouse_faults=faults,
        final_run_faults=count_in_logs([logs / "final.log"])[0],
        poison=len(poison_positions),
        dlq=len(dlq_positions),
        dlq_raw=dlq_raw,
        dlq_unexpected=len(dlq_positions - poison_set),
        duplicates=producer.duplicates(),
        lost=comparison.lost,
        stale=comparison.stale,
        resurrected=comparison.resurrected,
        ahead=comparison.ahead,
        diff=comparison.diff,
        history=history,
        history_diff=comparison.history_diff,
        uncommitted=uncommitted,
        unreported=sum(ends.values()) - delivered,
        final_exit=final_exit,
        crashes=tuple(fleet.crashes),
        hangs=tuple(fleet.hangs),
        incarnations=fleet.incarnations,
        log_signs=signs,
        examples=comparison.examples,
        notes=tuple(notes),
        seconds=time.monotonic() - began,
        phase_seconds=phases,
        workdir=workdir,
    )


DUCKDB_SIZES: dict[str, Any] = {
    "events": 200_000, "profiles": 20_000, "partitions": 6, "consumers": 3, "kills": 20,
}
"""The DuckDB run's default size (the suite's and ``make chaos``)."""

SNOWFLAKE_SIZES: dict[str, Any] = {
    "events": 6_000, "profiles": 1_500, "partitions": 3, "consumers": 2, "kills": 3,
    "produce_seconds": 20.0, "kill_interval_s": (3.0, 5.0), "slow_restarts": 0.0,
    "max_events": 1_000, "static_members": 0, "final_faults": 2, "fault_probability": 0.5,
}
"""The Snowflake variant's default size: smaller (the double answers far fewer flushes per
second than a DuckDB file), kills spaced so that members flush between them, no slow restarts
and no static member (the DuckDB run has them)."""

DEAD_WRITER_KEYS = tuple(range(10))
"""Profiles the dead writer writes with op_times in 2100: if its transaction ever committed,
the comparison would find them (``ahead``, ``diff``)."""


class DeadWriter:
    """A Snowflake writer that stops between its MERGE and its COMMIT, holding the state table's
    lock (``tests.warehouse.killed_writer``), SIGKILLed there; in a thread, so that the chaos
    goes on meanwhile."""

    def __init__(self, target: SnowflakeTarget, timeout_s: float = 90) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.thread = threading.Thread(target=self._run, name="dead-writer", daemon=True)
        self.failure = ""

    def start(self) -> str:
        self.thread.start()
        return "a writer is being SIGKILLed mid-transaction, holding the state table's lock"

    def wait(self) -> str:
        """Why it failed ('' when it held its lock and was killed)."""
        if self.thread.ident is None:
            return "the writer to kill mid-transaction was never started"
        self.thread.join(self.timeout_s + 15)
        return self.failure

    def _run(self) -> None:
        from tests.warehouse.killed_writer import HOLDING

        target = self.target
        dead = subprocess.Popen(
            [sys.executable, "-m", "tests.warehouse.killed_writer", target.host,
             str(target.port), target.database, *map(str, DEAD_WRITER_KEYS)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        timer = threading.Timer(self.timeout_s, dead.kill)
        timer.start()
        try:
            line = dead.stdout.readline() if dead.stdout is not None else ""
            dead.send_signal(signal.SIGKILL)
            dead.wait(10)
        finally:
            timer.cancel()
            if dead.poll() is None:
                dead.kill()
                dead.wait()
        if not line.startswith(HOLDING):
            self.failure = f"the writer to kill mid-transaction never held its lock: {line!r}"


def run_chaos_on_snowflake(
    bootstrap: str, workdir: Path, idle_abort_s: float = 4.0, lock_timeout_s: int = 1,
    **sizes: Any,
) -> ChaosResult:
    """The chaos scenario on the Snowflake test double, started in ``workdir/fakesnow`` (it
    aborts a dead transaction after ``idle_abort_s`` idle while it blocks another; Snowflake
    after about 5 minutes), with one more kill: at half the events, a writer killed between its
    MERGE and its COMMIT. The consumers' LOCK_TIMEOUT (``lock_timeout_s``) is shorter than
    ``idle_abort_s``: they wait on that lock, fail with 000625 and retry, as they would on
    Snowflake. No broker restart: the DuckDB run has it."""
    from tests.warehouse.fakesnow_process import FAKESNOW_HOST, start_fakesnow, stop_fakesnow

    server_dir = Path(workdir).resolve() / "fakesnow"
    server_dir.mkdir(parents=True, exist_ok=True)
    proc, port = start_fakesnow(server_dir, idle_abort_s)
    try:
        target = SnowflakeTarget(FAKESNOW_HOST, port, f"CHAOS_{uuid.uuid4().hex[:8].upper()}",
                                 server_dir / "fakesnow.log", lock_timeout_s)
        target.create_schema()
        dead = DeadWriter(target)
        result = run_chaos(
            bootstrap, None, Path(workdir) / "run",
            **{**SNOWFLAKE_SIZES, "history": False, **sizes},
            target=target, at_half=dead.start,
        )
    finally:
        stop_fakesnow(proc)
    if failure := dead.wait():
        raise ChaosError(failure)
    return result
