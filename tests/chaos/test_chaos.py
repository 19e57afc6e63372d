"""The chaos test of the reliability issue: 6 partitions, three ``kyc-sync run`` processes in one
group writing one DuckDB file, ≥ 20 SIGKILLs, one broker restart, injected transient warehouse
faults, profile history on — and afterwards the table equals the oracle, the history table equals
the history oracle, every poison event is dead-lettered, nothing is lost or stale.

``make chaos`` runs it alone with 200 000 events over 20 000 profiles; the suite with half of
that (``SUITE_EVENTS``): the same kills, broker restart, faults, poison and history, with half
the events to produce, apply and compare (the suite's other workers share the CPUs).

The Snowflake variant (``make chaos-snowflake``) is smaller: two consumers writing through the
real Snowflake connector to the Snowflake test double, SIGKILLed, with injected transient faults
and a writer killed mid-transaction whose detached transaction holds the state table's lock
until the double aborts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.driver import run_chaos, run_chaos_on_snowflake
from tools.localkafka import LocalKafka

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUITE_EVENTS = 100_000
SUITE_PROFILES = 10_000


def test_chaos(kafka_bootstrap: str, local_kafka: LocalKafka | None, tmp_path: Path) -> None:
    result = run_chaos(
        kafka_bootstrap, local_kafka, tmp_path, events=SUITE_EVENTS, profiles=SUITE_PROFILES,
        partitions=6, consumers=3, kills=20, poison_rate=0.01,
    )

    print(result.details())
    print(result.line())
    assert result.line().startswith("chaos: warehouse=duckdb ")
    assert not result.crashes, result.details()
    assert not result.hangs, result.details()
    assert result.final_exit == 0, result.details()
    assert result.events >= SUITE_EVENTS
    assert result.kills >= 20
    assert result.broker_restarts == (1 if local_kafka is not None else 0)
    assert result.warehouse_faults >= 3, result.details()
    assert (result.lost, result.stale, result.diff) == (0, 0, 0), result.details()
    assert result.history
    assert result.history_diff == 0, result.details()
    assert (result.resurrected, result.ahead) == (0, 0), result.details()
    assert result.dlq == result.poison > 0, result.details()
    assert result.dlq_unexpected == 0, result.details()
    assert result.uncommitted == 0, result.details()
    assert result.unreported == 0, result.details()
    assert result.clean, result.details()


def test_chaos_on_snowflake(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run_chaos_on_snowflake(kafka_bootstrap, tmp_path)

    print(result.details())
    print(result.line())
    assert result.line().startswith("chaos: warehouse=snowflake ")
    assert not result.crashes, result.details()
    assert not result.hangs, result.details()
    assert result.final_exit == 0, result.details()
    assert result.kills >= 3
    assert result.warehouse_faults >= 1, result.details()
    # The dead writer's transaction held the lock until the double aborted it, and nothing of
    # it was committed (its rows, dated 2100, would be ``ahead``).
    assert result.log_signs["detached_aborts"] >= 1, result.details()
    assert (result.lost, result.stale, result.diff) == (0, 0, 0), result.details()
    assert (result.resurrected, result.ahead) == (0, 0), result.details()
    assert result.dlq == result.poison > 0, result.details()
    assert result.dlq_unexpected == 0, result.details()
    assert result.uncommitted == 0, result.details()
    assert result.unreported == 0, result.details()
    assert result.clean, result.details()
