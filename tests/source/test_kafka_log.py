"""librdkafka's log lines reach Python logging rate-limited, one per kind every 10 s."""

from __future__ import annotations

import logging

import pytest

from consumer.source.kafka_log import KAFKA_LOGGER, RateLimit, kafka_logger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_line(facility: str, text: str) -> logging.LogRecord:
    """A record as confluent-kafka logs it: ``"%s [%s] %s"`` with facility, client, text."""
    return logging.LogRecord(KAFKA_LOGGER, logging.ERROR, "", 0, "%s [%s] %s",
                             (facility, "rdkafka#consumer-1", text), None)


def test_one_line_per_facility_every_interval_then_the_count_held_back() -> None:
    clock = Clock()
    limit = RateLimit(10.0, clock)
    passed = []
    for second in range(25):
        clock.now = float(second)
        for attempt in range(3):  # three failed connects a second
            record = client_line(
                "FAIL", f"Connect to ipv4#127.0.0.1:1 failed (after {attempt}ms in state CONNECT)")
            if limit.filter(record):
                passed.append((second, record.getMessage()))

    assert [s for s, _ in passed] == [0, 10, 20]
    assert passed[0][1] == ("FAIL [rdkafka#consumer-1] Connect to ipv4#127.0.0.1:1 failed "
                            "(after 0ms in state CONNECT)")
    assert passed[1][1].endswith("(29 similar line(s) held back)")


def test_other_kinds_are_not_held_back() -> None:
    limit = RateLimit(10.0, Clock())

    assert limit.filter(client_line("FAIL", "broker 1 down"))
    assert limit.filter(client_line("GETPID", "broker 1 down"))
    assert limit.filter(client_line("FAIL", "authentication failed"))
    assert not limit.filter(client_line("FAIL", "broker 2 down"))


def test_debug_lines_all_pass() -> None:
    limit = RateLimit(10.0, Clock())
    dump = [client_line("CONF", f"Client configuration: option{i} = {i}") for i in range(5)]
    for record in dump:
        record.levelno = logging.DEBUG

    assert all(limit.filter(record) for record in dump)


def test_clients_log_through_the_kyc_sync_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = kafka_logger()

    assert logger is kafka_logger()
    assert sum(isinstance(f, RateLimit) for f in logger.filters) == 1
    assert logger.name == KAFKA_LOGGER
