"""The edges a deployment meets first, on the real broker through the real CLI: the sample
producer's checks, the dead-letter topic's settings, an unreachable broker, a hung loop's
health, a warehouse that does not answer."""

from __future__ import annotations

import json
import random
import signal
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from tests.integration.harness import cli_env, history, produce, run_cli, start_cli
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
    assert not any(line.startswith("%") for line in lines), result.stderr  # raw client lines
    [line] = [x for x in lines if x.startswith("kyc-sync: ")]
    assert line.startswith("kyc-sync: 8 of 8 sample events were not delivered: ")
    assert "too large" in line.lower()
    assert "produced" not in result.stdout


def test_sample_has_no_raw_client_lines(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", "g",
                  KYC_SYNC_LOG_FORMAT="json")

    result = run_cli(env, "produce-sample", "--partitions", "2")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"produced 8 sample events to {topic_name} (2 partitions)\n"
    for line in stderr_lines(result.stderr):
        json.loads(line)


# -- the dead-letter topic --------------------------------------------------------------------


def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: str(entry.value) for name, entry in entries.items()}


def replicas(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic=topic, timeout=30).topics[topic]
    return [len(p.replicas) for p in meta.partitions.values()]


def test_dead_letter_topic_is_created_with_its_settings(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
                  KYC_SYNC_KAFKA__DLQ_TOPIC_CONFIG=json.dumps(
                      {"retention.ms": "86400000", "max.message.bytes": "300000"}))

    done = run_cli(env, "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    dlq = f"{topic_name}.dlq"
    config = topic_config(kafka_bootstrap, dlq)
    assert (config["retention.ms"], config["max.message.bytes"]) == ("86400000", "300000")
    assert replicas(kafka_bootstrap, dlq) == [1, 1]  # the broker's default.replication.factor


def test_dead_letter_replication_factor_the_cluster_cannot_hold(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
                  KYC_SYNC_KAFKA__DLQ_REPLICATION_FACTOR="3")

    failed = run_cli(env, "run", "--until-caught-up")

    assert failed.returncode == 1
    [line] = [x for x in failed.stderr.splitlines() if "stopped" in x]
    assert f"stopped: cannot create topic '{topic_name}.dlq': " in line
    assert "replication factor" in line.lower()


def test_missing_dead_letter_topic_that_must_not_be_created(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
                  KYC_SYNC_KAFKA__CREATE_DLQ_TOPIC="false")

    failed = run_cli(env, "run", "--until-caught-up")

    assert failed.returncode == 1
    assert (f"stopped: dead-letter topic '{topic_name}.dlq' does not exist and "
            "kafka.create_dlq_topic is false: create it first") in failed.stderr


# -- an unreachable broker --------------------------------------------------------------------

UNREACHABLE = "127.0.0.1:1"


@pytest.mark.parametrize("command", [
    ("lag",), ("lag", "--members"), ("replay", "--to-latest"), ("replay", "--full-refresh"),
    ("verify",),
])
def test_questions_give_up_on_an_unreachable_broker_with_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = cli_env(UNREACHABLE, "audit", tmp_path / "kyc.duckdb", "g",
                  KYC_SYNC_KAFKA__REQUEST_TIMEOUT_S="5")

    started = time.monotonic()
    failed = run_cli(env, *command)
    elapsed = time.monotonic() - started

    assert failed.returncode == 1
    assert stderr_lines(failed.stderr) == [
        "kyc-sync: metadata of topic 'audit': KafkaError{code=_TRANSPORT,val=-195,"
        'str="Failed to get metadata: Local: Broker transport failure"}'
    ]
    assert elapsed < 30  # the default request timeout alone is 30 s; start-up varies with load


def test_check_gives_up_on_an_unreachable_broker_with_its_freshness_line(
    tmp_path: Path
) -> None:
    env = cli_env(UNREACHABLE, "audit", tmp_path / "kyc.duckdb", "g",
                  KYC_SYNC_KAFKA__REQUEST_TIMEOUT_S="5")

    started = time.monotonic()
    failed = run_cli(env, "check")
    elapsed = time.monotonic() - started

    assert failed.returncode == 1
    assert stderr_lines(failed.stderr) == []
    assert ("FAIL freshness: cannot read the group's lag from Kafka: metadata of topic 'audit': "
            "KafkaError{code=_TRANSPORT,") in failed.stdout
    assert elapsed < 30  # the default request timeout alone is 30 s; start-up varies with load


def test_run_waits_for_an_unreachable_broker_with_one_warning_per_interval(
    tmp_path: Path
) -> None:
    env = cli_env(UNREACHABLE, "audit", tmp_path / "kyc.duckdb", "g",
                  KYC_SYNC_LOG_FORMAT="json")
    log = tmp_path / "run.log"
    proc = start_cli(env, "run", log=log)
    # From the first warning, not from the spawn: a start-up on a loaded machine takes seconds.
    wait_for_line(log, "waiting for Kafka")
    time.sleep(12)  # one more interval (10 s)
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=30) == 0, log.read_text()
    entries = [json.loads(line) for line in stderr_lines(log.read_text())]  # every line JSON
    waiting = [e for e in entries if e["message"].startswith("waiting for Kafka")]
    assert 2 <= len(waiting) <= 3
    assert all(e["level"] == "WARNING" for e in waiting)
    client = [e for e in entries if e["logger"] == "kyc_sync.kafka"]
    assert len(client) <= 10  # librdkafka's connection failures, rate-limited
    assert entries[-1]["message"] == "stopped while waiting for Kafka"


# -- /healthz of a hung loop ------------------------------------------------------------------


def wait_for_line(path: Path, text: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines() if path.exists() else []:
            if text in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path}")


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_healthz_answers_503_while_the_loop_hangs(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """The warehouse hangs 40 s inside the first flush; /healthz turns 503 once the loop has
    not polled for max.poll.interval.ms (8 s here)."""
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    produce(kafka_bootstrap, topic_name, history(random.Random(13), 20, 5, 1))
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
                  KYC_SYNC_FAULTS__WAREHOUSE="stall", KYC_SYNC_FAULTS__STALL_S="40",
                  KYC_SYNC_KAFKA__CLIENT_OPTIONS=json.dumps(
                      {"max.poll.interval.ms": 8000, "session.timeout.ms": 6000}))
    log = tmp_path / "run.log"
    proc = start_cli(env, "run", log=log)
    try:
        line = wait_for_line(log, "metrics on http://")
        url = line.split("metrics on ", 1)[1].split("/metrics", 1)[0] + "/healthz"
        assert health(url) == 200
        codes = []
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and 503 not in codes:
            codes.append(health(url))
            time.sleep(0.5)
        assert codes[0] == 200
        assert codes[-1] == 503, log.read_text()
        assert "flush" not in log.read_text().split("assigned partitions", 1)[1]
    finally:
        proc.kill()
        proc.wait(timeout=30)


# -- a warehouse that does not answer ---------------------------------------------------------


def test_lag_reports_kafka_when_snowflake_does_not_answer(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    produce(kafka_bootstrap, topic_name, history(random.Random(14), 10, 5, 1))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = cli_env(
            kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", f"g-{topic_name}",
            KYC_SYNC_WAREHOUSE__KIND="snowflake", KYC_SYNC_WAREHOUSE__READ_TIMEOUT_S="3",
            KYC_SYNC_SNOWFLAKE__ACCOUNT="acct", KYC_SYNC_SNOWFLAKE__USER="kyc",
            KYC_SYNC_SNOWFLAKE__PASSWORD="secret", KYC_SYNC_SNOWFLAKE__DATABASE="KYC",
            KYC_SYNC_SNOWFLAKE__HOST="127.0.0.1",
            KYC_SYNC_SNOWFLAKE__PORT=str(silent.getsockname()[1]),
            KYC_SYNC_SNOWFLAKE__PROTOCOL="http",
        )
        started = time.monotonic()
        result = run_cli(env, "lag", "--json")
        elapsed = time.monotonic() - started

    report = json.loads(result.stdout)
    assert report["total_lag"] == 10
    assert report["ledger_error"] == "the warehouse did not answer within 3s"
    assert elapsed < 30


# -- files of profile data are private --------------------------------------------------------


def test_the_database_of_a_run_is_readable_by_its_owner_only(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    produce(kafka_bootstrap, topic_name, history(random.Random(15), 10, 5, 1))
    db = tmp_path / "data" / "kyc.duckdb"
    db.parent.mkdir()
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}")

    done = run_cli(env, "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    made = [p for p in db.parent.iterdir() if p.name.startswith("kyc.duckdb")]
    assert made
    for path in made:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


# -- lag flags partitions the group never committed -------------------------------------------


def test_lag_flags_partitions_without_a_committed_offset(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    produce(kafka_bootstrap, topic_name, history(random.Random(16), 60, 30, 2))  # 0 and 1
    group = f"g-{topic_name}"
    env = cli_env(kafka_bootstrap, topic_name, tmp_path / "kyc.duckdb", group,
                  KYC_SYNC_REPLAY__BACKUP_DIR=str(tmp_path))  # its undo file
    moved = run_cli(env, "replay", "--to-latest", "--partitions", "0", "--execute")
    assert moved.returncode == 0, moved.stderr

    result = run_cli(env, "lag", "--json")

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    [problem] = report["problems"]
    assert problem.startswith("partition 1: no committed offset, ")
    assert problem.endswith(f" message(s) never read by group {group}")
    assert [p["committed"] for p in report["partitions"]][1:] == [None, None]  # 2 is empty
