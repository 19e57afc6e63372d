"""Fixtures of the warehouse tests: the Snowflake test double (fakesnow's server with Snowflake's
locks and transaction ends, ``tests.warehouse.snowflake_double``) for the Snowflake writer, and a
fresh database name per test.

``fakesnow_server`` starts the double in a subprocess for the test session; a transaction that
blocks another and is idle for ``IDLE_ABORT_S`` is aborted, as Snowflake does after about 5
minutes. The fixture depends on nothing of this package, so it can move to ``tests/conftest.py``
as is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.warehouse.fakesnow_process import (
    FAKESNOW_HOST,
    FakesnowStartError,
    start_fakesnow,
    stop_fakesnow,
)

IDLE_ABORT_S = 3.0


@pytest.fixture(scope="session")
def fakesnow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of the session's fakesnow server (connect with ``protocol="http"``)."""
    try:
        proc, port = start_fakesnow(tmp_path_factory.mktemp("fakesnow"), IDLE_ABORT_S)
    except FakesnowStartError as err:
        raise pytest.fail.Exception(str(err), pytrace=False) from None
    try:
        yield FAKESNOW_HOST, port
    finally:
        stop_fakesnow(proc)


@pytest.fixture
def snowflake_database() -> str:
    """A database name no other test uses (fakesnow creates it on first connect)."""
    return f"KYC_TEST_{uuid.uuid4().hex[:12].upper()}"
