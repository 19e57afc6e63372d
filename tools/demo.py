"""``make demo``: the main job end to end on the embedded default.

Starts a local Kafka broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates ``kyc_profile_audit``,
produces the seed's sample audit trail shuffled across partitions, runs ``kyc-sync run
--until-caught-up`` with a 2-second window into a DuckDB file, and prints ``kyc_profile_current``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack

from tools.localkafka import REPO_ROOT, LocalKafka, create_topic

DEMO_DIR = REPO_ROOT / ".local" / "demo"
TOPIC = "kyc_profile_audit"
PARTITIONS = 3


def kyc_sync(env: dict[str, str], *args: str) -> None:
    command = [sys.executable, "-m", "consumer.cli", *args]
    print(f"\n$ kyc-sync {' '.join(args)}", flush=True)
    subprocess.run(command, env=env, check=True)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True, mode=0o700)  # profile data and offsets: owner only
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = stack.enter_context(LocalKafka(work_dir=DEMO_DIR / "kafka"))
            bootstrap = broker.bootstrap
            print(f"local Kafka broker on {bootstrap} (started in {broker.startup_seconds:.1f}s)")
        create_topic(bootstrap, TOPIC, partitions=PARTITIONS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
        env.update(
            KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
            KYC_SYNC_KAFKA__TOPIC=TOPIC,
            KYC_SYNC_KAFKA__GROUP_ID=f"kyc-sync-demo-{int(time.time())}",
            KYC_SYNC_DUCKDB__PATH=str(DEMO_DIR / "kyc.duckdb"),
            KYC_SYNC_WINDOW__SECONDS="2",
        )
        kyc_sync(env, "produce-sample", "--partitions", str(PARTITIONS))
        kyc_sync(env, "run", "--until-caught-up")
        kyc_sync(env, "show")
    print("\nExpected: profiles 1, 2 and 3 with the values of their latest event; 4 was deleted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
