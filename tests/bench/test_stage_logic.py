"""The pure parts of the added benchmark stages: size flags, the empty-table oracle, percentiles,
the results file, the probe poll on a real DuckDB file, and stopping a measured process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from bench import latency, scale, scale_out
from bench.instances import Running
from bench.load import Spec, changes, goldtier_id, table_names
from bench.stage import write_results
from warehouse.duckdb_writer import DuckDBWarehouse


def test_sizes_parse_and_divide() -> None:
    assert scale.parse_sizes("1000/100,20000000/4000000") == ((1000, 100), (20_000_000, 4_000_000))
    args = scale.parse_args(["--divide", "10"])
    assert args.divide == 10
    assert scale.parse_args([]).sizes == ""
    assert scale.count(20_000_000) == "20M"
    assert scale.count(100_000) == "100k"


def test_unseeded_oracle_replays_the_history_in_op_time_order() -> None:
    spec = Spec(3_000, 400)
    replayed: dict[int, tuple[str, int]] = {}
    for key, i, op, op_time in sorted(changes(spec), key=lambda c: c[3]):
        if op == "DELETE":
            replayed.pop(key, None)
        else:
            replayed[key] = (goldtier_id(i), op_time)
    assert scale_out.unseeded_current(spec) == replayed


def test_percentiles_and_their_absence() -> None:
    figures = latency.percentiles(np.arange(1, 101, dtype=float), "committed_")
    assert figures["committed_p50_s"] == pytest.approx(50.5)
    assert figures["committed_p99_s"] == pytest.approx(99.01)
    assert figures["committed_max_s"] == 100.0
    assert latency.percentiles(np.array([]), "")["p50_s"] is None


def test_results_are_merged_into_latest(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text(json.dumps({"e2e_per_s": 5.0, "latency": {"old": 1}}))

    own = write_results("latency", {"latency": {"p50_s": 1.0}}, tmp_path)

    assert json.loads(own.read_text()) == {"latency": {"p50_s": 1.0}}
    assert json.loads((tmp_path / "latest.json").read_text()) == {
        "e2e_per_s": 5.0, "latency": {"p50_s": 1.0}}


def test_probe_poll_reads_the_live_probes_of_a_file(tmp_path: Path) -> None:
    db = tmp_path / "probes.duckdb"
    assert latency.poll_probes(db) is None  # no file yet
    names = table_names()
    DuckDBWarehouse(str(db), names).open()
    con = duckdb.connect(str(db))
    try:
        for key, deleted in ((7, False), (latency.PROBE_BASE, False),
                             (latency.PROBE_BASE + 1, True), (latency.PROBE_BASE + 2, False)):
            con.execute(
                f"INSERT INTO {names.state.sql()} VALUES (?, 'g', 'c', 'p', now(), now(), "
                "'INSERT', now(), 0, 0, ?, 'b', now())", [key, deleted])
    finally:
        con.close()

    assert latency.poll_probes(db) == {latency.PROBE_BASE, latency.PROBE_BASE + 2}


def test_probe_poll_says_when_another_process_writes_the_file(tmp_path: Path) -> None:
    db = tmp_path / "held.duckdb"
    DuckDBWarehouse(str(db), table_names()).open()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time\n"
         f"con = duckdb.connect({str(db)!r})\nprint('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert latency.poll_probes(db) is None
    finally:
        holder.kill()
        holder.wait()
    assert latency.poll_probes(db) == set()


def test_stop_reaches_the_measured_command_through_the_launcher(tmp_path: Path) -> None:
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    running = Running([sys.executable, "-c", script], {}, [tmp_path / "probe.log"], 60.0)
    deadline = time.monotonic() + 30
    while "ready" not in running.log_text(0) and time.monotonic() < deadline:
        time.sleep(0.05)

    running.stop()
    (ended,) = running.wait()

    assert ended.returncode == 7  # the command's own exit code, not the launcher killed
    assert ended.peak_rss_bytes > 0
    assert ended.wall_s < 30
