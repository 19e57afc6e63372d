"""How the cost grows with the window: end to end at several sizes, and where memory goes.

    python -m bench.scale                       # 1M/100k, 5M/1M and 20M/4M events/profiles
    python -m bench.scale --divide 10           # the same sizes divided by 10
    python -m bench.scale --sizes 200000/40000,1000000/200000 [--no-breakdown] [--no-plot]

For each size (events/profiles), on one broker: the history of ``bench.load`` is loaded into a
new topic; ``kyc-sync run --until-caught-up`` syncs it in one window into a DuckDB file that
already holds ``profiles`` rows, exactly as ``bench.run``'s end-to-end step (events/s over the
process's wall time, its exact peak RSS, the table checked against the oracle); then
``bench.window_memory`` reads the topic again in a process of its own and reports where the
window's memory goes. The topic is deleted before the next size.

Bytes per profile: the peak RSS over the profiles, and the peak over a baseline (the peak RSS of
the same command over a topic of 1,000 events) over the profiles: the part that grows with the
window. Writes ``bench/results/scale.json`` (key ``scale`` in ``latest.json``) and a plot,
``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bench.instances import Window, duckdb_env, run_env, run_until_caught_up
from bench.load import Spec, expected_table, load, mismatches, seed_warehouse
from bench.stage import broker, common_args, fresh_dir, machine, say, write_results
from tools.localkafka import REPO_ROOT

SIZES: tuple[tuple[int, int], ...] = (
    (1_000_000, 100_000), (5_000_000, 1_000_000), (20_000_000, 4_000_000))
BASELINE = (1_000, 100)
"""The topic of the baseline run: start-up, imports, group join, an almost empty window."""
MIB = 2**20


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``E/P,E/P,...`` -> ((E, P), ...)."""
    sizes = []
    for part in text.split(","):
        events, _, profiles = part.partition("/")
        sizes.append((int(events), int(profiles)))
    return tuple(sizes)


def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([topic]).values():
        future.result(60)


def end_to_end(
    bootstrap: str, spec: Spec, work: Path, timeout_s: float, check: bool = True
) -> tuple[dict[str, Any], str, Path]:
    """Load, seed and run one size; returns its figures, the topic (kept) and the seeded file."""
    topic = f"bench-scale-{spec.events}-{uuid.uuid4().hex[:8]}"
    say(f"loading {spec.events:,} events over {spec.profiles:,} profiles into {topic}")
    loaded = load(bootstrap, topic, spec)
    say(f"  {loaded.seconds:.1f}s, {loaded.per_s:,.0f} events/s")
    seeded = work / f"seeded-{spec.events}.duckdb"
    seed_warehouse(seeded, spec)
    db = work / f"e2e-{spec.events}.duckdb"
    shutil.copyfile(seeded, db)
    start = machine()
    env = run_env(bootstrap, topic, duckdb_env(db), Window(86_400.0, 2 * spec.events + 1))
    wall, (ended,) = run_until_caught_up(env, [work / f"e2e-{spec.events}.log"], timeout_s)
    end = machine()
    bad = mismatches(db, expected_table(spec)) if check else None
    db.unlink(missing_ok=True)
    flushes = ended.flushes
    figures = {
        "events": spec.events,
        "profiles": spec.profiles,
        "e2e_per_s": spec.events / wall,
        "e2e_wall_s": wall,
        "peak_rss_bytes": ended.peak_rss_bytes,
        "bytes_per_profile": ended.peak_rss_bytes / spec.profiles,
        "e2e_ingest_s": sum(float(f.get("decode_s", 0)) for f in flushes),
        "e2e_flush_s": sum(float(f.get("total_s", 0)) for f in flushes),
        "e2e_write_s": sum(float(f.get("write_s", 0)) for f in flushes),
        "keys": sum(int(f.get("keys", 0)) for f in flushes),
        "load_per_s": loaded.per_s,
        "mismatches": bad,
        "correct": None if bad is None else bad == 0,
        "machine_start": start,
        "machine_end": end,
    }
    say(f"  {figures['e2e_per_s']:,.0f} events/s in {wall:.1f}s, peak RSS "
        f"{ended.peak_rss_bytes / MIB:,.0f} MiB, {bad} mismatching rows; load {end['loadavg']}")
    return figures, topic, seeded


def breakdown(bootstrap: str, topic: str, partitions: int, seeded: Path, work: Path,
              timeout_s: float) -> dict[str, Any]:
    """``bench.window_memory`` over ``topic`` in a process of its own."""
    db = work / "window-memory.duckdb"
    shutil.copyfile(seeded, db)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.window_memory", "--bootstrap", bootstrap,
             "--topic", topic, "--partitions", str(partitions), "--db", str(db)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout_s, check=False,
        )
    finally:
        db.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench.window_memory exited {out.returncode}:\n{out.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    keys = figures["keys"]
    for name in ("ingest_peak", "fetch_queue_peak", "reduced", "staged", "stage_peak",
                 "write_peak"):
        figures[f"{name}_per_profile"] = figures[f"{name}_bytes"] / keys
    say(f"  memory per profile: ingest peak {figures['ingest_peak_per_profile']:,.0f} B "
        f"(fetch queue {figures['fetch_queue_peak_bytes'] / MIB:,.0f} MiB), reduced frame "
        f"{figures['reduced_per_profile']:,.0f} B, staged {figures['staged_per_profile']:,.0f} B,"
        f" DuckDB write {figures['write_peak_per_profile']:,.0f} B")
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = parse_sizes(args.sizes) if args.sizes else tuple(
        (e // args.divide, p // args.divide) for e, p in SIZES)
    work = fresh_dir(args.work_dir)
    runs: list[dict[str, Any]] = []
    started = machine()
    with broker(args.bootstrap, work) as bootstrap:
        say("baseline: kyc-sync over a topic of 1,000 events")
        base, topic, seeded = end_to_end(bootstrap, Spec(*BASELINE, args.partitions), work,
                                         args.timeout)
        delete_topic(bootstrap, topic)
        seeded.unlink()
        baseline = base["peak_rss_bytes"]
        for events, profiles in sizes:
            spec = Spec(events, profiles, args.partitions)
            figures, topic, seeded = end_to_end(bootstrap, spec, work, args.timeout,
                                                check=not args.no_check)
            figures["bytes_per_profile_over_baseline"] = (
                (figures["peak_rss_bytes"] - baseline) / profiles)
            if not args.no_breakdown:
                figures["memory"] = breakdown(bootstrap, topic, spec.partitions, seeded, work,
                                              args.timeout)
            delete_topic(bootstrap, topic)
            seeded.unlink()
            runs.append(figures)
    result: dict[str, Any] = {"scale": {
        "runs": runs,
        "baseline_peak_rss_bytes": baseline,
        "partitions": args.partitions,
        "machine_start": started,
        "machine_end": machine(),
    }}
    if not args.no_plot:
        result["scale"]["plot"] = str(plot(result["scale"], args.results_dir / "scale.png"))
    return result


def plot(scale: dict[str, Any], path: Path) -> Path:
    """events/s and peak RSS against the window's size; bytes per profile by where they go."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = scale["runs"]
    labels = [f"{count(r['events'])} / {count(r['profiles'])}" for r in runs]
    fig, (rate_ax, rss_ax, per_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    rate_ax.plot(labels, [r["e2e_per_s"] / 1e3 for r in runs], marker="o")
    rate_ax.set_title("end to end (kyc-sync run, one window)")
    rate_ax.set_ylabel("thousand events/s")
    rate_ax.set_ylim(bottom=0)
    profiles = [r["profiles"] / 1e6 for r in runs]
    rss_ax.plot(profiles, [r["peak_rss_bytes"] / MIB for r in runs], marker="o", label="peak RSS")
    for x, y, label in zip(profiles, [r["peak_rss_bytes"] / MIB for r in runs], labels,
                           strict=True):
        rss_ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -12),
                        fontsize="small")
    rss_ax.axhline(scale["baseline_peak_rss_bytes"] / MIB, color="grey", linestyle="--",
                   label="baseline (1,000 events)")
    rss_ax.set_title("peak RSS of the process")
    rss_ax.set_ylabel("MiB")
    rss_ax.set_ylim(bottom=0)
    rss_ax.set_xlim(left=0)
    rss_ax.legend()
    parts = [("ingest peak", "ingest_peak_per_profile"),
             ("  of which librdkafka's queue", "fetch_queue_peak_per_profile"),
             ("reduced frame", "reduced_per_profile"), ("staged Arrow table", "staged_per_profile"),
             ("DuckDB write peak", "write_peak_per_profile")]
    with_memory = [r for r in runs if "memory" in r]
    if with_memory:
        width = 0.8 / len(parts)
        xs = range(len(with_memory))
        for i, (label, key) in enumerate(parts):
            per_ax.bar([x + (i - (len(parts) - 1) / 2) * width for x in xs],
                       [r["memory"][key] for r in with_memory], width, label=label.strip())
        per_ax.plot(list(xs), [r["bytes_per_profile_over_baseline"] for r in with_memory],
                    marker="o", color="black", label="e2e peak RSS over baseline")
        per_ax.set_xticks(list(xs), [labels[runs.index(r)] for r in with_memory])
        per_ax.legend(fontsize="small")
    per_ax.set_title("bytes per profile")
    per_ax.set_ylabel("bytes")
    for ax in (rate_ax, per_ax):
        ax.set_xlabel("events / profiles")
    rss_ax.set_xlabel("million profiles in the window")
    for ax in (rate_ax, rss_ax, per_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"kyc-sync, {scale['partitions']} partitions, DuckDB file, load average "
                 f"{scale['machine_start']['loadavg']} -> {scale['machine_end']['loadavg']} "
                 f"on {scale['machine_end']['cpus']} CPUs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def count(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def render(scale: dict[str, Any]) -> str:
    header = (f"{'events':>11} {'profiles':>10} {'events/s':>10} {'peak RSS':>10} "
              f"{'B/profile':>10} {'over base':>10} {'reduced':>8} {'staged':>8} "
              f"{'ingest':>8} {'write':>8}  load average")
    lines = [header, "-" * len(header)]
    for r in scale["runs"]:
        m = r.get("memory", {})

        def per(key: str, m: dict[str, Any] = m) -> str:
            return f"{m[key]:>8,.0f}" if key in m else f"{'':>8}"

        lines.append(
            f"{r['events']:>11,} {r['profiles']:>10,} {r['e2e_per_s']:>10,.0f} "
            f"{r['peak_rss_bytes'] / MIB:>6,.0f} MiB {r['bytes_per_profile']:>10,.0f} "
            f"{r['bytes_per_profile_over_baseline']:>10,.0f} {per('reduced_per_profile')} "
            f"{per('staged_per_profile')} {per('ingest_peak_per_profile')} "
            f"{per('write_peak_per_profile')}  {r['machine_end']['loadavg']}")
    lines.append(f"baseline peak RSS (1,000 events): "
                 f"{scale['baseline_peak_rss_bytes'] / MIB:,.0f} MiB; bytes per profile columns: "
                 "reduced frame, staged table, ingest peak and DuckDB write peak over their base")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="",
                        help="EVENTS/PROFILES,... (default 1000000/100000,5000000/1000000,"
                        "20000000/4000000)")
    parser.add_argument("--divide", type=int, default=1,
                        help="divide the default sizes by this (a smaller run)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the memory breakdown (bench.window_memory)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the comparison of each table with the oracle")
    parser.add_argument("--no-plot", action="store_true")
    common_args(parser, "scale")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    path = write_results("scale", result, args.results_dir)
    print(render(result["scale"]))
    print(f"\nresults: {path}" + (f"; plot: {result['scale']['plot']}"
                                   if "plot" in result["scale"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
