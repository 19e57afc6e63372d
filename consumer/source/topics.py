"""Topic administration: check the audit topic, create the dead-letter topic if missing."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.settings import KafkaSettings
from consumer.source.client import admin_config
from schemas.errors import TerminalError


class TopicError(TerminalError):
    """A topic is missing or cannot be created."""


class KafkaAuthError(TopicError):
    """The brokers refused the client (credentials, TLS handshake): no retry can help."""


def admin_client(kafka: KafkaSettings, errors: list[KafkaError] | None = None) -> AdminClient:
    """An admin client; with ``errors``, the client errors it reports are appended to it."""
    config = admin_config(kafka)
    if errors is not None:
        config["error_cb"] = errors.append
    return AdminClient(config)


def terminal_client_error(errors: list[KafkaError]) -> KafkaError | None:
    """The first reported error that retrying cannot cure: failed authentication or TLS
    handshake, or an error librdkafka itself calls fatal."""
    for error in errors:
        if error.fatal() or error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            return error
    return None


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


def preflight(
    kafka: KafkaSettings, dead_letters: bool, timeout_s: float = 30, attempt_s: float = 1
) -> int:
    """Check the audit topic exists; create the dead-letter topic if asked. Returns partitions.

    Metadata is asked for in ``attempt_s`` slices so that a refused login ends the check at
    once (``KafkaAuthError``) instead of after ``timeout_s``: librdkafka retries it forever."""
    errors: list[KafkaError] = []
    admin = admin_client(kafka, errors)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            partitions = partition_count(admin, kafka.topic, attempt_s)
            break
        except KafkaException as err:
            admin.poll(0)  # serves the error callback
            refused = terminal_client_error(errors)
            if refused is not None:
                raise KafkaAuthError(
                    f"Kafka refused the connection, check the security settings "
                    f"(kafka.security_protocol={kafka.security_protocol}, "
                    f"kafka.sasl_mechanism={kafka.sasl_mechanism or '-'}, "
                    f"kafka.sasl_username={kafka.sasl_username or '-'}): {refused.str()}"
                ) from None
            if time.monotonic() >= deadline:
                raise TopicError(f"cannot read metadata of topic {kafka.topic!r}: {err}") from err
    if partitions is None:
        raise TopicError(f"topic {kafka.topic!r} does not exist")
    if dead_letters and kafka.create_dlq_topic:
        ensure_topic(kafka, kafka.dead_letter_topic, partitions)
    return partitions
