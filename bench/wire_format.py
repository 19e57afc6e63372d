"""End to end in the format production uses: the Confluent wire format against plain Avro.

    python -m bench.wire_format                          # 5,000,000 events over 1,000,000 profiles
    python -m bench.wire_format --events N --profiles P [--repeat R] [--registry-url URL]

The same history (``bench.load``) is loaded twice: as plain schemaless Avro, and in the
Confluent wire format (magic byte and a 4-byte schema id before each message's Avro body), with
the writer schema registered in a Schema Registry (``--registry-url``, else
``SCHEMA_REGISTRY_URL``, else a local Apicurio Registry started by ``tools.localregistry``).
``kyc-sync run --until-caught-up`` then syncs each topic into a copy of one seeded DuckDB file,
exactly as the end-to-end step of ``bench.run`` does (one window over the topic), with
``decoding.format`` ``avro`` or ``confluent``; the wire-format run fetches the schema from the
registry by its id. With ``--repeat R`` the two runs alternate R times and the medians are
reported. Both tables are checked against the oracle.

``bench.run`` calls ``stage`` with its own end-to-end figure as the plain one, so ``make bench``
reports the wire format beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.instances import Ended, Window, duckdb_env, run_env, run_until_caught_up
from bench.load import Spec, expected_table, load, mismatches, seed_warehouse
from bench.stage import broker, common_args, fresh_dir, machine, say, write_results
from consumer.decode.registry import SchemaRegistry
from schemas import audit_schema

TARGET = 0.9
"""The wire format's end to end is at least this share of plain Avro's (within 10 %)."""


@contextmanager
def registry(url: str, work: Path) -> Iterator[str]:
    """``url`` if given, else ``SCHEMA_REGISTRY_URL``, else a local Apicurio Registry for the
    stage's duration."""
    url = url or os.environ.get("SCHEMA_REGISTRY_URL", "")
    if url:
        yield url.rstrip("/")
        return
    from tools.localregistry import LocalRegistry

    with LocalRegistry(work_dir=work / "registry") as local:
        say(f"local schema registry at {local.ccompat_url} "
            f"(started in {local.startup_seconds or 0:.1f}s)")
        yield local.ccompat_url


def load_wire_topic(bootstrap: str, registry_url: str, spec: Spec) -> tuple[str, int]:
    """A new topic holding the history in the wire format; its schema id in the registry."""
    topic = f"bench-wire-{spec.events}-{uuid.uuid4().hex[:8]}"
    schema_id = SchemaRegistry(registry_url).register(f"{topic}-value", audit_schema())
    say(f"loading {spec.events:,} events in the wire format (schema id {schema_id}) into {topic}")
    loaded = load(bootstrap, topic, spec, schema_id=schema_id)
    say(f"  {loaded.seconds:.1f}s, {loaded.per_s:,.0f} events/s")
    return topic, schema_id


def e2e_run(
    bootstrap: str, topic: str, seeded: Path, work: Path, name: str, spec: Spec,
    timeout_s: float, registry_url: str = "",
) -> tuple[float, Ended, int]:
    """``kyc-sync run --until-caught-up`` over ``topic`` into a copy of ``seeded``, as
    ``bench.run``'s end-to-end step; ``registry_url`` set: the wire format. Returns events/s,
    the process's figures and the rows that differ from the oracle."""
    db = work / f"{name}.duckdb"
    shutil.copyfile(seeded, db)
    extra = {} if not registry_url else {
        "KYC_SYNC_DECODING__FORMAT": "confluent",
        "KYC_SYNC_DECODING__SCHEMA_REGISTRY_URL": registry_url,
    }
    env = run_env(bootstrap, topic, duckdb_env(db), Window(86_400.0, 2 * spec.events + 1),
                  extra=extra)
    wall, (ended,) = run_until_caught_up(env, [work / f"{name}.log"], timeout_s)
    bad = mismatches(db, expected_table(spec))
    db.unlink(missing_ok=True)
    per_s = spec.events / wall
    say(f"  {name}: {per_s:,.0f} events/s in {wall:.1f}s, peak RSS "
        f"{ended.peak_rss_bytes / 2**20:,.0f} MiB, {bad} mismatching rows")
    return per_s, ended, bad


def figures(plain: list[float], wire: list[float], wire_runs: list[Ended], bad: int,
            schema_id: int, started: dict[str, Any]) -> dict[str, Any]:
    plain_per_s = statistics.median(plain)
    wire_per_s = statistics.median(wire)
    vs = wire_per_s / plain_per_s
    return {
        "e2e_confluent_per_s": wire_per_s,
        "e2e_confluent_runs_per_s": wire,
        "e2e_plain_runs_per_s": plain,
        "e2e_confluent_vs_plain": vs,
        "e2e_confluent_target_met": vs >= TARGET,
        "e2e_confluent_correct": bad == 0,
        "e2e_confluent_peak_rss_bytes": max(e.peak_rss_bytes for e in wire_runs),
        "e2e_confluent_schema_id": schema_id,
        "e2e_confluent_machine": {"start": started, "end": machine()},
    }


def stage(
    bootstrap: str, spec: Spec, seeded: Path, work: Path, timeout_s: float, plain_per_s: float,
    registry_url: str = "",
) -> dict[str, Any]:
    """The wire-format figure beside an end-to-end figure of plain Avro measured just before on
    the same history and seeded file (``bench.run``'s); the registry is started if not given."""
    started = machine()
    with registry(registry_url, work) as url:
        topic, schema_id = load_wire_topic(bootstrap, url, spec)
        say("end to end, Confluent wire format: kyc-sync run --until-caught-up")
        per_s, ended, bad = e2e_run(bootstrap, topic, seeded, work, "e2e-confluent", spec,
                                    timeout_s, url)
    result = figures([plain_per_s], [per_s], [ended], bad, schema_id, started)
    say(f"  wire format / plain = {result['e2e_confluent_vs_plain']:.2f} (target >= {TARGET})")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = Spec(args.events, args.profiles, args.partitions)
    work = fresh_dir(args.work_dir)
    started = machine()
    with broker(args.bootstrap, work) as bootstrap, \
            registry(args.registry_url, work) as url:
        plain_topic = f"bench-plain-{spec.events}-{uuid.uuid4().hex[:8]}"
        say(f"loading {spec.events:,} events over {spec.profiles:,} profiles into {plain_topic}")
        load(bootstrap, plain_topic, spec)
        wire_topic, schema_id = load_wire_topic(bootstrap, url, spec)
        seeded = work / "seeded.duckdb"
        seed_warehouse(seeded, spec)
        plain: list[float] = []
        wire: list[float] = []
        wire_runs: list[Ended] = []
        bad = 0
        for attempt in range(args.repeat):
            say(f"round {attempt + 1} of {args.repeat}")
            per_s, _, plain_bad = e2e_run(bootstrap, plain_topic, seeded, work, "e2e-plain",
                                          spec, args.timeout)
            plain.append(per_s)
            per_s, ended, wire_bad = e2e_run(bootstrap, wire_topic, seeded, work,
                                             "e2e-confluent", spec, args.timeout, url)
            wire.append(per_s)
            wire_runs.append(ended)
            bad += plain_bad + wire_bad
    result = figures(plain, wire, wire_runs, bad, schema_id, started)
    result["e2e_confluent_events"] = spec.events
    result["e2e_confluent_profiles"] = spec.profiles
    return result


def render(result: dict[str, Any]) -> str:
    plain = statistics.median(result["e2e_plain_runs_per_s"])
    return "\n".join([
        f"end to end, plain Avro        {plain:>12,.0f} /s",
        f"end to end, Confluent format  {result['e2e_confluent_per_s']:>12,.0f} /s",
        f"wire / plain                  {result['e2e_confluent_vs_plain']:>12.2f}   "
        f"(target >= {TARGET}: {'met' if result['e2e_confluent_target_met'] else 'NOT met'})",
        f"correct: {result['e2e_confluent_correct']}; load average "
        f"{result['e2e_confluent_machine']['start']['loadavg']} -> "
        f"{result['e2e_confluent_machine']['end']['loadavg']} on "
        f"{result['e2e_confluent_machine']['end']['cpus']} cpus",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.wire_format", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds; medians")
    parser.add_argument("--registry-url", default="",
                        help="Confluent-compatible registry API (default: SCHEMA_REGISTRY_URL, "
                        "else a local Apicurio Registry)")
    common_args(parser, "wire_format")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    path = write_results("wire_format", result, args.results_dir)
    print(render(result))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
