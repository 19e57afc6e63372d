"""Time one flush of the Snowflake writer on fakesnow (Snowflake's wire protocol, DuckDB inside).

    python -m bench.snowflake_flush                     # 100,000 rows, a local fakesnow server
    python -m bench.snowflake_flush --rows N [--host H --port P] [--repeat R] [--json]

Starts ``python -m fakesnow -s`` on a free port of 127.0.0.1 (unless --host/--port name a running
one), opens the writer on a fresh database, then applies, each ``--repeat`` times on fresh keys:

- ``insert``: N new profiles (the MERGE's NOT MATCHED path);
- ``update``: a newer version of the same N profiles (MATCHED, guard true);
- ``stale``:  the same batch again (MATCHED, guard false: a redelivery).

Reported per flush: wall time of ``apply`` (staging, MERGE, ledger, commit) and the time of each
statement it issued. fakesnow runs every statement in one Python process over DuckDB, so the
figures measure the writer's protocol and fakesnow, not a Snowflake warehouse.

With ``--repeat`` above 1, the second ``update`` takes tens of seconds in its MERGE: DuckDB 2.0.1
is slow to update ~100k rows (several VARCHAR columns set) that were appended after an earlier
update of other rows of the table. That is DuckDB's, under fakesnow; the first round is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from snowflake.connector.cursor import SnowflakeCursor

from batcher.ranges import PartitionRange
from tests.oracles.reducer import Version, Winner
from tests.oracles.staging import Row, build_staged
from warehouse.base import Batch
from warehouse.identifiers import QualifiedName
from warehouse.snowflake_settings import SnowflakeSettings
from warehouse.snowflake_writer import SnowflakeWarehouse
from warehouse.tables import TableNames

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds
HOST = "127.0.0.1"


@contextmanager
def fakesnow_server(host: str = HOST, timeout_s: float = 60.0) -> Iterator[int]:
    """A fakesnow server subprocess on a free port; yields the port, stops it afterwards."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="fakesnow-bench-") as work:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakesnow", "-s", "--host", host, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": work},
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    socket.create_connection((host, port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("fakesnow server did not start") from None
                    time.sleep(0.1)
            yield port
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def statement_timer() -> Iterator[list[tuple[str, float]]]:
    """Record (first words, seconds) of every statement the connector executes."""
    timings: list[tuple[str, float]] = []
    original: Callable[..., Any] = SnowflakeCursor.execute

    def timed(self: SnowflakeCursor, command: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, command, *args, **kwargs)
        finally:
            head = " ".join(command.split()[:4])
            timings.append((head, time.perf_counter() - started))

    SnowflakeCursor.execute = timed  # type: ignore[assignment]
    try:
        yield timings
    finally:
        SnowflakeCursor.execute = original  # type: ignore[method-assign]


def make_batch(rows: int, first_key: int, version: int) -> Batch:
    winners: list[Winner[Row]] = [
        Winner(
            key, Version(T0 + version * 1_000_000 + key, key % 12, version * rows + key),
            "INSERT" if version == 0 else "UPDATE",
            (key, f"GT-{key:09d}", f"CID-{key}", f"P-{key % 977}", T0 - key, T0 + version),
        )
        for key in range(first_key, first_key + rows)
    ]
    batch_id = uuid.uuid4().hex
    return Batch(
        batch_id=batch_id, topic="kyc_profile_audit", consumer_group="bench",
        rows=build_staged(winners, batch_id, T0 + 10**12),
        ranges=tuple(PartitionRange(p, 0, rows) for p in range(12)),
        events_in=rows, invalid_events=0,
        started_at=datetime.now(UTC).replace(tzinfo=None),
    )


def run(rows: int, host: str, port: int, repeat: int) -> dict[str, Any]:
    database = f"KYC_BENCH_{uuid.uuid4().hex[:8].upper()}"
    config = SnowflakeSettings(
        account="fakesnow", user="bench", password=SecretStr("bench"), database=database,
        schema_name="KYC", host=host, port=port, protocol="http", network_timeout_s=600,
    )
    names = TableNames(*(QualifiedName.of(database, "KYC", t, upper=True)
                         for t in ("kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger")))
    writer = SnowflakeWarehouse(config, names)
    writer.open()
    flushes: list[dict[str, Any]] = []
    try:
        for r in range(repeat):
            first_key = r * rows
            inserts, updates = make_batch(rows, first_key, 0), make_batch(rows, first_key, 1)
            for kind, batch in (("insert", inserts), ("update", updates), ("stale", updates)):
                with statement_timer() as timings:
                    started = time.perf_counter()
                    result = writer.apply(batch)
                    wall = time.perf_counter() - started
                flushes.append({
                    "kind": kind, "rows": rows, "wall_s": round(wall, 3),
                    "inserted": result.inserted, "updated": result.updated,
                    "skipped_stale": result.skipped_stale,
                    "statements": [(head, round(s, 3)) for head, s in timings],
                })
    finally:
        writer.close()
    return {"rows": rows, "repeat": repeat, "flushes": flushes}


def print_report(report: dict[str, Any]) -> None:
    print(f"Snowflake writer on fakesnow, {report['rows']:,} rows per flush")
    for flush in report["flushes"]:
        print(f"\n{flush['kind']:>6}: {flush['wall_s']:.2f} s  (inserted {flush['inserted']:,}, "
              f"updated {flush['updated']:,}, stale {flush['skipped_stale']:,})")
        for head, seconds in flush["statements"]:
            print(f"        {seconds:7.3f} s  {head}")
        client = flush["wall_s"] - sum(seconds for _, seconds in flush["statements"])
        print(f"        {client:7.3f} s  (client side: key check, Parquet, fetching results)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="a running server; 0: start one")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    if args.port:
        report = run(args.rows, args.host, args.port, args.repeat)
    else:
        with fakesnow_server(args.host) as port:
            report = run(args.rows, args.host, port, args.repeat)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
