"""The edges a deployment meets first, on the real broker through the real CLI: the sample
producer's checks, the dead-letter topic's settings, an unreachable broker, a hung loop's
health, a warehouse that does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.harness import cli_env, run_cli
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration


def log_ends(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "log-ends"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partitions)]
    finally:
        consumer.close()


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- produce-sample ---------------------------------------------------------------------------


def test_sample_refuses_partitions_the_topic_does_not_have(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", "g")

    result = run_cli(env, "produce-sample", "--partitions", "50")

    assert result.returncode == 1
    assert result.stdout == ""
    assert stderr_lines(result.stderr) == [
        f"kyc-sync: topic '{topic_name}' has 3 partition(s), --partitions 50 asks for more: "
        "use --partitions 3 or fewer"
    ]
    assert log_ends(kafka_bootstrap, topic_name, 3) == [0, 0, 0]


def test_sample_refuses_a_missing_topic(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", "g")

    result = run_cli(env, "produce-sample", "--partitions", "1")

    assert result.returncode == 1
    assert stderr_lines(result.stderr) == [
        f"kyc-sync: topic '{topic_name}' does not exist: add --create-topic"
    ]


def test_sample_reports_events_the_broker_refused(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    # Every sample event is larger than this topic accepts: each delivery report is an error.
    create_topic(kafka_bootstrap, topic_name, partitions=2, config={"max.message.bytes": "100"})
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", "g")

    result = run_cli(env, "produce-sample", "--partitions", "2")

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kyc-sync: 8 of 8 sample events were not delivered: ")
    assert "too large" in lines[0].lower()
    assert "produced" not in result.stdout
