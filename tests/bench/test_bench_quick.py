"""Smoke run of the benchmark harness (``python -m bench.run --quick``) on the session broker.

Correctness only: every figure is reported and kyc-sync's table equals the oracle afterwards.
No timing is asserted (the machine is shared; ``make bench`` is where figures come from).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.load import Spec, expected_current
from tests.integration.harness import ledger, read_current

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("registry")]


def test_quick_bench_reports_every_figure_and_syncs_the_table(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", schema_registry_url)  # the wire-format step's
    results_path = tmp_path / "latest.json"
    work = tmp_path / "work"

    code = bench_run.main([
        "--quick", "--bootstrap", kafka_bootstrap, "--work-dir", str(work),
        "--results", str(results_path),
    ])

    assert code == 0
    results = json.loads(results_path.read_text())
    assert set(bench_run.REQUIRED_KEYS) <= results.keys()
    events, profiles = bench_run.QUICK
    assert (results["events"], results["profiles"]) == (events, profiles)
    for key in ("b0_msgs_per_s", "decode_reduce_per_s", "e2e_per_s", "merge_s", "upsert_s",
                "ctas_s", "decode_8_fields_per_s", "decode_16_fields_per_s"):
        assert results[key] > 0, key
    assert results["decode_16_fields_one_by_one"] == 0  # the evolved schema stays columnar
    assert results["peak_rss_bytes"] > 0
    assert results["e2e_mismatches"] == 0
    assert results["e2e_correct"] is True
    assert results["e2e_history_per_s"] > 0
    assert results["peak_rss_history_bytes"] > 0
    assert results["e2e_history_rows"] == results["e2e_history_rows_expected"]
    assert results["e2e_history_correct"] is True
    if results["peer"] != "none":
        assert results["peer_correct"] is True
        assert results["peer_e2e_per_s"] > 0
    else:
        assert results["peer_e2e_per_s"] is None
    assert results["e2e_confluent_per_s"] > 0
    assert results["e2e_confluent_correct"] is True
    assert results["e2e_confluent_vs_plain"] == (
        results["e2e_confluent_per_s"] / results["e2e_per_s"])
    assert [t["target"] for t in results["targets"]] == [t[0] for t in bench_run.TARGETS]

    # The table after the run equals the oracle, read independently of the harness's check.
    db = work / "e2e.duckdb"
    assert read_current(db) == expected_current(Spec(events, profiles))
    batches = ledger(db)
    assert len(batches) == 1  # one window covers the whole topic
    assert batches[0]["events_in"] == events
    assert batches[0]["rows_out"] == results["keys"]
