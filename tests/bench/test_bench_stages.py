"""The added benchmark stages at a tiny size, on the session's broker (and registry, and the
Snowflake double): each one runs end to end, reports every figure, and its tables equal the
oracle. No timing is asserted (the machine is shared; the Make targets are where figures come
from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import latency, scale, scale_out, wire_format

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


def stage_args(kafka_bootstrap: str, tmp_path: Path) -> list[str]:
    return ["--bootstrap", kafka_bootstrap, "--work-dir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), "--timeout", "300"]


def results(tmp_path: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    return loaded


def test_scale_reports_each_size_with_its_memory_and_a_plot(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "latest.json").write_text(json.dumps({"b0_msgs_per_s": 1.0}))

    assert scale.main(["--sizes", "3000/600", *stage_args(kafka_bootstrap, tmp_path)]) == 0

    figures = results(tmp_path, "scale")["scale"]
    (run,) = figures["runs"]
    assert (run["events"], run["profiles"]) == (3000, 600)
    assert run["correct"] is True
    assert run["e2e_per_s"] > 0
    assert run["peak_rss_bytes"] > figures["baseline_peak_rss_bytes"] > 0
    assert run["bytes_per_profile"] == run["peak_rss_bytes"] / 600
    memory = run["memory"]
    assert memory["events"] == 3000
    assert memory["keys"] == run["keys"]
    for key in ("reduced_bytes", "staged_bytes", "ingest_peak_bytes", "baseline_bytes"):
        assert memory[key] > 0, key
    assert (tmp_path / "results" / "scale.png").read_bytes()[:8] == PNG
    latest = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert latest["b0_msgs_per_s"] == 1.0  # the keys already there are kept
    assert latest["scale"] == figures


@pytest.mark.slow  # a member that finds the group caught up during its join is waited out
def test_scale_out_on_one_duckdb_file(kafka_bootstrap: str, tmp_path: Path) -> None:
    code = scale_out.main(["--events", "3000", "--profiles", "600", "--instances", "1,2",
                           "--window-events", "1000", *stage_args(kafka_bootstrap, tmp_path)])

    assert code == 0
    figures = results(tmp_path, "scale_out")["scale_out"]
    one, two = figures["runs"]
    assert (one["instances"], two["instances"]) == (1, 2)
    assert one["correct"] is True
    assert two["correct"] is True
    assert one["vs_one"] == 1.0
    assert two["vs_one"] == two["per_s"] / one["per_s"]
    assert len(two["events_per_instance"]) == 2
    # Every event was flushed by some instance (a batch whose commit failed is read again).
    assert sum(two["events_per_instance"]) >= 3000
    assert sum(one["events_per_instance"]) == 3000


@pytest.mark.slow
def test_scale_out_on_the_snowflake_double(kafka_bootstrap: str, tmp_path: Path) -> None:
    code = scale_out.main(["--warehouse", "snowflake", "--events", "1500", "--profiles", "300",
                           "--instances", "2", "--window-events", "500",
                           *stage_args(kafka_bootstrap, tmp_path)])

    assert code == 0
    figures = results(tmp_path, "scale_out_snowflake")["scale_out_snowflake"]
    (two,) = figures["runs"]
    assert figures["warehouse"] == "snowflake"
    assert two["correct"] is True
    assert two["vs_one"] is None  # no single-instance run to compare with


def test_latency_of_a_steady_producer(kafka_bootstrap: str, tmp_path: Path) -> None:
    code = latency.main(["--rate", "1000", "--seconds", "3", "--window-s", "1",
                         "--warmup-s", "0.5", "--profiles", "500", "--drain-s", "30",
                         *stage_args(kafka_bootstrap, tmp_path)])

    assert code == 0
    figures = results(tmp_path, "latency")["latency"]
    assert figures["probes_measured"] > 0
    assert figures["probes_never_seen"] == 0
    assert figures["probes_never_committed"] == 0
    assert figures["flushes"] >= 1
    # A row is seen by a poll after its transaction committed, and the ledger's time is taken
    # before the commit.
    for q in ("p50", "p90", "p99", "max"):
        assert 0 < figures[f"committed_{q}_s"] <= figures[f"{q}_s"], q


@pytest.mark.xdist_group("registry")  # the worker of the other registry tests: one JVM
def test_wire_format_against_plain_avro(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    code = wire_format.main(["--events", "2000", "--profiles", "500",
                             "--registry-url", schema_registry_url,
                             *stage_args(kafka_bootstrap, tmp_path)])

    assert code == 0
    figures = results(tmp_path, "wire_format")
    assert figures["e2e_confluent_correct"] is True
    assert figures["e2e_confluent_per_s"] > 0
    assert figures["e2e_confluent_schema_id"] > 0
    assert figures["e2e_confluent_vs_plain"] == (
        figures["e2e_confluent_per_s"] / figures["e2e_plain_runs_per_s"][0])
