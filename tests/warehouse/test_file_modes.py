"""The DuckDB database holds profile data and offsets: a file the writer creates is readable by
its owner only, whatever the umask; a file that exists keeps the mode its operator gave it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.run.fakes import memory_tables
from warehouse.duckdb_writer import DuckDBWarehouse


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_a_new_database_file_is_private(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    writer = DuckDBWarehouse(str(db), memory_tables())
    writer.open()
    writer.close()

    assert mode(db) == 0o600
    wal = tmp_path / "kyc.duckdb.wal"
    assert not wal.exists() or mode(wal) == 0o600


@pytest.mark.usefixtures("open_umask")
def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    first = DuckDBWarehouse(str(db), memory_tables())
    first.open()
    first.close()
    db.chmod(0o640)  # the operator shares it with a reader group

    again = DuckDBWarehouse(str(db), memory_tables())
    again.open()
    again.close()

    assert mode(db) == 0o640
