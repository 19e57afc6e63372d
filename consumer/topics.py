"""Topic administration: check the audit topic, create the dead-letter topic if missing."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.client import common_config
from consumer.settings import KafkaSettings


class TopicError(Exception):
    """A topic is missing or cannot be created."""


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(common_config(kafka))


def partition_count(admin: AdminClient, name: str, timeout_s: float = 30) -> int | None:
    """Partitions of ``name``, or None when the topic does not exist."""
    meta = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


def ensure_topic(
    kafka: KafkaSettings, name: str, partitions: int, replication: int = 1, timeout_s: float = 30
) -> bool:
    """Create ``name`` unless it exists. Returns True when it was created."""
    admin = admin_client(kafka)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=timeout_s,
    )
    failure = futures[name].exception(timeout_s)
    if failure is None:
        return True
    error = failure.args[0] if failure.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
        return False
    raise TopicError(f"cannot create topic {name!r}: {failure}")


def preflight(kafka: KafkaSettings, dead_letters: bool) -> int:
    """Check the audit topic exists; create the dead-letter topic if asked. Returns partitions."""
    admin = admin_client(kafka)
    try:
        partitions = partition_count(admin, kafka.topic)
    except KafkaException as err:
        raise TopicError(f"cannot read metadata of topic {kafka.topic!r}: {err}") from err
    if partitions is None:
        raise TopicError(f"topic {kafka.topic!r} does not exist")
    if dead_letters and kafka.create_dlq_topic:
        ensure_topic(kafka, kafka.dead_letter_topic, partitions)
    return partitions
