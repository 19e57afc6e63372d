"""An instance to kill mid-transaction: a Snowflake writer that stops between its MERGE and its
COMMIT, holding the state table's lock, until the test SIGKILLs it.

    python -m tests.warehouse.killed_writer HOST PORT DATABASE KEY...

applies one batch that writes each KEY with an ``op_time`` far in the future (``FUTURE_US``),
prints ``HOLDING`` once its MERGE ran, and sleeps. If that transaction ever committed, the
guard would keep those future rows forever: a test that finds them knows the dead transaction
was not rolled back.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from tests.warehouse.test_contract import Event, fakesnow_config, make_batch, names_in
from warehouse.faults import FaultPlan
from warehouse.snowflake_writer import SnowflakeWarehouse

HOLDING = "HOLDING"
FUTURE_US = 4_102_444_800_000_000  # 2100-01-01T00:00:00Z


class HoldAfterMerge(FaultPlan):
    """The fault hook, turned into a wait: the transaction stays open after the MERGE."""

    def __call__(self, point: str) -> None:
        print(HOLDING, point, flush=True)
        time.sleep(3600)


def main(argv: Sequence[str]) -> int:
    host, port, database, *keys = argv
    config = fakesnow_config(host, int(port), database)
    writer = SnowflakeWarehouse(
        config, names_in(config.database, config.schema_name, upper=True), HoldAfterMerge()
    )
    writer.open()
    writer.apply(make_batch([Event(int(k), FUTURE_US, 0, i) for i, k in enumerate(keys)]))
    return 1  # never reached: the hook holds until the process is killed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
