"""Kafka security settings on the real broker: a SASL_PLAINTEXT listener with SCRAM-SHA-512.

A broker of its own (not the session's): it has a second listener that requires a SCRAM login,
its user created when the storage is formatted. PLAINTEXT stays the inter-broker listener and is
what the tests use to create topics and read committed offsets. The broker is always a local
JVM (like the session's default one), whatever broker the other integration tests use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.ops.sample import expected_current
from tests.integration.harness import cli_env, committed, ledger, read_current, run_cli
from tools.localkafka import (
    TEST_JVM_OPTS,
    BrokerStartError,
    ExtraListener,
    LocalKafka,
    create_topic,
)

# One worker under xdist: the SCRAM broker starts once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("scram-broker")]

LISTENER = "SASL"
MECHANISM = "SCRAM-SHA-512"
USER = "kycsync"
PASSWORD = "scram-pass-4Kq9"  # a user of the throw-away test broker
WRONG_PASSWORD = "not-the-pass-7Vx2"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@pytest.fixture(scope="module")
def scram_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker with a PLAINTEXT listener and a SASL_PLAINTEXT (SCRAM-SHA-512) one."""
    broker = LocalKafka(
        work_dir=tmp_path_factory.mktemp("kafka-scram"),
        extra_listeners=[ExtraListener(LISTENER, "SASL_PLAINTEXT")],
        extra_properties={
            "sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.{LISTENER.lower()}.{MECHANISM.lower()}.sasl.jaas.config": SCRAM_LOGIN,
        },
        extra_format_args=["--add-scram", f"{MECHANISM}=[name={USER},password={PASSWORD}]"],
        jvm_opts=TEST_JVM_OPTS,
    )
    try:
        broker.start()
    except BrokerStartError as err:
        broker.stop()
        raise pytest.fail.Exception(f"SCRAM Kafka broker: {err}", pytrace=False) from None
    try:
        yield broker
    finally:
        broker.stop()


def scram_env(
    broker: LocalKafka, topic: str, db: Path, group: str, password: str
) -> dict[str, str]:
    """CLI environment that connects to the SCRAM listener with ``password``."""
    return cli_env(
        broker.listener_bootstrap(LISTENER), topic, db, group,
        KYC_SYNC_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KYC_SYNC_KAFKA__SASL_MECHANISM=MECHANISM,
        KYC_SYNC_KAFKA__SASL_USERNAME=USER,
        KYC_SYNC_KAFKA__SASL_PASSWORD=password,
        KYC_SYNC_METRICS__PORT="0",
    )


def test_run_over_scram_listener_applies_the_sample(
    scram_kafka: LocalKafka, topic_name: str, tmp_path: Path
) -> None:
    create_topic(scram_kafka.bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    env = scram_env(scram_kafka, topic_name, db, group, PASSWORD)
    produced = run_cli(env, "produce-sample", "--partitions", "1", timeout=60)
    assert produced.returncode == 0, produced.stderr

    done = run_cli(env, "run", "--until-caught-up", timeout=60)

    assert done.returncode == 0, done.stderr
    expected = {
        k: (e["goldtier_id"], int(e["op_time"].timestamp() * 1_000_000))
        for k, e in expected_current().items()
    }
    assert read_current(db) == expected
    assert sorted(read_current(db)) == [1, 2, 3]
    assert sum(r["events_in"] for r in ledger(db)) == 8
    assert committed(scram_kafka.bootstrap, group, topic_name, 1) == {0: 8}
    assert PASSWORD not in done.stdout + done.stderr


def test_wrong_password_fails_fast_and_cleanly(
    scram_kafka: LocalKafka, topic_name: str, tmp_path: Path
) -> None:
    create_topic(scram_kafka.bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    group = f"g-{topic_name}"
    seeded = run_cli(
        scram_env(scram_kafka, topic_name, tmp_path / "unused.duckdb", group, PASSWORD),
        "produce-sample", "--partitions", "1", timeout=60,
    )
    assert seeded.returncode == 0, seeded.stderr

    began = time.monotonic()
    failed = run_cli(
        scram_env(scram_kafka, topic_name, db, group, WRONG_PASSWORD),
        "run", "--until-caught-up", timeout=90,
    )
    elapsed = time.monotonic() - began

    assert failed.returncode == 1, failed.stderr
    assert elapsed < 60
    refused = [  # kyc-sync's line; the client's own (logger kyc_sync.kafka) may precede it
        line for line in failed.stderr.splitlines()
        if " ERROR kyc_sync " in line and "Authentication failed" in line
    ]
    assert len(refused) == 1, failed.stderr
    assert "kafka.sasl_username=kycsync" in refused[0]
    assert "Traceback" not in failed.stderr
    assert WRONG_PASSWORD not in failed.stdout + failed.stderr
    # Nothing written, nothing committed.
    assert not db.exists() or (read_current(db) == {} and ledger(db) == [])
    assert committed(scram_kafka.bootstrap, group, topic_name, 1) == {0: -1001}
