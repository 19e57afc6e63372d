"""Latency from an event produced to its row visible in ``kyc_profile_current``.

    python -m bench.latency                        # 20,000 events/s for 60 s, 5 s windows
    python -m bench.latency --rate R --seconds S --window-s W [--poll-s P] [--probe-every N]

One ``kyc-sync run`` (``window.seconds`` = ``--window-s``, the rest default) syncs a new topic
into a new DuckDB file. Once it owns its partitions, a producer process writes ``--rate``
events/s for ``--seconds``, paced every 5 ms (``linger.ms`` 5; every message encoded before
the clock starts): first one INSERT per profile (``--profiles``), then UPDATEs of random
profiles. Every ``--probe-every``-th event is a probe:
the INSERT of a profile of its own (ids from ``PROBE_BASE`` on), whose produce time is noted
when ``produce()`` returns (wall clock). Meanwhile this process polls the view every
``--poll-s`` (opening the file read-only, as any reader does, and closing it) for the probes it
holds; a probe's latency is the first poll that sees it minus its produce time. A probe's row
is written in the same transaction as every other event of its window, so the probes sample
the latency of all events; a poll sees a window at most ``--poll-s`` late (half of it on
average), which the figures include.

Probes of the first ``--warmup-s`` seconds are left out of the percentiles. Reported: p50, p90,
p99 and max, the producer's achieved rate and how far it fell behind its schedule, the
windows' flush times, and how often the writer found the file held by the poller (a DuckDB file
has one writer or many readers at a time; a locked write is retried after a backoff of 0.2 s
and more, which is part of what a reader polling the file costs). Writes
``bench/results/latency.json`` (key ``latency`` in ``latest.json``); with ``--poll-s 0`` no
reader polls, only the ledger's times are reported, under ``latency_no_reader``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import re
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from confluent_kafka import Producer

from bench.instances import LOCKED_LINE, RUN_COMMAND, Running, Window, duckdb_env, run_env
from bench.load import BASE_US, goldtier_id, table_names
from bench.stage import broker, common_args, fresh_dir, machine, say, write_results
from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema
from tools.localkafka import create_topic

PROBE_BASE = 1_000_000_000
"""Profile ids of the probes: above any profile of the load."""
TICK_S = 0.005
ASSIGNED = re.compile(r"assigned partitions \[\d")


def produce_paced(
    bootstrap: str, topic: str, rate: float, seconds: float, profiles: int, probe_every: int,
    out: str,
) -> None:
    """The producer process: ``rate`` events/s for ``seconds``; writes to ``out`` the probes'
    produce times and the achieved schedule.

    Every message is encoded before the clock starts (op_times increase with the event index),
    so that the paced loop only hands messages to the client and keeps its rate on a busy
    machine."""
    encode = AuditEncoder(audit_schema()).encode
    rng = random.Random(7)
    total = int(rate * seconds)
    messages: list[tuple[bytes, bytes, int]] = []
    for i in range(total):
        probe = i % probe_every == probe_every - 1
        key = (PROBE_BASE + i // probe_every if probe
               else i if i < profiles else rng.randrange(profiles))
        op_time = BASE_US + i
        value = encode({
            "kyc_profile_id": key, "goldtier_id": goldtier_id(i), "cid": f"CID-{key:09d}",
            "party_id": f"PTY-{key:09d}", "created_date": BASE_US, "updated_date": op_time,
            "op_type": "INSERT" if probe or i < profiles else "UPDATE", "op_time": op_time,
        })
        messages.append((value, message_key(key), key if probe else -1))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "1",
                         "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})
    produce = producer.produce
    probes: list[tuple[int, float]] = []
    produced = 0
    behind_max = 0
    started = time.time()
    while produced < total:
        now = time.time()
        due = min(total, int((now - started) * rate))
        behind_max = max(behind_max, due - produced)
        for value, key_bytes, probe_key in messages[produced:due]:
            while True:
                try:
                    produce(topic, value, key_bytes)
                    break
                except BufferError:
                    producer.poll(0.01)
            if probe_key >= 0:
                probes.append((probe_key, time.time()))
        produced = max(produced, due)
        producer.poll(0)
        time.sleep(max(0.0, TICK_S - (time.time() - now)))
    ended = time.time()
    producer.flush(60)
    Path(out).write_text(json.dumps({
        "probes": probes, "started": started, "ended": ended, "produced": produced,
        "behind_max_events": behind_max,
    }))


def poll_probes(db: Path) -> set[int] | None:
    """The probe ids the view holds now; None when the file is being written (held)."""
    view = table_names().current.sql()
    try:
        con = duckdb.connect(str(db), read_only=True)
    except (duckdb.IOException, duckdb.CatalogException):
        return None
    try:
        rows = con.execute(
            f"SELECT kyc_profile_id FROM {view} WHERE kyc_profile_id >= ?", [PROBE_BASE]
        ).fetchall()
    except duckdb.CatalogException:
        return set()  # the tables are not created yet
    finally:
        con.close()
    return {int(r[0]) for r in rows}


def committed_at(db: Path) -> dict[int, float]:
    """Each probe's ledger ``committed_at`` (epoch seconds): the time, taken just before the
    commit, of the transaction that wrote its row."""
    names = table_names()
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            f"SELECT s.kyc_profile_id, epoch_us(l.committed_at) FROM {names.state.sql()} s "
            f"JOIN {names.ledger.sql()} l USING (batch_id) WHERE s.kyc_profile_id >= ?",
            [PROBE_BASE],
        ).fetchall()
    finally:
        con.close()
    return {int(key): int(us) / 1e6 for key, us in rows}


def percentiles(latencies: np.ndarray[Any, Any], prefix: str) -> dict[str, float | None]:
    if not len(latencies):
        return {f"{prefix}{name}_s": None for name in ("p50", "p90", "p99", "max", "mean")}
    return {
        **{f"{prefix}p{q}_s": float(np.percentile(latencies, q)) for q in (50, 90, 99)},
        f"{prefix}max_s": float(latencies.max()),
        f"{prefix}mean_s": float(latencies.mean()),
    }


def wait_for_assignment(running: Running, timeout_s: float) -> None:
    """Until the instance logs that it owns partitions (the group joined)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = running.log_text(0)
        if ASSIGNED.search(text):
            return
        if running.procs[0].poll() is not None:
            raise RuntimeError(f"kyc-sync exited early:\n{text[-4000:]}")
        time.sleep(0.1)
    raise RuntimeError("kyc-sync did not get its partitions in time")


def measure(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, args.partitions)
    db = work / "latency.duckdb"
    env = run_env(bootstrap, topic, duckdb_env(db), Window(args.window_s))
    running = Running([*RUN_COMMAND], env, [work / "kyc-sync.log"], args.timeout)
    try:
        wait_for_assignment(running, 120.0)
        say(f"producing {args.rate:,.0f} events/s for {args.seconds:g}s into {topic}")
        out = work / "producer.json"
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_paced,
            args=(bootstrap, topic, args.rate, args.seconds, args.profiles, args.probe_every,
                  str(out)))
        producer.start()
        seen: dict[int, float] = {}
        held = polls = 0
        expected_probes = int(args.rate * args.seconds) // args.probe_every
        if args.poll_s > 0:
            give_up: float | None = None  # once the producer is done: the last windows' time
            while give_up is None or time.time() < give_up:
                started = time.time()
                found = poll_probes(db)
                polls += 1
                if found is None:
                    held += 1
                else:
                    at = time.time()
                    for key in found.difference(seen):
                        seen[key] = at
                if give_up is None and not producer.is_alive():
                    give_up = time.time() + args.window_s + args.drain_s
                if give_up is not None and len(seen) >= expected_probes:
                    break
                time.sleep(max(0.0, args.poll_s - (time.time() - started)))
        else:
            producer.join()
            time.sleep(2 * args.window_s + 1)  # the last window flushes on age, not on stop
        producer.join()
        if producer.exitcode != 0:
            raise RuntimeError(f"the producer exited {producer.exitcode}")
    finally:
        running.stop()
    (ended,) = running.wait()
    if ended.returncode != 0:
        raise RuntimeError(f"kyc-sync exited {ended.returncode}:\n{ended.log[-4000:]}")
    produced = json.loads(out.read_text())
    warm_until = produced["started"] + args.warmup_s
    measured = [(key, at) for key, at in produced["probes"] if at >= warm_until]
    committed = committed_at(db)
    polled = np.array([seen[key] - at for key, at in measured if key in seen])
    commit = np.array([committed[key] - at for key, at in measured if key in committed])
    flushes = [f for f in ended.flushes if int(f.get("events", 0))]
    span = produced["ended"] - produced["started"]
    return {
        "rate_target_per_s": args.rate,
        "rate_achieved_per_s": produced["produced"] / span if span else None,
        "producer_behind_max_events": produced["behind_max_events"],
        "seconds": args.seconds,
        "window_s": args.window_s,
        "poll_s": args.poll_s,
        "probe_every": args.probe_every,
        "probes": len(produced["probes"]),
        "probes_measured": len(measured),
        "probes_never_seen": sum(1 for key, _ in measured if key not in seen)
        if args.poll_s > 0 else None,
        "probes_never_committed": sum(1 for key, _ in measured if key not in committed),
        **percentiles(polled, ""),
        **percentiles(commit, "committed_"),
        "flushes": len(flushes),
        "flush_total_s_mean": (sum(float(f["total_s"]) for f in flushes) / len(flushes)
                               if flushes else None),
        "flush_total_s_max": max((float(f["total_s"]) for f in flushes), default=None),
        "events_per_flush_mean": (sum(int(f["events"]) for f in flushes) / len(flushes)
                                  if flushes else None),
        "writer_lock_retries": ended.count(LOCKED_LINE),
        "polls": polls,
        "polls_file_held": held,
        "peak_rss_bytes": ended.peak_rss_bytes,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = fresh_dir(args.work_dir)
    start = machine()
    with broker(args.bootstrap, work) as bootstrap:
        figures = measure(args, bootstrap, work)
    figures["machine_start"] = start
    figures["machine_end"] = machine()
    return {"latency": figures}


def render(r: dict[str, Any]) -> str:
    def s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    poll = (f"poll every {r['poll_s']:g}s" if r["poll_s"] > 0 else "no reader polling")
    lines = [
        f"latency, event produced -> row visible in kyc_profile_current: "
        f"{r['rate_target_per_s']:,.0f} events/s for {r['seconds']:g}s "
        f"(achieved {r['rate_achieved_per_s']:,.0f}/s), window.seconds={r['window_s']:g}, {poll}",
    ]
    if r["poll_s"] > 0:
        lines.append(
            f"  visible (polled):    p50 {s(r['p50_s'])}   p90 {s(r['p90_s'])}   "
            f"p99 {s(r['p99_s'])}   max {s(r['max_s'])}   ({r['probes_measured']:,} probes, "
            f"{r['probes_never_seen']} never seen)")
    lines += [
        f"  committed (ledger):  p50 {s(r['committed_p50_s'])}   p90 {s(r['committed_p90_s'])}   "
        f"p99 {s(r['committed_p99_s'])}   max {s(r['committed_max_s'])}",
        f"  {r['flushes']} windows of {r['events_per_flush_mean'] or 0:,.0f} events on average, "
        f"flush {s(r['flush_total_s_mean'])} on average, {s(r['flush_total_s_max'])} at most; "
        f"writer retries on a locked file: {r['writer_lock_retries']}; "
        f"polls that found it being written: {r['polls_file_held']} of {r['polls']}",
        f"  load average {r['machine_start']['loadavg']} -> {r['machine_end']['loadavg']} on "
        f"{r['machine_end']['cpus']} cpus",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce")
    parser.add_argument("--window-s", type=float, default=5.0, help="window.seconds")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--poll-s", type=float, default=0.1)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--drain-s", type=float, default=60.0,
                        help="how long to wait for the last probes after producing")
    parser.add_argument("--partitions", type=int, default=6)
    common_args(parser, "latency")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    name = "latency" if args.poll_s > 0 else "latency_no_reader"
    path = write_results(name, {name: result["latency"]}, args.results_dir)
    print(render(result["latency"]))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
