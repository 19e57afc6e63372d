"""The start-up check waits for Kafka through every step (the audit topic's metadata, the
dead-letter topic's creation), and stops at once on an answer no retry can change."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.settings import KafkaSettings
from consumer.source import topics
from consumer.source.topics import (
    StartAbandoned,
    TopicError,
    Topics,
    TopicUnavailable,
    ensure_topic,
    preflight,
)

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="audit")
DOWN = KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


def answers(*steps: object) -> Callable[..., object]:
    """A stand-in for a Kafka call: each call takes the next step (raised if an exception)."""
    pending: Iterator[object] = iter(steps)

    def call(*_args: object, **_kwargs: object) -> object:
        step = next(pending)
        if isinstance(step, BaseException):
            raise step
        return step

    return call


@pytest.fixture(autouse=True)
def topic_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "max_message_bytes", lambda *_a, **_k: 300_000)


def test_run_waits_while_the_dead_letter_topic_cannot_be_created_yet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker answered the metadata, then went away (or has no controller yet) before the
    dead-letter topic was created: the whole check is tried again, not given up."""
    monkeypatch.setattr(topics, "partition_count", answers(3, DOWN, 3, 3))
    monkeypatch.setattr(topics, "ensure_topic", answers(
        TopicUnavailable("cannot create topic 'audit.dlq'", "no answer within 10s"), True))

    with caplog.at_level(logging.WARNING, "kyc_sync.topics"):
        found = preflight(KAFKA, True, timeout_s=None, attempt_s=0.01, warn_every_s=0)

    assert found == Topics(3, 300_000)
    waits = [r.getMessage() for r in caplog.records if r.name == "kyc_sync.topics"]
    assert len(waits) == 2
    assert waits[0].startswith("waiting for Kafka (127.0.0.1:1) for ")
    assert waits[0].endswith(": cannot create topic 'audit.dlq': no answer within 10s")
    assert waits[1].endswith(": cannot read metadata of topic 'audit': Broker transport failure")


def test_a_bounded_check_gives_up_naming_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "partition_count", lambda *_a, **_k: 3)
    monkeypatch.setattr(topics, "ensure_topic", answers(*[
        TopicUnavailable("cannot create topic 'audit.dlq'", "no answer within 10s")] * 100))

    with pytest.raises(TopicError) as raised:
        preflight(KAFKA, True, timeout_s=0.3, attempt_s=0.05)

    assert not isinstance(raised.value, TopicUnavailable)
    assert str(raised.value) == "cannot create topic 'audit.dlq': no answer within 10s"


def test_a_refusal_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "partition_count", answers(3))
    refused = TopicError("cannot create topic 'audit.dlq': Replication factor: 3 larger than "
                         "available brokers: 1.")
    monkeypatch.setattr(topics, "ensure_topic", answers(refused))

    with pytest.raises(TopicError) as raised:
        preflight(KAFKA, True, timeout_s=None)

    assert raised.value is refused


def test_a_missing_dead_letter_topic_not_to_be_created_waits_for_an_answer(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topics, "partition_count", answers(3, DOWN, 3, None))

    with pytest.raises(TopicError) as raised:
        preflight(KAFKA.model_copy(update={"create_dlq_topic": False}), True, timeout_s=None,
                  attempt_s=0.01)

    assert str(raised.value).startswith("dead-letter topic 'audit.dlq' does not exist and ")


def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "partition_count", answers(3, 3))
    monkeypatch.setattr(topics, "ensure_topic", answers(
        TopicUnavailable("cannot create topic 'audit.dlq'", "no answer within 10s")))
    stops = iter([True])

    with pytest.raises(StartAbandoned):
        preflight(KAFKA, True, timeout_s=None, attempt_s=0.01, stopped=lambda: next(stops))


def test_creating_a_topic_on_an_unreachable_broker_may_be_tried_again() -> None:
    """The real client, nothing listening: no traceback, an error preflight waits on."""
    started = time.monotonic()
    with pytest.raises(TopicUnavailable) as raised:
        ensure_topic(KAFKA, "audit.dlq", 1, timeout_s=2)

    assert str(raised.value).startswith("cannot create topic 'audit.dlq': ")
    assert time.monotonic() - started < 15
