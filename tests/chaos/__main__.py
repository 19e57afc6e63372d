"""``make chaos`` / ``make soak``: the chaos scenario on a broker of its own.

    python -m tests.chaos                                   # 200 000 events, as in the suite
    python -m tests.chaos --events 1000000 --profiles 100000  # the soak

Starts a fresh local broker in ``<dir>/kafka`` (``--bootstrap`` uses an external one instead, and
skips the broker restart), runs ``driver.run_chaos`` with ``<dir>/run`` as its work directory,
prints the details to stderr and the verdict line last on stdout. Exit 0 only when clean.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.driver import run_chaos
from tools.localkafka import BrokerStartError, LocalKafka


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--poison-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=20_251_125)
    parser.add_argument("--produce-seconds", type=float, default=None,
                        help="pace production over this long (default: 1 500 events/s)")
    parser.add_argument("--dir", type=Path, default=Path(".local/chaos"),
                        help="work directory, emptied first (broker data, DuckDB file, logs)")
    parser.add_argument("--bootstrap", default="",
                        help="use this external broker (no broker restart) instead of a local one")
    args = parser.parse_args(argv)

    workdir: Path = args.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
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
    try:
        result = run_chaos(
            bootstrap, broker, workdir / "run", events=args.events, profiles=args.profiles,
            partitions=args.partitions, consumers=args.consumers, kills=args.kills,
            poison_rate=args.poison_rate, seed=args.seed, produce_seconds=args.produce_seconds,
        )
    finally:
        if broker is not None:
            broker.stop()
    print(result.details(), file=sys.stderr, flush=True)
    print(result.line(), flush=True)
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
