"""Kafka security settings reach every client (consumer, producer, the admin client of the
pre-flight check), and which client errors end the pre-flight check at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

from consumer.settings import KafkaSettings
from consumer.source.client import (
    FETCH_QUEUE_BACKOFF_MS,
    QUEUED_MIN_MESSAGES,
    admin_config,
    consumer_config,
    producer_config,
)
from consumer.source.topics import terminal_client_error

TLS_OPTIONS: dict[str, str | int | float | bool] = {
    "ssl.ca.location": "/etc/kyc/ca.pem",
    "ssl.certificate.location": "/etc/kyc/client.pem",
    "ssl.key.location": "/etc/kyc/client.key",
    "ssl.endpoint.identification.algorithm": "https",
}


def secured(protocol: str = "SASL_SSL") -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": "broker:9093",
            "security_protocol": protocol,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "kycsync",
            "sasl_password": "pw",
            "client_options": {**TLS_OPTIONS, "auto.offset.reset": "latest"},
        }
    )


@pytest.mark.parametrize("build", [consumer_config, producer_config, admin_config])
def test_security_settings_reach_every_client(
    build: Callable[[KafkaSettings], dict[str, Any]],
) -> None:
    config = build(secured())
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "kycsync"
    assert config["sasl.password"] == "pw"
    assert {k: config[k] for k in TLS_OPTIONS} == TLS_OPTIONS


def test_consumer_only_options_stay_with_the_consumer() -> None:
    kafka = secured()
    assert consumer_config(kafka)["auto.offset.reset"] == "latest"
    assert "auto.offset.reset" not in producer_config(kafka)
    assert "auto.offset.reset" not in admin_config(kafka)


def test_fetch_defaults_keep_messages_flowing_and_client_options_override_them() -> None:
    config = consumer_config(KafkaSettings())
    assert config["fetch.queue.backoff.ms"] == FETCH_QUEUE_BACKOFF_MS
    assert config["queued.min.messages"] == QUEUED_MIN_MESSAGES

    tuned = consumer_config(KafkaSettings(client_options={"fetch.queue.backoff.ms": 500,
                                                          "queued.max.messages.kbytes": 8192}))
    assert tuned["fetch.queue.backoff.ms"] == 500
    assert "fetch.queue.backoff.ms" not in producer_config(KafkaSettings(
        client_options={"fetch.queue.backoff.ms": 500}))


def test_no_sasl_options_without_a_user() -> None:
    config = admin_config(KafkaSettings(bootstrap_servers="broker:9093", security_protocol="SSL"))
    assert config["security.protocol"] == "SSL"
    assert not any(key.startswith("sasl.") for key in config)


@pytest.mark.parametrize(
    ("errors", "terminal"),
    [
        ([], None),
        ([KafkaError(KafkaError._TRANSPORT, "down"), KafkaError(KafkaError._ALL_BROKERS_DOWN)],
         None),
        ([KafkaError(KafkaError._TRANSPORT), KafkaError(KafkaError._AUTHENTICATION, "bad login")],
         "bad login"),
        ([KafkaError(KafkaError._SSL, "handshake failed")], "handshake failed"),
        ([KafkaError(KafkaError._FENCED, "fenced", fatal=True)], "fenced"),
    ],
)
def test_terminal_client_error(errors: list[KafkaError], terminal: str | None) -> None:
    found = terminal_client_error(errors)
    assert (None if found is None else found.str()) == terminal
