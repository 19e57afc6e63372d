"""Topic administration: check the audit topic, create the dead-letter topic if missing and read
its size limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported for type checkers
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from consumer.settings import KafkaSettings
from consumer.source.client import admin_config
from schemas.errors import TerminalError

log = logging.getLogger("kyc_sync.topics")


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
    kafka: KafkaSettings, name: str, partitions: int, replication: int = -1,
    config: Mapping[str, str] | None = None, timeout_s: float = 30,
) -> bool:
    """Create ``name`` unless it exists (``replication`` -1: the broker's default replication
    factor). Returns True when it was created."""
    admin = admin_client(kafka)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication,
                  config=dict(config or {}))],
        operation_timeout=timeout_s,
    )
    failure = futures[name].exception(timeout_s)
    if failure is None:
        return True
    error = failure.args[0] if failure.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
        return False
    detail = error.str() if isinstance(error, KafkaError) else str(failure)
    raise TopicError(f"cannot create topic {name!r}: {detail}")


DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""What the dead-letter producer assumes when the topic's limit cannot be read (librdkafka's
own default); a copy the broker still refuses is re-sent truncated (``DeadLetters``)."""


def max_message_bytes(admin: AdminClient, name: str, timeout_s: float = 30) -> int:
    """The topic's ``max.message.bytes`` (its own or the broker's default): the largest record
    batch it accepts. ``DEFAULT_MAX_MESSAGE_BYTES`` when it cannot be read (no
    DescribeConfigs permission), with a warning."""
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(
            timeout=timeout_s)
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, TypeError, ValueError, TimeoutError) as err:
        log.warning("cannot read max.message.bytes of topic %r (%s); dead-letter copies are "
                    "sized for %d bytes", name, err, DEFAULT_MAX_MESSAGE_BYTES)
        return DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class Topics:
    """What the start-up check found: the audit topic's partitions, and the dead-letter
    topic's ``max.message.bytes`` (None: no dead letters are sent)."""

    partitions: int
    dead_letter_max_bytes: int | None = None


def preflight(
    kafka: KafkaSettings, dead_letters: bool, timeout_s: float | None = 30, attempt_s: float = 1,
    stopped: Callable[[], bool] = lambda: False, warn_every_s: float = 10,
) -> Topics:
    """Check the audit topic exists; create the dead-letter topic if asked and read its size
    limit. ``timeout_s`` None: wait for unreachable brokers until ``stopped()``, one warning
    every ``warn_every_s`` (``run``); otherwise give up after ``timeout_s``.

    Metadata is asked for in ``attempt_s`` slices so that a refused login ends the check at
    once (``KafkaAuthError``) instead of after ``timeout_s``: librdkafka retries it forever."""
    errors: list[KafkaError] = []
    admin = admin_client(kafka, errors)
    started = time.monotonic()
    warned = started
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
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                raise TopicError(f"cannot read metadata of topic {kafka.topic!r}: {err}") from err
            if stopped():
                raise StartAbandoned("stopped while waiting for Kafka") from None
            if timeout_s is None and now - warned >= warn_every_s:
                warned = now
                log.warning("waiting for Kafka (%s) for %.0fs: cannot read metadata of topic "
                            "%r: %s", kafka.bootstrap_servers, now - started, kafka.topic,
                            _reason(err))
    if partitions is None:
        raise TopicError(f"topic {kafka.topic!r} does not exist")
    if not dead_letters:
        return Topics(partitions)
    name = kafka.dead_letter_topic
    if kafka.create_dlq_topic:
        if ensure_topic(kafka, name, partitions, kafka.dlq_replication_factor,
                        kafka.dlq_topic_config):
            log.info("created the dead-letter topic %r", name)
    elif partition_count(admin, name, timeout_s or 30) is None:
        raise TopicError(f"dead-letter topic {name!r} does not exist and "
                         "kafka.create_dlq_topic is false: create it first")
    return Topics(partitions, max_message_bytes(admin, name, timeout_s or 30))


class StartAbandoned(TopicError):
    """A stop was asked for while ``run`` waited for Kafka at start."""

    exit_code = 0


def _reason(err: KafkaException) -> str:
    error = err.args[0] if err.args else None
    return error.str() if isinstance(error, KafkaError) else str(err)
