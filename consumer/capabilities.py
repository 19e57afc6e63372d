"""The warehouse's optional capabilities, from settings: reading (``Inspector``) for ``lag`` and
``check``, and the full-refresh swap (``Refresher``). A writer that lacks one is reported clearly
instead of failing half-way. Each is a context manager that closes the writer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from consumer.app import build_warehouse
from consumer.run.retry import retry_transient
from consumer.settings import Settings
from warehouse.base import Inspector, Refresher, Warehouse


class UnsupportedWarehouse(Exception):
    """The configured writer does not implement what the command needs."""


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
    with _writer(settings) as writer:
        if not isinstance(writer, Inspector):
            raise UnsupportedWarehouse(f"the {settings.warehouse.kind} writer has no fetch()")
        yield writer


@contextmanager
def open_refresher(settings: Settings) -> Iterator[Refresher]:
    """The writer, opened: the live objects exist (created if missing) for the swap."""
    with _writer(settings) as writer:
        if not isinstance(writer, Refresher):
            raise UnsupportedWarehouse(
                f"the {settings.warehouse.kind} writer has no discard()/swap_in() "
                "for a full refresh"
            )
        retry_transient(writer.open, settings.warehouse.retry_max_s, "warehouse open")
        yield writer
