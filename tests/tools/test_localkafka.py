"""Tests for the local Kafka launcher: pure helpers first, then the real broker."""

from __future__ import annotations

import socket
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tools import localkafka
from tools.localkafka import (
    TEST_JVM_OPTS,
    BrokerStartError,
    ExtraListener,
    KafkaJarsError,
    LocalKafka,
    choose_broker,
    create_topic,
    ensure_jars,
    new_cluster_id,
    render_properties,
)

# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "local"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}, "external"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KYC_SYNC_TEST_KAFKA": "testcontainers"},
            "external",
        ),
        ({"KAFKA_BOOTSTRAP_SERVERS": ""}, "local"),
        ({"KYC_SYNC_TEST_KAFKA": "testcontainers"}, "testcontainers"),
        ({"KYC_SYNC_TEST_KAFKA": "local"}, "local"),
    ],
)
def test_choose_broker(env: dict[str, str], expected: str) -> None:
    assert choose_broker(env) == expected


def test_new_cluster_id_is_22_url_safe_chars() -> None:
    allowed = set(string.ascii_letters + string.digits + "-_")
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22
        assert set(cluster_id) <= allowed
        assert not cluster_id.startswith("-")


def test_new_cluster_id_regenerates_leading_dash() -> None:
    draws = iter([b"\xf8" + bytes(15), bytes(16)])  # 0xf8 encodes to a leading "-"
    assert new_cluster_id(lambda n: next(draws)) == "A" * 22


def test_render_properties_escapes_backslashes_and_newlines() -> None:
    text = render_properties({"a.b": "1", "path": "C:\\x", "multi": "x\ny"})
    assert text == "a.b=1\npath=C:\\\\x\nmulti=x\\ny\n"


def broker(
    tmp_path: Path,
    extra_listeners: list[ExtraListener] | None = None,
    extra_properties: dict[str, str] | None = None,
) -> LocalKafka:
    return LocalKafka(
        work_dir=tmp_path,
        port=19092,
        controller_port=19093,
        extra_listeners=extra_listeners or [],
        extra_properties=extra_properties or {},
    )


def test_server_properties_kraft_combined(tmp_path: Path) -> None:
    props = broker(tmp_path).server_properties()
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path.resolve() / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_server_properties_extra_listener_and_overrides(tmp_path: Path) -> None:
    kafka = broker(
        tmp_path,
        extra_listeners=[ExtraListener("SASL", "SASL_PLAINTEXT", 19094)],
        extra_properties={"num.partitions": "3", "sasl.enabled.mechanisms": "SCRAM-SHA-256"},
    )
    props = kafka.server_properties()
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,SASL://127.0.0.1:19094"
    )
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092,SASL://127.0.0.1:19094"
    assert props["listener.security.protocol.map"].endswith(",SASL:SASL_PLAINTEXT")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["num.partitions"] == "3"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256"
    assert kafka.listener_bootstrap("SASL") == "127.0.0.1:19094"


def test_reserved_listener_name_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        LocalKafka(work_dir=tmp_path, extra_listeners=[ExtraListener("controller", "SSL")])


def test_assign_ports_picks_distinct_ports_once(tmp_path: Path) -> None:
    kafka = LocalKafka(work_dir=tmp_path, extra_listeners=[ExtraListener("SASL", "SASL_PLAINTEXT")])
    with pytest.raises(BrokerStartError):
        _ = kafka.bootstrap
    kafka.assign_ports()
    ports = (kafka.port, kafka.controller_port, kafka.extra_listeners[0].port)
    assert all(ports)
    assert len(set(ports)) == 3
    kafka.assign_ports()
    assert (kafka.port, kafka.controller_port, kafka.extra_listeners[0].port) == ports
    assert kafka.bootstrap == f"127.0.0.1:{ports[0]}"


def test_java_command_uses_lib_classpath(tmp_path: Path) -> None:
    kafka = broker(tmp_path)
    cmd = kafka.java_command("kafka.Kafka", "server.properties")
    assert cmd[cmd.index("-cp") + 1] == str(localkafka.LIB_DIR / "*")
    assert cmd[-2:] == ["kafka.Kafka", "server.properties"]
    assert "-Xmx1g" in cmd
    assert f"-Dlog4j2.configurationFile={kafka.log4j_path}" in cmd


def test_log_tail(tmp_path: Path) -> None:
    kafka = broker(tmp_path)
    assert kafka.log_tail() == ""
    kafka.log_path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert kafka.log_tail(3) == "line 97\nline 98\nline 99\n"


def test_stop_is_idempotent_without_start(tmp_path: Path) -> None:
    kafka = broker(tmp_path)
    kafka.stop()
    kafka.stop()
    assert not kafka.running


def test_ensure_jars_missing_is_a_clear_error(tmp_path: Path) -> None:
    ensure_jars()  # the real lib dir is populated
    with pytest.raises(KafkaJarsError, match="no Kafka jars"):
        ensure_jars(tmp_path)


def test_cli_status_and_stop_without_broker(tmp_path: Path) -> None:
    assert localkafka.main(["status", "--dir", str(tmp_path)]) == 1
    assert localkafka.main(["stop", "--dir", str(tmp_path)]) == 0


# --------------------------------------------------------------------------- integration


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=value)
    assert producer.flush(30) == 0


def consume(
    bootstrap: str, topic: str, count: int, group: str, timeout: float = 30.0
) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert isinstance(value, bytes)
            values.append(value)
        if values:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values


@pytest.mark.integration
def test_produce_and_consume_roundtrip(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    create_topic(kafka_bootstrap, topic_name, partitions=3)  # idempotent
    sent = [f"message-{i}".encode() for i in range(10)]
    produce(kafka_bootstrap, topic_name, sent)

    received = consume(kafka_bootstrap, topic_name, len(sent), group=f"{topic_name}-g")

    assert sorted(received) == sorted(sent)


@contextmanager
def restartable_broker(local_kafka: LocalKafka | None, tmp_path: Path) -> Iterator[LocalKafka]:
    """The session broker when it is local (left running), else a private one."""
    if local_kafka is not None:
        yield local_kafka
        assert local_kafka.running
        return
    with LocalKafka(work_dir=tmp_path / "kafka", jvm_opts=TEST_JVM_OPTS) as private:
        yield private


@pytest.mark.integration
def test_restart_keeps_data_and_offsets(
    local_kafka: LocalKafka | None, tmp_path: Path, topic_name: str
) -> None:
    with restartable_broker(local_kafka, tmp_path) as kafka:
        bootstrap = kafka.bootstrap
        create_topic(bootstrap, topic_name, partitions=3)
        sent = [f"before-restart-{i}".encode() for i in range(10)]
        produce(bootstrap, topic_name, sent)
        group = f"{topic_name}-g"
        assert sorted(consume(bootstrap, topic_name, 10, group)) == sorted(sent)

        kafka.restart()

        assert kafka.bootstrap == bootstrap
        assert sorted(consume(bootstrap, topic_name, 10, f"{topic_name}-fresh")) == sorted(sent)
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            committed = probe.committed([TopicPartition(topic_name, p) for p in range(3)], 30)
        finally:
            probe.close()
        assert sum(tp.offset for tp in committed) == 10


@pytest.mark.integration
def test_start_failure_raises_with_broker_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        kafka = LocalKafka(work_dir=tmp_path, port=blocker.getsockname()[1], startup_timeout=60,
                           jvm_opts=TEST_JVM_OPTS)
        with pytest.raises(BrokerStartError, match="exited with code") as excinfo:
            kafka.start()
    assert "Address already in use" in str(excinfo.value)
    assert not kafka.running
