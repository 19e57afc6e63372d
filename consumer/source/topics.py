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


class TopicUnavailable(TopicError):
    """Kafka did not answer a topic request, or answered that it cannot yet (unreachable,
    restarting, no controller elected): asking again may succeed. ``brief``: what failed, in
    the client's words without its codes."""

    def __init__(self, what: str, error: KafkaException | str) -> None:
        super().__init__(f"{what}: {error}")
        self.brief = f"{what}: {_reason(error) if isinstance(error, KafkaException) else error}"


UNANSWERED = frozenset({
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._TIMED_OUT_QUEUE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.NOT_CONTROLLER,
})
"""Errors of a broker that is down, restarting or still electing its controller."""


def _unanswered(error: object) -> bool:
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in UNANSWERED)


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
    try:
        failure = futures[name].exception(timeout_s)
    except TimeoutError:
        raise TopicUnavailable(f"cannot create topic {name!r}",
                               f"no answer within {timeout_s:g}s") from None
    if failure is None:
        return True
    error = failure.args[0] if failure.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
        return False
    detail = error.str() if isinstance(error, KafkaError) else str(failure)
    if _unanswered(error):
        raise TopicUnavailable(f"cannot create topic {name!r}", detail)
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


CREATE_ATTEMPT_S = 10.0
"""How long one attempt to create the dead-letter topic waits for the broker's answer."""


def preflight(
    kafka: KafkaSettings, dead_letters: bool, timeout_s: float | None = 30, attempt_s: float = 1,
    stopped: Callable[[], bool] = lambda: False, warn_every_s: float = 10,
) -> Topics:
    """Check the audit topic exists; create the dead-letter topic if asked and read its size
    limit. While Kafka does not answer (unreachable, restarting) the whole check is tried
    again: ``timeout_s`` None: until ``stopped()``, one warning every ``warn_every_s``
    (``run``); otherwise for up to ``timeout_s``.

    Kafka is asked in ``attempt_s`` slices (one attempt at most per slice) so that a refused
    login ends the check at once (``KafkaAuthError``) instead of after ``timeout_s``:
    librdkafka retries it forever."""
    errors: list[KafkaError] = []
    admin = admin_client(kafka, errors)
    started = time.monotonic()
    warned = started
    while True:
        attempt = time.monotonic()
        try:
            return _check_topics(kafka, admin, dead_letters, attempt_s)
        except TopicUnavailable as err:
            time.sleep(max(0.0, attempt + attempt_s - time.monotonic()))  # at most one a slice
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
                raise TopicError(str(err)) from None
            if stopped():
                raise StartAbandoned("stopped while waiting for Kafka") from None
            if timeout_s is None and now - warned >= warn_every_s:
                warned = now
                log.warning("waiting for Kafka (%s) for %.0fs: %s", kafka.bootstrap_servers,
                            now - started, err.brief)


def _check_topics(
    kafka: KafkaSettings, admin: AdminClient, dead_letters: bool, attempt_s: float
) -> Topics:
    """One attempt of ``preflight``; ``TopicUnavailable`` when Kafka did not answer."""
    partitions = _metadata(admin, kafka.topic, attempt_s)
    if partitions is None:
        raise TopicError(f"topic {kafka.topic!r} does not exist")
    if not dead_letters:
        return Topics(partitions)
    name = kafka.dead_letter_topic
    if kafka.create_dlq_topic:
        if ensure_topic(kafka, name, partitions, kafka.dlq_replication_factor,
                        kafka.dlq_topic_config, max(attempt_s, CREATE_ATTEMPT_S)):
            log.info("created the dead-letter topic %r", name)
    elif _metadata(admin, name, attempt_s) is None:
        raise TopicError(f"dead-letter topic {name!r} does not exist and "
                         "kafka.create_dlq_topic is false: create it first")
    return Topics(partitions, max_message_bytes(admin, name, max(attempt_s, CREATE_ATTEMPT_S)))


def _metadata(admin: AdminClient, name: str, timeout_s: float) -> int | None:
    try:
        return partition_count(admin, name, timeout_s)
    except KafkaException as err:
        raise TopicUnavailable(f"cannot read metadata of topic {name!r}", err) from None


class StartAbandoned(TopicError):
    """A stop was asked for while ``run`` waited for Kafka at start."""

    exit_code = 0


def _reason(err: KafkaException) -> str:
    error = err.args[0] if err.args else None
    return error.str() if isinstance(error, KafkaError) else str(err)
