"""What profile history costs a flush: the DuckDB writer's ``apply`` with history off and on.

    python -m bench.history_flush          # 3 windows of 1,000,000 events over 200,000 keys
    python -m bench.history_flush --windows W --events N --keys K

The windows of ``bench.reducer_memory`` (the decoder's columns, 5 % redeliveries) are reduced and
staged as the run loop does, then applied one after the other to a fresh DuckDB file per mode:
history off (the winners only) and on (the winners, and every distinct version into the history
table, whose intervals are recomputed for the window's keys). Later windows update profiles the
earlier ones wrote, so they show the cost on a table that already holds history. Reported: the
seconds of each ``apply`` (one transaction, commit included), rows written, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from batcher.reducer import Reducer
from bench.load import table_names
from bench.reducer_memory import BATCH, batches
from warehouse.base import Batch
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.identifiers import QualifiedName
from warehouse.staging import stage_frame


def windows(count: int, events: int, keys: int, history: bool) -> list[Batch]:
    """``count`` consecutive windows of ``events`` each, reduced and staged."""
    out = []
    frames = batches(count * events, keys)
    for index in range(count):
        reducer = Reducer(keep_versions=history)
        for _ in range(0, events, BATCH):
            reducer.add(next(frames))
        window = reducer.drain()
        assert window.rows is not None
        out.append(Batch(
            batch_id=f"w{index}", topic="bench", consumer_group="bench",
            rows=stage_frame(window.rows, f"w{index}", 0), ranges=(), events_in=events,
            invalid_events=0, started_at=datetime(2026, 1, 1),
            history=None if window.versions is None
            else stage_frame(window.versions, f"w{index}", 0),
        ))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history_flush", description=__doc__)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=200_000)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    lines = []
    with tempfile.TemporaryDirectory() as work:
        for history in (False, True):
            names = table_names()
            if history:
                names = replace(names, history=QualifiedName.of("main", "kyc_profile_history"))
            writer = DuckDBWarehouse(str(Path(work) / f"h{int(history)}.duckdb"), names)
            writer.open()
            for batch in windows(args.windows, args.events, args.keys, history):
                started = time.perf_counter()
                writer.apply(batch)
                seconds = time.perf_counter() - started
                versions = 0 if batch.history is None else batch.history.num_rows
                lines.append(f"{'on' if history else 'off':8} {batch.batch_id:>6} "
                             f"{batch.rows.num_rows:>10,} {versions:>10,} {seconds:>8.2f}s")
            writer.close()
    load_after = os.getloadavg()
    print(f"history flush: {args.windows} windows of {args.events:,} events over {args.keys:,} "
          f"keys; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} CPUs)")
    print(f"{'history':8} {'window':>6} {'winners':>10} {'versions':>10} {'apply':>9}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
