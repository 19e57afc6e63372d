"""Scale out: 1, 2 and 3 ``kyc-sync run`` processes of one consumer group over one topic and one
warehouse; the aggregate rate and its ratio to one instance.

    python -m bench.scale_out                               # 5,000,000 events, DuckDB
    python -m bench.scale_out --events N --profiles P [--instances 1,2,3] [--window-events W]
    python -m bench.scale_out --warehouse snowflake --events 300000 --profiles 60000

The history of ``bench.load`` is loaded once (6 partitions). For each instance count, a new
group's instances are started together with ``--until-caught-up`` and the same settings, and
the figure is the topic's events over the seconds from their start to the last one's exit
(group join, rebalances and every flush included). Windows are the product's defaults
(``window.seconds`` 600, ``window.max_events`` 1,000,000, or ``--window-events``): a backlog is
caught up window by window, as a deployment does.

- ``duckdb``: one DuckDB file, already holding ``profiles`` rows (as ``bench.run``), shared by the
  instances. DuckDB lets one process write a file at a time: each instance opens it only for its
  write, and an instance that finds it locked retries with backoff (``warehouse.retry_max_s``).
  Reported: the lock retries, and how long the file was held for writes against the wall time.
- ``snowflake``: the Snowflake test double (fakesnow's server with Snowflake's table locks,
  ``tests.warehouse.snowflake_double``) through the real connector, a new database per count.
  Every statement of every instance runs in the double's one Python process over DuckDB, so the
  rates are the double's, not Snowflake's; what carries over is the locking: a MERGE into the
  state table holds its lock until the commit, and another instance's MERGE waits for it.

Each table is checked against the oracle. Writes ``bench/results/scale_out.json`` (key
``scale_out`` in ``latest.json``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.instances import (
    LOCK_WAIT_LINE,
    LOCKED_LINE,
    Ended,
    Window,
    duckdb_env,
    run_env,
    run_until_caught_up,
)
from bench.load import (
    Spec,
    expected_table,
    goldtier_id,
    latest_changes,
    load,
    mismatches,
    seed_warehouse,
)
from bench.stage import broker, common_args, fresh_dir, machine, say, write_results

REVOKE_LINE = "revoked: flushing what is buffered"


def unseeded_current(spec: Spec) -> dict[int, tuple[str, int]]:
    """The live profiles after the topic is applied to an empty table."""
    return {key: (goldtier_id(i), op_time) for key, (_, i, op, op_time)
            in latest_changes(spec).items() if op != "DELETE"}


class DuckDBTargets:
    """A copy of one seeded file per instance count."""

    name = "duckdb"

    def __init__(self, spec: Spec, work: Path) -> None:
        self.spec = spec
        self.work = work
        self.seeded = work / "seeded.duckdb"
        seed_warehouse(self.seeded, spec)
        self.expected: pa.Table | None = None

    def env(self, count: int) -> dict[str, str]:
        db = self.work / f"scale-out-{count}.duckdb"
        shutil.copyfile(self.seeded, db)
        return duckdb_env(db)

    def mismatches(self, count: int) -> int:
        if self.expected is None:
            self.expected = expected_table(self.spec)
        db = self.work / f"scale-out-{count}.duckdb"
        bad = mismatches(db, self.expected)
        db.unlink(missing_ok=True)
        return bad


class SnowflakeTargets:
    """A new database of the Snowflake double per instance count (tables created empty)."""

    name = "snowflake"

    def __init__(self, spec: Spec, host: str, port: int, log: Path, lock_timeout_s: int) -> None:
        from tests.chaos.targets import SnowflakeTarget

        self.spec = spec
        self.new_target = partial(SnowflakeTarget, host, port, log=log,
                                  lock_timeout_s=lock_timeout_s)
        self.targets: dict[int, SnowflakeTarget] = {}
        self.expected: dict[int, tuple[str, int]] | None = None

    def env(self, count: int) -> dict[str, str]:
        database = f"BENCH_{uuid.uuid4().hex[:10].upper()}"
        target = self.targets[count] = self.new_target(database=database)
        target.create_schema()
        return target.env()

    def mismatches(self, count: int) -> int:
        if self.expected is None:
            self.expected = unseeded_current(self.spec)
        actual = self.targets[count].read_current()
        keys = self.expected.keys() | actual.keys()
        return sum(1 for k in keys if self.expected.get(k) != actual.get(k))


@contextmanager
def snowflake_double(work: Path) -> Iterator[tuple[str, int, Path]]:
    from tests.warehouse.fakesnow_process import FAKESNOW_HOST, start_fakesnow, stop_fakesnow

    double_dir = work / "snowflake-double"
    double_dir.mkdir(parents=True, exist_ok=True)
    proc, port = start_fakesnow(double_dir)
    say(f"Snowflake double on {FAKESNOW_HOST}:{port}")
    try:
        yield FAKESNOW_HOST, port, double_dir / "fakesnow.log"
    finally:
        stop_fakesnow(proc)


def summarize(count: int, wall: float, ended: list[Ended], spec: Spec, bad: int,
              start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    flushes = [f for e in ended for f in e.flushes]
    write_s = sum(float(f.get("write_s", 0)) for f in flushes)
    return {
        "instances": count,
        "per_s": spec.events / wall,
        "wall_s": wall,
        "instance_wall_s": [e.wall_s for e in ended],
        "events_per_instance": [sum(int(f.get("events", 0)) for f in e.flushes) for e in ended],
        "flushes": len(flushes),
        "revocation_flushes": sum(e.count(REVOKE_LINE) for e in ended),
        "write_s": write_s,
        "write_share": write_s / wall,
        "flush_s": sum(float(f.get("total_s", 0)) for f in flushes),
        "lock_retries": sum(e.count(LOCKED_LINE) + e.count(LOCK_WAIT_LINE) for e in ended),
        "cpu_s": sum(e.cpu_s for e in ended),
        "cpus_busy": sum(e.cpu_s for e in ended) / wall,
        "peak_rss_bytes": [e.peak_rss_bytes for e in ended],
        "mismatches": bad,
        "correct": bad == 0,
        "machine_start": start,
        "machine_end": end,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = Spec(args.events, args.profiles, args.partitions)
    counts = [int(c) for c in args.instances.split(",")]
    work = fresh_dir(args.work_dir)
    window = Window(600.0, args.window_events)
    runs: list[dict[str, Any]] = []
    started = machine()
    with broker(args.bootstrap, work) as bootstrap:
        topic = f"bench-scale-out-{spec.events}-{uuid.uuid4().hex[:8]}"
        say(f"loading {spec.events:,} events over {spec.profiles:,} profiles into {topic}")
        loaded = load(bootstrap, topic, spec)
        say(f"  {loaded.seconds:.1f}s, {loaded.per_s:,.0f} events/s")
        with targets_for(args, spec, work) as targets:
            for count in counts:
                say(f"{count} instance(s) of one group, {targets.name}")
                env = run_env(bootstrap, topic, targets.env(count), window)
                start = machine()
                wall, ended = run_until_caught_up(
                    env, [work / f"scale-out-{count}-{i}.log" for i in range(count)],
                    args.timeout)
                end = machine()
                bad = targets.mismatches(count)
                one = summarize(count, wall, ended, spec, bad, start, end)
                runs.append(one)
                say(f"  {one['per_s']:,.0f} events/s in {wall:.1f}s; {one['flushes']} flushes, "
                    f"writes {one['write_s']:.1f}s ({one['write_share']:.0%} of the wall time), "
                    f"{one['lock_retries']} lock retries, {one['cpus_busy']:.2f} CPUs busy, "
                    f"{bad} mismatching rows; load {end['loadavg']}")
    base = next((r["per_s"] for r in runs if r["instances"] == 1), None)
    for r in runs:
        r["vs_one"] = None if base is None else r["per_s"] / base
    return {"scale_out": {
        "warehouse": args.warehouse,
        "events": spec.events,
        "profiles": spec.profiles,
        "partitions": spec.partitions,
        "window_max_events": args.window_events or 1_000_000,
        "runs": runs,
        "machine_start": started,
        "machine_end": machine(),
    }}


@contextmanager
def targets_for(
    args: argparse.Namespace, spec: Spec, work: Path
) -> Iterator[DuckDBTargets | SnowflakeTargets]:
    if args.warehouse == "duckdb":
        yield DuckDBTargets(spec, work)
        return
    with snowflake_double(work) as (host, port, log):
        yield SnowflakeTargets(spec, host, port, log, args.lock_timeout_s)


def render(result: dict[str, Any]) -> str:
    header = (f"{'instances':>9} {'events/s':>10} {'x one':>6} {'wall s':>7} {'flushes':>7} "
              f"{'write s':>8} {'write %':>7} {'lock retries':>12} {'CPUs busy':>9}  load average")
    lines = [f"scale out: {result['events']:,} events over {result['profiles']:,} profiles, "
             f"{result['partitions']} partitions, {result['warehouse']}, windows of at most "
             f"{result['window_max_events']:,} events", header, "-" * len(header)]
    for r in result["runs"]:
        vs = "" if r["vs_one"] is None else f"{r['vs_one']:.2f}"
        lines.append(
            f"{r['instances']:>9} {r['per_s']:>10,.0f} {vs:>6} {r['wall_s']:>7.1f} "
            f"{r['flushes']:>7} {r['write_s']:>8.1f} {r['write_share']:>7.0%} "
            f"{r['lock_retries']:>12} {r['cpus_busy']:>9.2f}  {r['machine_end']['loadavg']}")
    lines.append("correct: " + " ".join(f"{r['instances']}={r['correct']}" for r in result["runs"]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--instances", default="1,2,3", help="instance counts, comma-separated")
    parser.add_argument("--warehouse", choices=["duckdb", "snowflake"], default="duckdb")
    parser.add_argument("--window-events", type=int, default=0,
                        help="window.max_events (default: the product's, 1,000,000)")
    parser.add_argument("--lock-timeout-s", type=int, default=60,
                        help="snowflake.lock_timeout_s of the instances (the product's default)")
    common_args(parser, "scale_out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    name = "scale_out" if args.warehouse == "duckdb" else "scale_out_snowflake"
    figures = {name: result["scale_out"]}
    path = write_results(name, figures, args.results_dir)
    print(render(result["scale_out"]))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
