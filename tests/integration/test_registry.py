"""The Confluent wire format against a real Schema Registry (Apicurio Registry, ccompat API):
register the schema, produce the seed sample in the registry's wire format, consume it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Consumer, Message

from consumer.decode.decoder import WIRE_HEADER, UnknownSchemaId
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.registry import SchemaRegistry
from consumer.ops.sample import expected_current, value_subject
from schemas import audit_schema
from tests.integration.harness import (
    Event,
    cli_env,
    ledger,
    produce_raw,
    read_current,
    run_cli,
    start_cli,
)
from tests.warehouse.fakesnow_process import free_port
from tools.localkafka import create_topic

# One worker under xdist: the registry JVM starts once, not on every worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("registry")]

UNKNOWN_SCHEMA_ID = 2_000_000_000


def registry_env(
    bootstrap: str, topic: str, db: Path, registry_url: str
) -> dict[str, str]:
    return cli_env(
        bootstrap, topic, db, f"g-{topic}",
        KYC_SYNC_DECODING__FORMAT="confluent",
        KYC_SYNC_DECODING__SCHEMA_REGISTRY_URL=registry_url,
        KYC_SYNC_METRICS__PORT="0",
    )


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30
               ) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def headers(msg: Message) -> dict[str, str]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in items}


def test_register_and_fetch_the_packaged_schema(schema_registry_url: str) -> None:
    registry = SchemaRegistry(schema_registry_url)
    subject = value_subject(f"test-{uuid.uuid4().hex[:12]}")

    schema_id = registry.register(subject, audit_schema())

    assert registry.schema(schema_id) == audit_schema()
    assert registry.register(subject, audit_schema()) == schema_id  # same schema, same id
    with pytest.raises(UnknownSchemaId):
        registry.schema(UNKNOWN_SCHEMA_ID)


def test_seed_sample_in_the_registry_wire_format(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    db = tmp_path / "kyc.duckdb"
    env = registry_env(kafka_bootstrap, topic_name, db, schema_registry_url)

    produced = run_cli(env, "produce-sample", "--partitions", "3", "--seed", "7")

    assert produced.returncode == 0, produced.stderr
    schema_id = SchemaRegistry(schema_registry_url).register(
        value_subject(topic_name), audit_schema()
    )
    assert f"schema id {schema_id}" in produced.stdout
    messages = read_topic(kafka_bootstrap, topic_name, 8)
    assert len(messages) == 8
    assert all(WIRE_HEADER.unpack_from(m.value() or b"") == (0, schema_id) for m in messages)

    done = run_cli(env, "--log-format", "json", "run", "--until-caught-up")

    assert done.returncode == 0, done.stderr
    table = read_current(db)
    assert sorted(table) == [1, 2, 3]
    logged = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    flushes = [entry["flush"] for entry in logged if "flush" in entry]
    assert flushes
    assert sum(f["events"] for f in flushes) == 8
    assert {"batch_id", "keys", "inserted", "updated", "deleted", "stale", "offsets",
            "decode_s", "write_s", "total_s"} <= flushes[0].keys()
    assert table == {
        k: (e["goldtier_id"], int(e["op_time"].timestamp() * 1_000_000))
        for k, e in expected_current().items()
    }
    assert sum(b["events_in"] for b in ledger(db)) == 8
    assert sum(b["invalid_events"] for b in ledger(db)) == 0


def test_unknown_schema_id_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    schema_id = SchemaRegistry(schema_registry_url).register(
        value_subject(topic_name), audit_schema()
    )
    good = AuditEncoder(audit_schema(), schema_id)
    event = Event(5, "INSERT", 1_700_000_000_000_000, "GT-5", 0)
    body = good.encode(event.record())
    unknown = WIRE_HEADER.pack(0, UNKNOWN_SCHEMA_ID) + body[WIRE_HEADER.size:]
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(5), body, 0),
        (message_key(6), unknown, 0),
    ])

    done = run_cli(
        registry_env(kafka_bootstrap, topic_name, db, schema_registry_url),
        "run", "--until-caught-up",
    )

    assert done.returncode == 0, done.stderr
    assert read_current(db) == {5: ("GT-5", event.op_time)}
    dead = read_topic(kafka_bootstrap, f"{topic_name}.dlq", 1)
    assert len(dead) == 1
    assert (dead[0].key(), dead[0].value()) == (message_key(6), unknown)
    meta = headers(dead[0])
    assert meta["kyc_sync.error_class"] == "schema"
    assert f"unknown schema id {UNKNOWN_SCHEMA_ID}" in meta["kyc_sync.reason"]
    assert sum(b["invalid_events"] for b in ledger(db)) == 1


class Forwarder:
    """A TCP forwarder to the registry that can be switched on later: until ``start``, its port
    refuses connections (the registry is down for kyc-sync)."""

    def __init__(self, target: str) -> None:
        parsed = urlsplit(target)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.path = parsed.path
        self.port = free_port()
        self.server: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def test_registry_down_means_wait_and_never_dead_letter(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    schema_id = SchemaRegistry(schema_registry_url).register(
        value_subject(topic_name), audit_schema()
    )
    encoder = AuditEncoder(audit_schema(), schema_id)
    events = [Event(k, "INSERT", 1_700_000_000_000_000 + k, f"GT-{k}", 0) for k in (1, 2, 3)]
    produce_raw(kafka_bootstrap, topic_name,
                [(message_key(e.kyc_profile_id), encoder.encode(e.record()), 0) for e in events])
    forwarder = Forwarder(schema_registry_url)
    env = registry_env(kafka_bootstrap, topic_name, db, forwarder.url)
    log = tmp_path / "run.log"
    proc = start_cli(env, "run", "--until-caught-up", log=log)
    try:
        deadline = time.monotonic() + 60
        while "schema registry unreachable" not in log.read_text() or log.read_text().count(
            "re-reading") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert read_topic(kafka_bootstrap, f"{topic_name}.dlq", 1, timeout_s=3) == []
        forwarder.start()  # the registry is back
        assert proc.wait(90) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        forwarder.stop()
    assert read_current(db) == {e.kyc_profile_id: (e.goldtier_id, e.op_time) for e in events}
    assert read_topic(kafka_bootstrap, f"{topic_name}.dlq", 1, timeout_s=3) == []
