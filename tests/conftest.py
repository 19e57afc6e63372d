"""Shared pytest fixtures: the Kafka broker used by integration tests, unique topic names.

Broker selection (see ``tools.localkafka.choose_broker``):
``KAFKA_BOOTSTRAP_SERVERS`` set -> that external broker; ``KYC_SYNC_TEST_KAFKA=testcontainers``
-> a Kafka container; otherwise a local KRaft broker JVM started once per session.
A broker that fails to start fails the tests (with the broker log); it never skips them.

Under pytest-xdist (``make test``) every worker is a session of its own: its own broker, registry
and Snowflake double, on free ports, started the first time one of its tests asks. Topics and
groups are unique per test, so the tests of one worker never meet another worker's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tools.localkafka import (
    TEST_JVM_OPTS,
    BrokerStartError,
    LocalKafka,
    choose_broker,
    start_testcontainers_kafka,
)

# --------------------------------------------------------------------------- test order


def expected_length(item: pytest.Item) -> int:
    """2: marked ``slow``; 1: marked ``integration``; 0: the rest."""
    if item.get_closest_marker("slow") is not None:
        return 2
    return 1 if item.get_closest_marker("integration") is not None else 0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, then the integration tests, then the rest, each in collection order:
    xdist hands tests out in this order, so the longest start at once and the short ones fill
    the workers' gaps at the end. The marks are module-wide where a module has its own
    module-scoped fixture, so such a module stays in one piece (the fixture starts once)."""
    items.sort(key=lambda item: -expected_length(item))


# --------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The session's local broker (restartable by chaos tests), or None if not local."""
    if choose_broker(os.environ) != "local":
        yield None
        return
    broker = LocalKafka(work_dir=tmp_path_factory.mktemp("kafka"), jvm_opts=TEST_JVM_OPTS)
    try:
        broker.start()
    except BrokerStartError as err:
        broker.stop()
        # Fail (never skip) every test that needs Kafka, showing the broker log tail.
        raise pytest.fail.Exception(f"local Kafka broker: {err}", pytrace=False) from None
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka | None) -> Iterator[str]:
    """``host:port`` of the session's Kafka broker."""
    choice = choose_broker(os.environ)
    if choice == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif choice == "testcontainers":
        with start_testcontainers_kafka() as bootstrap:
            yield bootstrap
    else:
        assert local_kafka is not None
        yield local_kafka.bootstrap


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (the topic itself is not created)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"test-{stem}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- Schema Registry


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Confluent-compatible API of the session's Schema Registry (what
    ``decoding.schema_registry_url`` takes): ``SCHEMA_REGISTRY_URL`` if set, else a local
    Apicurio Registry JVM (``tools.localregistry``) started once per session. A registry that
    fails to start fails the tests that need it (with its log); it never skips them."""
    from tools.localregistry import LocalRegistry, RegistryStartError

    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external.rstrip("/")
        return
    registry = LocalRegistry(work_dir=tmp_path_factory.mktemp("registry"))
    try:
        registry.start()
    except RegistryStartError as err:
        registry.stop()
        raise pytest.fail.Exception(f"local Schema Registry: {err}", pytrace=False) from None
    try:
        yield registry.ccompat_url
    finally:
        registry.stop()
