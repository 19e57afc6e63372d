"""``make chaos`` / ``make soak``: the chaos scenario on a broker of its own.

    python -m tests.chaos                                   # 200 000 events (the suite: 100 000)
    python -m tests.chaos --events 1000000 --profiles 100000  # the soak
    python -m tests.chaos --warehouse snowflake             # on the Snowflake test double
    python -m tests.chaos --no-history                      # without the history table

Starts a fresh local broker in ``<dir>/kafka`` (``--bootstrap`` uses an external one instead, and
skips the broker restart), runs ``driver.run_chaos`` with ``<dir>/run`` as its work directory,
prints the details to stderr and the verdict line last on stdout. Exit 0 only when clean.
``--warehouse snowflake`` writes through the real Snowflake connector to the Snowflake test double
(fakesnow's server with Snowflake's locks, in ``<dir>/fakesnow``), with the smaller default
sizes of ``driver.SNOWFLAKE_SIZES`` and no broker restart.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.driver import DUCKDB_SIZES, run_chaos, run_chaos_on_snowflake
from tools.localkafka import BrokerStartError, LocalKafka


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--warehouse", choices=("duckdb", "snowflake"), default="duckdb")
    parser.add_argument("--events", type=int, default=None, help="default: 200 000 (DuckDB)")
    parser.add_argument("--profiles", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--consumers", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--poison-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=20_251_125)
    parser.add_argument("--produce-seconds", type=float, default=None,
                        help="pace production over this long (default: 1 500 events/s)")
    parser.add_argument("--no-history", dest="history", action="store_false", default=None,
                        help="run the consumers without the history table (the DuckDB run "
                        "keeps it by default, the Snowflake run does not)")
    parser.add_argument("--dir", type=Path, default=Path(".local/chaos"),
                        help="work directory, emptied first (broker data, DuckDB file, logs)")
    parser.add_argument("--bootstrap", default="",
                        help="use this external broker (no broker restart) instead of a local one")
    args = parser.parse_args(argv)

    workdir: Path = args.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, mode=0o700)  # profile data and offsets: owner only
    broker: LocalKafka | None = None
    if args.bootstrap:
        bootstrap: str = args.bootstrap
    else:
        broker = LocalKafka(work_dir=workdir / "kafka")
        try:
            broker.start()
        except BrokerStartError as err:
            print(f"chaos: local broker did not start: {err}", file=sys.stderr)
            broker.stop()
            return 2
        bootstrap = broker.bootstrap
    given = {name: getattr(args, name) for name in
             ("events", "profiles", "partitions", "consumers", "kills", "produce_seconds")}
    given["history"] = args.history
    sizes = {name: value for name, value in given.items() if value is not None}
    try:
        if args.warehouse == "snowflake":
            result = run_chaos_on_snowflake(
                bootstrap, workdir, poison_rate=args.poison_rate, seed=args.seed, **sizes)
        else:
            result = run_chaos(
                bootstrap, broker, workdir / "run", **{**DUCKDB_SIZES, **sizes},
                poison_rate=args.poison_rate, seed=args.seed,
            )
    finally:
        if broker is not None:
            broker.stop()
    print(result.details(), file=sys.stderr, flush=True)
    print(result.line(), flush=True)
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
