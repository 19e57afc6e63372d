"""Static checks of the Grafana dashboard in deploy/grafana/dashboards: it loads, every panel
queries the Prometheus datasource chosen in its ``datasource`` variable, it has the panels the
deployment issue asks for, and its PromQL names only series that consumer/metrics.py exports.
No Grafana or Prometheus is needed. The alert rules (deploy/prometheus/alerts.yml) are checked
in tests/test_deploy.py, with the same metric-name helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_deploy import (
    DEPLOY,
    SERIES_SUFFIXES,
    exposed_families,
    exposed_metric_names,
    metric_names,
)

DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "kyc-sync.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
"""Every query names the dashboard's datasource variable, never a fixed uid: the dashboard
imports into any Grafana, whatever its Prometheus datasource is called."""
GRID_WIDTH = 24
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase|resets)\(\s*(kyc_sync_\w+)")
COUNTER_SERIES = ("_total", "_bucket", "_sum", "_count")

# What the deployment issue asks the dashboard to show: (panel type, patterns that one panel's
# queries must all match). A panel type of None accepts any panel that has queries.
REQUIRED_PANELS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "lag in messages per partition": (
        "timeseries", (r"by \(partition\) \(kyc_sync_partition_lag_messages\b",)),
    "lag in seconds per partition": (
        "timeseries", (r"by \(partition\) \(kyc_sync_partition_lag_seconds\b",)),
    "freshness (stat)": ("stat", (r"\bkyc_sync_freshness_seconds\b",)),
    "freshness (time series)": ("timeseries", (r"\bkyc_sync_freshness_seconds\b",)),
    "events consumed and decoded per second": ("timeseries", (
        r"\brate\(kyc_sync_events_consumed_total\b", r"\brate\(kyc_sync_events_decoded_total\b")),
    "rows inserted/updated/deleted/skipped-stale per second": (
        "timeseries", (r"by \(outcome\) \(rate\(kyc_sync_rows_total\b",)),
    "write duration quantiles": ("timeseries", (
        r'histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(kyc_sync_phase_duration_seconds_bucket'
        r'\{[^}]*phase="write"',)),
    "decode duration quantiles": ("timeseries", (
        r'histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(kyc_sync_phase_duration_seconds_bucket'
        r'\{[^}]*phase="decode"',)),
    "commit duration quantiles": ("timeseries", (
        r'histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(kyc_sync_phase_duration_seconds_bucket'
        r'\{[^}]*phase="commit"',)),
    "dead-lettered events per second by error class": (
        "timeseries", (r"by \(error_class\) \(rate\(kyc_sync_events_dead_lettered_total\b",)),
    "batches by outcome": ("timeseries", (r"by \(outcome\) \(\w+\(kyc_sync_batches_total\b",)),
    "time since the last success": (
        None, (r"\btime\(\) - \(?(?:max\()?kyc_sync_last_success_timestamp_seconds\b",)),
    "buffered events and keys": (
        "timeseries", (r"\bkyc_sync_buffered_events\b", r"\bkyc_sync_buffered_keys\b")),
    # From the lag exporter, which outlives the consumers.
    "group lag in messages per partition (exporter)": (
        "timeseries", (r"by \(partition\) \(kyc_sync_group_lag_messages\b",)),
    "group lag in seconds per partition (exporter)": (
        "timeseries", (r"by \(partition\) \(kyc_sync_group_lag_seconds\b",)),
    "group freshness: the oldest unapplied event (exporter)": (
        "stat", (r"\bkyc_sync_group_freshness_seconds\b",)),
    "group members and state (exporter)": (None, (r"\bkyc_sync_group_members\b",)),
    "progress of a full refresh or verify": (
        "timeseries",
        (r"\bkyc_sync_progress_events_read\b", r"\bkyc_sync_progress_events_planned\b")),
    "verify differences by kind": ("timeseries", (r"by \(kind\) \(kyc_sync_verify_differences\b",)),
}


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate keys (json keeps the last one silently)."""
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys), f"duplicate keys in {keys}"
    return dict(pairs)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text("utf-8"), object_pairs_hook=unique_keys)
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (all but rows)."""
    return [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]


def panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [str(t["expr"]) for t in panel.get("targets") or []]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variable name -> its Prometheus query (query variables only)."""
    found: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found[variable["name"]] = str(query["query"] if isinstance(query, dict) else query)
    return found


def all_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    exprs = [e for p in query_panels(dashboard) for e in panel_exprs(p)]
    return exprs + list(variable_queries(dashboard).values())


def balanced(expr: str) -> bool:
    """Brackets pair up and strings close, outside string literals."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for char in expr:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return quote is None and not stack


# --------------------------------------------------------------------------- the JSON


def test_only_json_dashboards_are_provisioned() -> None:
    files = sorted(p.name for p in DASHBOARDS.iterdir() if p.name != "README.md")
    assert files == ["kyc-sync.json"]


def test_dashboard_loads(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "kyc-sync"
    assert dashboard["title"] == "kyc-sync"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None  # provisioning assigns it
    assert dashboard["time"]["from"].startswith("now-")
    assert isinstance(dashboard["templating"]["list"], list)
    assert query_panels(dashboard)


def test_every_panel_queries_the_prometheus_datasource(dashboard: dict[str, Any]) -> None:
    for panel in query_panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        targets = panel.get("targets") or []
        assert targets, f"{title}: no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), title
        for target in targets:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title
            assert str(target["expr"]).strip(), title
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_the_datasource_is_a_variable_of_prometheus_datasources(
    dashboard: dict[str, Any]
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chooser = variables["datasource"]
    assert (chooser["type"], chooser["query"]) == ("datasource", "prometheus")
    assert not chooser.get("current")  # Grafana's default Prometheus until one is picked
    assert dashboard["templating"]["list"][0] is chooser  # the others query through it
    text = DASHBOARD.read_text("utf-8")
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text))
    assert uids == {"kyc-sync", "${datasource}", "-- Grafana --"}  # no fixed datasource uid
    assert "__inputs" not in dashboard  # provisioning would leave ${DS_...} unresolved


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_panel_titles_are_unique(dashboard: dict[str, Any]) -> None:
    titles = [p["title"] for p in query_panels(dashboard)]
    assert len(set(titles)) == len(titles)
    assert all(titles)


# --------------------------------------------------------------------------- the queries


def test_queries_are_well_formed(dashboard: dict[str, Any]) -> None:
    for expr in all_exprs(dashboard):
        assert balanced(expr), expr


def test_queries_use_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in all_exprs(dashboard):
        used = {a or b for a, b in VARIABLE.findall(expr)}
        assert sorted(v for v in used - defined if not v.startswith("__")) == [], expr


def test_queries_name_metrics_kyc_sync_exports(dashboard: dict[str, Any]) -> None:
    exposed = exposed_metric_names()
    for expr in all_exprs(dashboard):
        used = metric_names(expr)
        assert used, f"no kyc_sync_ metric in {expr}"
        assert sorted(used - exposed) == [], expr


def test_rates_are_taken_of_counters_only(dashboard: dict[str, Any]) -> None:
    for expr in all_exprs(dashboard):
        for name in RATE_ARGUMENT.findall(expr):
            assert name.endswith(COUNTER_SERIES), f"{name} is a gauge: {expr}"


def test_bucket_series_feed_histogram_quantile_by_le(dashboard: dict[str, Any]) -> None:
    for expr in all_exprs(dashboard):
        if "_bucket" in expr:
            assert "histogram_quantile(" in expr, expr
            assert re.search(r"\bby \([^)]*\ble\b", expr), expr


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("what", sorted(REQUIRED_PANELS))
def test_dashboard_shows_what_the_issue_asks(dashboard: dict[str, Any], what: str) -> None:
    kind, patterns = REQUIRED_PANELS[what]
    matching = [
        p["title"] for p in query_panels(dashboard)
        if (kind is None or p["type"] == kind)
        and all(any(re.search(pat, e) for e in panel_exprs(p)) for pat in patterns)
    ]
    assert matching, f"no {kind or 'panel'} shows {what}"


def test_every_exported_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    """A metric added to consumer/metrics.py gets a panel (or this test says which is missing)."""
    used = {n for e in all_exprs(dashboard) for n in metric_names(e)}
    families = exposed_families()
    missing = [
        f.name for f in families
        if not used & {f.name + s for s in SERIES_SUFFIXES.get(f.type, ("",))}
    ]
    assert missing == []


def test_balanced_helper() -> None:
    assert balanced('sum by (le) (rate(x_bucket{a="(", b=~"]"}[5m]))')
    assert not balanced("sum(rate(x[5m])")
    assert not balanced('x{a="b}')
    assert not balanced("x[5m)")
