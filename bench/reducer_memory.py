"""What profile history costs the reducer: peak memory and time of one window, history off and on.

    python -m bench.reducer_memory                      # 1,000,000 events over 200,000 keys
    python -m bench.reducer_memory --events N --keys K  # another size

Each mode runs in a process of its own (``--mode latest|versions``), so that each peak RSS
(``ru_maxrss``) is its own: the events are generated batch by batch as the decoder hands them
over (10,000 rows, the decoder's columns, timestamps as integers), offered to ``Reducer``
(``keep_versions`` off: the latest per key; on: every distinct version), the window drained and
staged as the run loop does (``stage_frame``: the winners, and with history the versions). 5 %
of the events are redeliveries of recent ones (the same key and version), which history keeps
once. Reported per mode: RSS after the imports and the warm-up (the baseline), peak RSS, the
difference, rows kept, seconds to reduce and to stage; and the load average around the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from batcher.reducer import Reducer
from schemas.columns import KEY
from warehouse.staging import stage_frame

BATCH = 10_000
PARTITIONS = 6
BASE_US = 1_700_000_000_000_000


def rss_bytes() -> int:
    """Current RSS, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batches(events: int, keys: int, seed: int = 14) -> Iterator[pl.DataFrame]:
    """The decoder's rows plus src_partition/src_offset, ``BATCH`` at a time; 5 % of each batch
    repeats rows of the previous one (redeliveries: the same key and version)."""
    rng = np.random.default_rng(seed)
    offsets = np.zeros(PARTITIONS, dtype=np.int64)
    previous: pl.DataFrame | None = None
    for start in range(0, events, BATCH):
        n = min(BATCH, events - start)
        repeats = 0 if previous is None else n // 20
        fresh = n - repeats
        key = rng.integers(0, keys, fresh, dtype=np.int64)
        partition = (key % PARTITIONS).astype(np.int32)
        offset = np.empty(fresh, dtype=np.int64)
        for p in range(PARTITIONS):
            mine = partition == p
            count = int(mine.sum())
            offset[mine] = offsets[p] + np.arange(count)
            offsets[p] += count
        index = np.arange(start, start + fresh)
        op_time = BASE_US + index * 1_000 - rng.integers(0, 2, fresh) * rng.integers(
            0, 50_000_000, fresh)
        op = rng.choice(np.array(["INSERT", "UPDATE", "DELETE"]), fresh, p=[0.1, 0.8, 0.1])
        frame = pl.DataFrame({
            KEY: key,
            "goldtier_id": pl.Series(index).cast(pl.String),
            "cid": pl.Series(key).cast(pl.String),
            "party_id": pl.Series(key).cast(pl.String),
            "created_date": np.full(fresh, BASE_US, dtype=np.int64),
            "updated_date": op_time,
            "op_type": op,
            "op_time": op_time,
            "src_partition": partition,
            "src_offset": offset,
        }).with_columns(
            ("GT-" + pl.col("goldtier_id")).alias("goldtier_id"),
            ("CID-" + pl.col("cid")).alias("cid"),
            ("PARTY-" + pl.col("party_id")).alias("party_id"),
        )
        if previous is not None and repeats:
            frame = pl.concat([frame, previous.sample(repeats, seed=start)])
        previous = frame
        yield frame


def measure(mode: str, events: int, keys: int) -> dict[str, Any]:
    warm = Reducer(keep_versions=True)
    for frame in batches(2 * BATCH, 100):
        warm.add(frame)
    warm.drain()
    del warm
    baseline = rss_bytes()
    reducer = Reducer(keep_versions=mode == "versions")
    started = time.perf_counter()
    for frame in batches(events, keys):
        reducer.add(frame)
    window = reducer.drain()
    reduced_s = time.perf_counter() - started
    assert window.rows is not None
    started = time.perf_counter()
    staged = stage_frame(window.rows, "b", 0)
    history = None if window.versions is None else stage_frame(window.versions, "b", 0)
    staged_s = time.perf_counter() - started
    return {
        "mode": mode, "events": events, "keys": keys,
        "winners": staged.num_rows, "versions": None if history is None else history.num_rows,
        "baseline_rss_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
        "reduce_s": round(reduced_s, 2), "stage_s": round(staged_s, 2),
    }


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reducer_memory", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--mode", choices=("latest", "versions"), default=None,
                        help="measure one mode in this process and print it as JSON")
    args = parser.parse_args(argv)
    if args.mode is not None:
        print(json.dumps(measure(args.mode, args.events, args.keys)))
        return 0
    load_before = os.getloadavg()
    results = []
    for mode in ("latest", "versions"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.reducer_memory", "--mode", mode,
             "--events", str(args.events), "--keys", str(args.keys)],
            check=True, capture_output=True, text=True,
        ).stdout
        results.append(json.loads(out))
    load_after = os.getloadavg()
    print(f"reducer memory: {args.events:,} events over {args.keys:,} keys, {BATCH:,} per batch, "
          f"5 % redeliveries; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} CPUs)")
    print(f"{'history':8} {'rows kept':>20} {'baseline':>10} {'peak RSS':>10} {'window':>10} "
          f"{'reduce':>8} {'stage':>7}")
    for r in results:
        kept = f"{r['winners']:,}" + ("" if r["versions"] is None else f" + {r['versions']:,}")
        print(f"{'on' if r['mode'] == 'versions' else 'off':8} {kept:>20} "
              f"{mib(r['baseline_rss_bytes']):>10} {mib(r['peak_rss_bytes']):>10} "
              f"{mib(r['peak_rss_bytes'] - r['baseline_rss_bytes']):>10} "
              f"{r['reduce_s']:>7.2f}s {r['stage_s']:>6.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
