"""Kafka client configuration and construction, from settings."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from consumer.settings import KafkaSettings
from consumer.source.kafka_log import kafka_logger


def common_config(kafka: KafkaSettings) -> dict[str, Any]:
    """What every client shares: the brokers, security, and the log (``kafka_log``)."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        "logger": kafka_logger(),
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        config["sasl.username"] = kafka.sasl_username
        config["sasl.password"] = kafka.sasl_password.get_secret_value()
    return config


FETCH_QUEUE_BACKOFF_MS = 10
QUEUED_MIN_MESSAGES = 20_000
"""Consumer fetch defaults (``consumer_config``); ``kafka.client_options`` overrides them."""


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Consumer options: offsets are committed by kyc-sync only, after the warehouse commit."""
    config = common_config(kafka)
    config.update(
        {
            "group.id": kafka.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.partition.eof": True,
            # A corrupt message set is reported (and stops the run) rather than decoded.
            "check.crcs": True,
            # librdkafka stops fetching a partition whose queue holds queued.min.messages and
            # looks again fetch.queue.backoff.ms later (1 s by default): that pause, not the
            # network or the broker, capped a consumer at ~150k messages/s here, idle half the
            # time. Looking again soon, with a shorter queue (fewer messages, less memory, each
            # refilled sooner), keeps messages flowing: 514k/s raw, 66 MiB instead of 97 MiB.
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "queued.min.messages": QUEUED_MIN_MESSAGES,
        }
    )
    config.update(kafka.client_options)
    return config


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Producer options (dead-letter topic, sample data): idempotent, acks from all replicas."""
    config = common_config(kafka)
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 20})
    config.update(_shared_client_options(kafka))
    return config


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Admin client options (topic checks): the connection and security options of the others,
    so that e.g. ``ssl.ca.location`` in ``client_options`` reaches the pre-flight check too."""
    config = common_config(kafka)
    config.update(_shared_client_options(kafka))
    return config


CONSUMER_ONLY_OPTIONS = frozenset(
    {"auto.offset.reset", "partition.assignment.strategy", "enable.partition.eof",
     "session.timeout.ms", "max.poll.interval.ms", "fetch.min.bytes", "fetch.wait.max.ms",
     "heartbeat.interval.ms", "group.instance.id", "queued.min.messages", "fetch.max.bytes",
     "max.partition.fetch.bytes", "fetch.queue.backoff.ms", "queued.max.messages.kbytes"}
)


def _shared_client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """``client_options`` without the consumer-only ones (producer and admin clients)."""
    return {k: v for k, v in kafka.client_options.items() if k not in CONSUMER_ONLY_OPTIONS}


def new_consumer(kafka: KafkaSettings, **callbacks: Any) -> Consumer:
    return Consumer({**consumer_config(kafka), **callbacks})


def new_producer(kafka: KafkaSettings, max_message_bytes: int | None = None) -> Producer:
    """A producer; ``max_message_bytes``: its ``message.max.bytes`` (the largest record it
    sends, sized to the destination topic's limit)."""
    config = producer_config(kafka)
    if max_message_bytes is not None:
        config["message.max.bytes"] = max_message_bytes
    return Producer(config)
