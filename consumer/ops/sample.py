"""The seed's sample audit trail, produced in a shuffled order across partitions.

| kyc_profile_id | op_type | op_time | result |
| 1 | INSERT 10:00, UPDATE 11:30, UPDATE 14:15 | latest -> synced |
| 2 | INSERT 09:30, UPDATE 12:45               | latest -> synced |
| 3 | INSERT 08:00                             | latest -> synced |
| 4 | INSERT 07:00, DELETE 13:00               | deleted -> absent |
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.registry import SchemaRegistry
from consumer.settings import Settings
from schemas.errors import TerminalError

DAY = datetime(2024, 1, 15, tzinfo=UTC)


def _at(hh_mm: str) -> datetime:
    hours, minutes = (int(x) for x in hh_mm.split(":"))
    return DAY.replace(hour=hours, minute=minutes)


def _event(profile: int, op: str, hh_mm: str, version: int, created: str) -> dict[str, Any]:
    return {
        "kyc_profile_id": profile,
        "goldtier_id": f"GT-{profile:04d}-v{version}",
        "cid": f"CID-{profile:06d}",
        "party_id": f"PARTY-{profile:06d}-v{version}",
        "created_date": _at(created),
        "updated_date": _at(hh_mm),
        "op_type": op,
        "op_time": _at(hh_mm),
    }


def seed_events() -> list[dict[str, Any]]:
    """The eight events of the seed scenario, in op_time order per profile."""
    return [
        _event(1, "INSERT", "10:00", 1, "10:00"),
        _event(1, "UPDATE", "11:30", 2, "10:00"),
        _event(1, "UPDATE", "14:15", 3, "10:00"),
        _event(2, "INSERT", "09:30", 1, "09:30"),
        _event(2, "UPDATE", "12:45", 2, "09:30"),
        _event(3, "INSERT", "08:00", 1, "08:00"),
        _event(4, "INSERT", "07:00", 1, "07:00"),
        _event(4, "DELETE", "13:00", 2, "07:00"),
    ]


def expected_current() -> dict[int, dict[str, Any]]:
    """kyc_profile_current after the seed scenario: the latest event of each live profile."""
    latest: dict[int, dict[str, Any]] = {}
    for event in seed_events():
        known = latest.get(event["kyc_profile_id"])
        if known is None or event["op_time"] > known["op_time"]:
            latest[event["kyc_profile_id"]] = event
    return {k: v for k, v in latest.items() if v["op_type"] != "DELETE"}


class SampleError(TerminalError):
    """The sample could not be produced as asked."""


def check_partitions(topic: str, asked: int, available: int | None) -> None:
    """Refuse to spread the sample over partitions the topic does not have: the broker would
    reject those events (``None``: the topic does not exist)."""
    if available is None:
        raise SampleError(f"topic {topic!r} does not exist: add --create-topic")
    if asked > available:
        raise SampleError(
            f"topic {topic!r} has {available} partition(s), --partitions {asked} asks for more: "
            f"use --partitions {available} or fewer"
        )


def produce_sample(
    producer: Producer, topic: str, encoder: AuditEncoder, partitions: int, seed: int | None = None
) -> int:
    """Produce the seed events shuffled, each to a random partition, so that neither arrival
    order nor partition decides the result — op_time does. Returns the number produced; raises
    ``SampleError`` unless every event's delivery report is a success."""
    rng = random.Random(seed)
    events = seed_events()
    rng.shuffle(events)
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    for event in events:
        producer.produce(
            topic,
            key=message_key(event["kyc_profile_id"]),
            value=encoder.encode(event),
            partition=rng.randrange(partitions),
            on_delivery=delivered,
        )
    remaining = producer.flush(30)
    if remaining:
        raise SampleError(f"{remaining} of {len(events)} sample events were not acknowledged "
                          "within 30s")
    if failures:
        raise SampleError(f"{len(failures)} of {len(events)} sample events were not delivered: "
                          f"{failures[0]}")
    return len(events)


def value_subject(topic: str) -> str:
    """The registry subject of the topic's values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def sample_encoder(
    settings: Settings, schema: Mapping[str, Any], registry: SchemaRegistry | None = None
) -> AuditEncoder:
    """How the sample producer encodes: schemaless Avro, or with ``decoding.format=confluent``
    the registry's wire format, ``schema`` registered under ``<topic>-value`` first (an
    identical schema keeps its id). Raises ``OSError`` when the registry refuses or is down."""
    decoding = settings.decoding
    if decoding.format != "confluent":
        return AuditEncoder(schema)
    if registry is None:
        raise ValueError("decoding.format confluent needs the registry client")
    return AuditEncoder(schema, registry.register(value_subject(settings.kafka.topic), schema))
