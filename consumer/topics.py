"""Topic administration: create the audit and dead-letter topics if missing."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.client import common_config
from consumer.settings import KafkaSettings


def ensure_topic(
    kafka: KafkaSettings, name: str, partitions: int, replication: int = 1, timeout_s: float = 30
) -> bool:
    """Create ``name`` unless it exists. Returns True when it was created."""
    admin = AdminClient(common_config(kafka))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=timeout_s,
    )
    try:
        futures[name].result(timeout=timeout_s)
    except KafkaException as err:
        if err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    return True
