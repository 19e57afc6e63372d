"""The chaos test of the reliability issue: 200 000 events, 6 partitions, 20 000 profiles, three
``kyc-sync run`` processes in one group writing one DuckDB file, ≥ 20 SIGKILLs, one broker restart,
injected transient warehouse faults — and afterwards the table equals the oracle, every poison
event is dead-lettered, nothing is lost or stale. ``make chaos`` runs the same scenario alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.driver import run_chaos
from tools.localkafka import LocalKafka

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_chaos(kafka_bootstrap: str, local_kafka: LocalKafka | None, tmp_path: Path) -> None:
    result = run_chaos(
        kafka_bootstrap, local_kafka, tmp_path, events=200_000, profiles=20_000, partitions=6,
        consumers=3, kills=20, poison_rate=0.01,
    )

    print(result.details())
    print(result.line())
    assert not result.crashes, result.details()
    assert not result.hangs, result.details()
    assert result.final_exit == 0, result.details()
    assert result.events >= 200_000
    assert result.kills >= 20
    assert result.broker_restarts == (1 if local_kafka is not None else 0)
    assert result.warehouse_faults >= 3, result.details()
    assert (result.lost, result.stale, result.diff) == (0, 0, 0), result.details()
    assert (result.resurrected, result.ahead) == (0, 0), result.details()
    assert result.dlq == result.poison > 0, result.details()
    assert result.dlq_unexpected == 0, result.details()
    assert result.uncommitted == 0, result.details()
    assert result.unreported == 0, result.details()
    assert result.clean, result.details()
