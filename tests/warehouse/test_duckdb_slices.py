"""The DuckDB writer applies a batch in slices of staged rows within one transaction; the result,
counts and ledger must not depend on the slice size. The contract scenarios, with tiny slices."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.warehouse.test_contract import Harness, duckdb_harness
from tests.warehouse.test_contract import test_convergence_property as convergence
from tests.warehouse.test_contract import test_guard_applies_only_strictly_newer_versions as guard
from tests.warehouse.test_contract import test_ledger_contents as ledger_contents
from tests.warehouse.test_contract import test_seed_scenario as seed_scenario
from tests.warehouse.test_contract import test_tombstones as tombstones
from warehouse import duckdb_writer
from warehouse.duckdb_writer import add_classified


@pytest.fixture(params=[1, 2, 3])
def sliced(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    monkeypatch.setattr(duckdb_writer, "APPLY_SLICE_ROWS", request.param)
    harness = duckdb_harness(tmp_path / "sliced.duckdb")
    harness.writer.open()
    try:
        yield harness
    finally:
        harness.writer.close()


@pytest.mark.parametrize(
    "scenario", [seed_scenario, guard, tombstones, ledger_contents, convergence],
    ids=["seed", "guard", "tombstones", "ledger", "convergence"],
)
def test_contract_scenarios_with_small_slices(sliced: Harness, scenario: object) -> None:
    assert callable(scenario)
    scenario(sliced)


def test_add_classified_sums_counts_and_widens_bounds() -> None:
    early, late = datetime(2026, 1, 1), datetime(2026, 1, 2)
    total = add_classified((0, 0, 0, 0, None, None), (1, 2, 3, 4, late, late))
    total = add_classified(total, (1, 0, 0, 1, None, None))
    total = add_classified(total, (0, 1, 0, 0, early, early))
    assert total == (2, 3, 3, 5, early, late)
