"""Composition root: builds the decoder, the warehouse and the loop from settings, and opens the
warehouse's optional capabilities for the operations commands: reading (``Inspector``) for
``lag`` and ``check``, the full-refresh swap (``Refresher``). A writer that lacks one is reported
clearly instead of failing half-way."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from batcher.ranges import PartitionRange
from batcher.window import WindowPolicy
from consumer.decode.contract import Contract
from consumer.decode.decoder import ConfluentAvroDecoder, Decoder, PlainAvroDecoder
from consumer.decode.registry import SchemaRegistry
from consumer.run.gc_tuning import tune_gc
from consumer.run.loop import LoopOptions, SyncLoop
from consumer.run.observer import Observer, Observers
from consumer.run.retry import retry_transient
from consumer.settings import Settings
from consumer.source.client import new_consumer, new_producer
from consumer.source.deadletters import DeadLetters, DeadLetterSink, producer_max_bytes
from consumer.source.topics import DEFAULT_MAX_MESSAGE_BYTES, Topics
from consumer.telemetry.logs import FlushLog
from schemas import audit_schema
from schemas.errors import TerminalError, UsageError
from schemas.evolution import TableState
from warehouse.base import Inspector, Refresher, Warehouse
from warehouse.duckdb_writer import DuckDBWarehouse
from warehouse.faults import FaultPlan
from warehouse.identifiers import QualifiedName
from warehouse.tables import TableNames

T = TypeVar("T")

log = logging.getLogger("kyc_sync")


def writer_schema(settings: Settings) -> dict[str, Any]:
    if settings.decoding.schema_file is not None:
        loaded: dict[str, Any] = json.loads(settings.decoding.schema_file.read_text("utf-8"))
        return loaded
    return audit_schema()


def registry_options(settings: Settings) -> dict[str, Any]:
    """TLS and bearer-auth properties of the registry client, from ``schema_registry``."""
    sr = settings.schema_registry
    options: dict[str, Any] = {
        "ssl.ca.location": sr.ssl_ca_location,
        "ssl.certificate.location": sr.ssl_certificate_location,
        "ssl.key.location": sr.ssl_key_location,
        "ssl.key.password": sr.ssl_key_password.get_secret_value(),
    }
    if sr.bearer_auth:
        options |= {
            "bearer.auth.credentials.source": sr.bearer_auth,
            "bearer.auth.logical.cluster": sr.logical_cluster,
            "bearer.auth.identity.pool.id": sr.identity_pool_id,
        }
    if sr.bearer_auth == "STATIC_TOKEN":
        options["bearer.auth.token"] = sr.bearer_token.get_secret_value()
    elif sr.bearer_auth == "OAUTHBEARER":
        options |= {
            "bearer.auth.client.id": sr.oauth_client_id,
            "bearer.auth.client.secret": sr.oauth_client_secret.get_secret_value(),
            "bearer.auth.scope": sr.oauth_scope,
            "bearer.auth.issuer.endpoint.url": sr.oauth_issuer_url,
        }
    return options


def build_registry(settings: Settings) -> SchemaRegistry:
    """The Schema Registry client of ``decoding.format=confluent``; ``UsageError`` when its
    settings do not make a client."""
    decoding = settings.decoding
    try:
        return SchemaRegistry(
            decoding.schema_registry_url,
            decoding.schema_registry_user or None,
            decoding.schema_registry_password.get_secret_value() or None,
            settings.schema_registry.timeout_s,
            registry_options(settings),
        )
    except ValueError as err:
        raise UsageError(f"invalid settings: {err}") from None


def build_contract(settings: Settings) -> Contract:
    """The column contract: evolution policy and column policy (the table's columns are read
    when the run loop opens the warehouse)."""
    columns = settings.columns
    return Contract(
        settings.decoding.schema_evolution, columns.policy(),
        columns.hash_key.get_secret_value().encode(),
    )


def build_decoder(settings: Settings, contract: Contract | None = None) -> Decoder:
    decoding = settings.decoding
    contract = contract or build_contract(settings)
    if decoding.format == "confluent":
        return ConfluentAvroDecoder(build_registry(settings), contract)
    return PlainAvroDecoder(
        writer_schema(settings), contract, schema_file=decoding.schema_file is not None
    )


def table_names(settings: Settings, upper: bool = False, *prefix: str) -> TableNames:
    wh, history = settings.warehouse, settings.history
    return TableNames(
        state=QualifiedName.of(*prefix, wh.state_table, upper=upper),
        current=QualifiedName.of(*prefix, wh.table, upper=upper),
        ledger=QualifiedName.of(*prefix, wh.ledger_table, upper=upper),
        columns=QualifiedName.of(*prefix, wh.columns_table, upper=upper),
        history=QualifiedName.of(*prefix, history.table, upper=upper) if history.enabled else None,
    )


def fault_plan(settings: Settings) -> FaultPlan:
    f = settings.faults
    return FaultPlan(f.warehouse, f.times, f.probability, f.seed, f.stall_s)


def build_warehouse(settings: Settings) -> Warehouse:
    if settings.warehouse.kind == "duckdb":
        schema = settings.duckdb.schema_name
        return DuckDBWarehouse(
            settings.duckdb.path, table_names(settings, False, schema), schema,
            fault_plan(settings), settings.columns.policy(),
            memory_limit=settings.duckdb.memory_limit,
        )
    # Imported here: snowflake-connector-python is an optional extra (kyc-sync[snowflake]).
    try:
        from warehouse.snowflake_writer import SnowflakeWarehouse
    except ImportError as err:
        raise MissingExtra(
            "warehouse.kind is 'snowflake' but the Snowflake connector cannot be imported "
            f"({err}): pip install 'kyc-sync[snowflake]'"
        ) from None

    sf = settings.snowflake
    return SnowflakeWarehouse(
        settings.snowflake,
        table_names(settings, True, sf.database, sf.schema_name),
        fault_plan(settings), settings.columns.policy(),
    )


def build_loop(
    settings: Settings,
    until_caught_up: bool = False,
    observers: Sequence[Observer] = (),
    bounds: tuple[PartitionRange, ...] | None = None,
    warehouse: Warehouse | None = None,
    dead_letters: DeadLetterSink | None = None,
    topics: Topics | None = None,
) -> SyncLoop:
    """The run loop; it reports to a flush log line and to ``observers``. ``bounds``: read
    those offset ranges only (``LoopOptions.bounds``); ``warehouse`` and ``dead_letters``
    replace the ones the settings describe. ``topics``: what ``preflight`` found (the
    dead-letter producer is sized to the dead-letter topic's ``max.message.bytes``). The
    process's garbage collector is set for holding batches (``tune_gc``)."""
    tune_gc()
    kafka = settings.kafka
    options = LoopOptions(
        topic=kafka.topic,
        group_id=kafka.group_id,
        on_invalid=settings.decoding.on_invalid,
        until_caught_up=until_caught_up,
        consume_batch=kafka.consume_batch,
        poll_timeout_s=kafka.poll_timeout_s,
        retry_max_s=settings.warehouse.retry_max_s,
        lock_wait_max_s=settings.warehouse.lock_wait_max_s,
        revoke_budget_s=settings.run.revoke_budget_s,
        shutdown_timeout_s=settings.run.shutdown_timeout_s,
        bounds=bounds,
        history=settings.history.enabled,
        caught_up_wait_s=settings.run.caught_up_wait_s,
    )
    if dead_letters is None and settings.decoding.on_invalid == "dlq":
        limit = (topics.dead_letter_max_bytes if topics is not None else None) \
            or DEFAULT_MAX_MESSAGE_BYTES
        dead_letters = DeadLetters(
            new_producer(kafka, producer_max_bytes(limit)), kafka.dead_letter_topic, limit)
    window = settings.window
    return SyncLoop(
        options,
        partial(new_consumer, kafka),
        build_decoder(settings),
        warehouse or build_warehouse(settings),
        dead_letters,
        WindowPolicy(window.seconds, window.max_events, window.max_bytes),
        observer=Observers([FlushLog(), *observers]),
    )


class MissingExtra(TerminalError):
    """The configured writer needs an optional dependency that is not installed."""


class UnsupportedWarehouse(UsageError):
    """The configured writer does not implement what the command needs."""


class WarehouseUnanswered(TerminalError):
    """A question to the warehouse (``lag``, ``check``) got no answer in time."""


class BoundedInspector:
    """An ``Inspector`` whose reads together end within ``budget_s``: a warehouse that does not
    answer (unreachable host, login hanging) ends the command with one line instead of
    minutes of retries. Each read runs on a daemon thread that is left behind when the budget
    is spent; the command exits right after."""

    def __init__(self, inner: Inspector, budget_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.names = inner.names
        self.budget_s = budget_s
        self.clock = clock
        self.deadline = clock() + budget_s
        self.last_error: BaseException | None = None

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._bounded(lambda: self.inner.fetch(sql, params))

    def table_state(self) -> TableState:
        return self._bounded(self.inner.table_state)

    def _bounded(self, call: Callable[[], T]) -> T:
        """``call`` on a daemon thread, waited for until the deadline."""
        left = self.deadline - self.clock()
        if left <= 0:
            raise self._unanswered()
        outcome: list[T] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                outcome.append(call())
            except BaseException as err:  # handed to the caller's thread
                failure.append(err)

        worker = threading.Thread(target=read, name="kyc-sync-warehouse-read", daemon=True)
        worker.start()
        worker.join(left)
        if failure:
            self.last_error = failure[0]
            raise failure[0]
        if not outcome:
            raise self._unanswered()
        return outcome[0]

    def _unanswered(self) -> WarehouseUnanswered:
        why = "" if self.last_error is None else f": {self.last_error}"
        return WarehouseUnanswered(
            f"the warehouse did not answer within {self.budget_s:g}s{why}"
        )


@contextmanager
def _writer(settings: Settings) -> Iterator[Warehouse]:
    try:
        writer = build_warehouse(settings)
    except NotImplementedError as err:
        raise UnsupportedWarehouse(str(err)) from None
    try:
        yield writer
    finally:
        writer.close()


@contextmanager
def open_inspector(settings: Settings) -> Iterator[Inspector]:
    """The writer as a reader whose reads end within ``warehouse.read_timeout_s``."""
    with _writer(settings) as writer:
        if not isinstance(writer, Inspector):
            raise UnsupportedWarehouse(f"the {settings.warehouse.kind} writer has no fetch()")
        yield BoundedInspector(writer, settings.warehouse.read_timeout_s)


@contextmanager
def open_refresher(settings: Settings) -> Iterator[Refresher]:
    """The writer, opened: the live objects exist (created if missing) for the refresh."""
    with _writer(settings) as writer:
        if not isinstance(writer, Refresher):
            raise UnsupportedWarehouse(
                f"the {settings.warehouse.kind} writer has no discard()/swap_in() "
                "for a full refresh"
            )
        retry_transient(
            writer.open, settings.warehouse.retry_max_s, "warehouse open",
            lock_wait_max_s=settings.warehouse.lock_wait_max_s,
        )
        yield writer
