"""Static checks of the container deployment: docker-compose.yml, the Dockerfile, the Prometheus
and Grafana files under deploy/. No Docker engine is needed (none runs where the suite runs):
the files are parsed and checked against the settings model, the CLI and the metrics."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from batcher.ranges import PartitionRange
from consumer import cli
from consumer.ops.exporter import LagExporter
from consumer.ops.lag import LagReport, PartitionLag
from consumer.ops.ledger import LastBatch
from consumer.ops.offsets import GroupInfo, PartitionOffsets
from consumer.ops.verify import verdict_metrics
from consumer.settings import Settings, load_settings
from consumer.telemetry.metrics import PrometheusObserver
from consumer.telemetry.progress import Progress
from tools.constraints import closure, top_level
from tools.settings_doc import rows

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
KYC_SYNC_IMAGE = "kyc-sync:local"
EXPECTED_PORTS = {
    "kafka": 9094, "schema-registry": 8080, "kyc-sync": 9464, "kyc-sync-exporter": 9464,
    "prometheus": 9090, "grafana": 3000,
}
ALERTS = {"KycSyncStale", "KycSyncLagHigh", "KycSyncDeadLetters", "KycSyncFlushesFailing",
          "KycSyncExporterAbsent", "KycSyncExporterFailing", "KycSyncVerifyDifferences",
          "KycSyncVerifyNotRun"}
ENV_NAME = re.compile(r"\bKYC_SYNC_[A-Z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    assert found
    return found


def one_shot(service: Mapping[str, Any]) -> bool:
    """A service that runs to completion (``restart: "no"``) rather than staying up."""
    return service.get("restart") == "no"


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def container_ports(service: Mapping[str, Any]) -> dict[int, str]:
    """Published container port -> host address ("" when on every address)."""
    published: dict[int, str] = {}
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        container = int(parts[-1].split("/")[0])
        published[container] = parts[0] if len(parts) == 3 else ""
    return published


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text("utf-8"))
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            yield keyword.upper(), rest.strip()


def setting_env_names() -> set[str]:
    return {env for env, _, _ in rows()} | {"KYC_SYNC_CONFIG"}


def metrics_port(services: Mapping[str, Any]) -> int:
    port = environment(services["kyc-sync"]).get("KYC_SYNC_METRICS__PORT")
    return int(port) if port else Settings.model_fields["metrics"].default.port


# --------------------------------------------------------------------------- compose


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name, s in services.items() if not (s.get("image") or s.get("build"))]
    assert missing == []
    assert {"kafka", "topic-init", "schema-registry", "kyc-sync", "kyc-sync-exporter",
            "sample-producer", "prometheus", "grafana"} <= services.keys()


def test_kyc_sync_image_is_built_from_the_dockerfile(services: dict[str, dict[str, Any]]
                                                     ) -> None:
    users = [name for name, s in services.items() if s.get("image") == KYC_SYNC_IMAGE]
    assert sorted(users) == ["kyc-sync", "kyc-sync-exporter", "sample-producer"]
    for name in users:  # each can build it, so `up` never tries to pull a local image
        build = services[name]["build"]
        assert (ROOT / build["context"] / "Dockerfile").is_file()


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if one_shot(service):
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        assert check.get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_one_shots_are_the_topic_init_and_the_sample_producer(
    services: dict[str, dict[str, Any]]
) -> None:
    assert sorted(n for n, s in services.items() if one_shot(s)) == [
        "sample-producer", "topic-init",
    ]


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long form with a condition"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), (name, target)
            elif condition == "service_completed_successfully":
                assert one_shot(services[target]), (name, target)
            else:
                assert condition == "service_started", (name, target, condition)
    kyc = services["kyc-sync"]["depends_on"]
    assert kyc["kafka"]["condition"] == "service_healthy"
    assert kyc["topic-init"]["condition"] == "service_completed_successfully"
    assert kyc["schema-registry"]["condition"] == "service_healthy"


def test_dependencies_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in services[name].get("depends_on") or {}:
            visit(target, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_ports_are_published_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, port in EXPECTED_PORTS.items():
        published = container_ports(services[name])
        assert port in published, f"{name} does not publish {port}"
    for name, service in services.items():
        for port, host in container_ports(service).items():
            assert host == "127.0.0.1", f"{name}:{port} is published on every address"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        str(v).split(":")[0]
        for s in compose["services"].values() for v in s.get("volumes") or []
        if not str(v).startswith((".", "/"))
    }
    assert used <= declared
    assert "kyc-data" in used


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: {source} missing"


def test_topic_init_creates_the_topic_with_three_partitions(
    services: dict[str, dict[str, Any]]
) -> None:
    command = [str(c) for c in services["topic-init"]["command"]]
    topic = load_settings(kafka={"bootstrap_servers": "x:1"}).kafka.topic
    assert command[command.index("--topic") + 1] == topic
    assert command[command.index("--partitions") + 1] == "3"
    assert environment(services["kyc-sync"])["KYC_SYNC_KAFKA__TOPIC"] == topic


def test_every_kyc_sync_env_name_is_a_setting() -> None:
    known = setting_env_names()
    for path in (COMPOSE, DOCKERFILE):
        used = set(ENV_NAME.findall(path.read_text("utf-8")))  # comments included
        assert used, path
        assert sorted(used - known) == [], path.name


@pytest.mark.parametrize("service", ["kyc-sync", "kyc-sync-exporter", "sample-producer"])
def test_kyc_sync_environment_makes_valid_settings(
    services: dict[str, dict[str, Any]], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("KYC_SYNC_")]:
        monkeypatch.delenv(name)
    for name, value in environment(services[service]).items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.decoding.format == "confluent"
    assert settings.decoding.schema_registry_url.startswith("http://schema-registry:8080/")
    assert settings.decoding.schema_registry_url.endswith("/apis/ccompat/v7")


def test_kyc_sync_serves_metrics_on_every_address(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kyc-sync"])
    assert env["KYC_SYNC_METRICS__HOST"] == "0.0.0.0"
    assert metrics_port(services) in container_ports(services["kyc-sync"])
    assert "/healthz" in str(services["kyc-sync"]["healthcheck"]["test"])
    assert str(metrics_port(services)) in str(services["kyc-sync"]["healthcheck"]["test"])


@pytest.mark.parametrize("service", ["kyc-sync", "kyc-sync-exporter", "sample-producer"])
def test_commands_are_valid_cli_invocations(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    args = cli._parser().parse_args([str(a) for a in services[service]["command"]])
    expected = {"kyc-sync": "run", "kyc-sync-exporter": "lag",
                "sample-producer": "produce-sample"}[service]
    assert args.command == expected


def test_the_exporter_reports_on_kyc_syncs_group_and_reads_its_ledger(
    services: dict[str, dict[str, Any]], prometheus: dict[str, Any]
) -> None:
    exporter, consumer = services["kyc-sync-exporter"], services["kyc-sync"]
    args = cli._parser().parse_args([str(a) for a in exporter["command"]])
    assert args.serve
    env, run_env = environment(exporter), environment(consumer)
    for name in ("KYC_SYNC_KAFKA__GROUP_ID", "KYC_SYNC_KAFKA__TOPIC", "KYC_SYNC_DUCKDB__PATH"):
        assert env[name] == run_env[name], name
    assert env["KYC_SYNC_METRICS__HOST"] == "0.0.0.0"
    assert "kyc-data:/data:ro" in exporter["volumes"]
    assert "/healthz" in str(exporter["healthcheck"]["test"])
    assert "kyc-sync" not in (exporter.get("depends_on") or {})  # it outlives the consumers
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for c in jobs["kyc-sync-exporter"]["static_configs"] for t in c["targets"]]
    assert targets == [f"kyc-sync-exporter:{env['KYC_SYNC_METRICS__PORT']}"]


def test_registry_is_confluent_compatible(services: dict[str, dict[str, Any]]) -> None:
    image = services["schema-registry"]["image"]
    assert image.startswith(("apicurio/apicurio-registry:3.", "confluentinc/cp-schema-registry:"))


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    data = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert isinstance(data, dict)
    return data


def test_prometheus_scrapes_the_kyc_sync_port(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    job = jobs["kyc-sync"]
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"kyc-sync:{metrics_port(services)}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_loads_its_config_and_rules(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    service = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in service["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


# Series names each metric type puts into Prometheus (prometheus-client also exposes _created).
SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
METRIC_NAME = re.compile(r"(?<![\w:])kyc_sync_[A-Za-z0-9_:]*")
DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")


def exposed_families() -> list[Metric]:
    """Every metric family kyc-sync exposes, each on a fresh registry: the run loop's
    observer, the lag exporter (with a report, so that its computed families show), the
    progress of the long operations, a scheduled verify's verdict."""
    observer = PrometheusObserver("kyc_profile_audit", registry=CollectorRegistry())
    exporter = LagExporter("kyc_profile_audit", "kyc-sync", lambda: REPORT)
    exporter.refresh()
    progress = Progress("verify", (PartitionRange(0, 0, 1),), ("read",))
    verdict = verdict_metrics("kyc_profile_audit", "kyc-sync", None, 0.0)
    return [f for r in (observer.registry, exporter.registry, progress.registry, verdict)
            for f in r.collect()]


REPORT = LagReport(
    "kyc_profile_audit", "kyc-sync",
    (PartitionLag(PartitionOffsets(0, 1, 0, 2), 0),), 1_000,
    LastBatch("b", datetime(2027, 1, 1), None, 1), None,
    group_info=GroupInfo("kyc-sync", "EMPTY"),
)


def exposed_metric_names() -> set[str]:
    """The series names Prometheus stores from a scrape of kyc-sync: a gauge's own name, a
    counter's ``_total``, a histogram's ``_bucket``/``_sum``/``_count`` (and ``_created``),
    also for labelled families that have no child yet (so no sample to list). Never the bare
    name of a counter or histogram: a query naming one finds nothing."""
    names: set[str] = set()
    for family in exposed_families():
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The kyc_sync_ metric names a PromQL expression selects."""
    return set(METRIC_NAME.findall(expr))


def test_exposed_metric_names_are_series_names() -> None:
    exposed = exposed_metric_names()
    assert {"kyc_sync_events_consumed_total", "kyc_sync_events_dead_lettered_total",
            "kyc_sync_phase_duration_seconds_bucket", "kyc_sync_phase_duration_seconds_count",
            "kyc_sync_freshness_seconds", "kyc_sync_partition_lag_messages"} <= exposed
    assert not {"kyc_sync_events_consumed", "kyc_sync_phase_duration_seconds",
                "kyc_sync_freshness_seconds_total"} & exposed
    assert metric_names('rate(kyc_sync_rows_total{outcome="x"}[5m]) / kyc_sync_a:b') == {
        "kyc_sync_rows_total", "kyc_sync_a:b",
    }


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict[str, Any]]:
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    found = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert len(found) == sum(len(g["rules"]) for g in rules["groups"]), "duplicate alert names"
    return found


def test_alert_rules_use_metrics_kyc_sync_exposes(alerts: dict[str, dict[str, Any]]) -> None:
    assert alerts.keys() >= ALERTS
    exposed = exposed_metric_names()
    for name, rule in alerts.items():
        used = metric_names(rule["expr"])
        assert used or "up{" in rule["expr"], name
        assert sorted(used - exposed) == [], name


def test_alert_rules_are_complete(alerts: dict[str, dict[str, Any]]) -> None:
    for name, rule in alerts.items():
        assert DURATION.fullmatch(str(rule.get("for", ""))), f"{name}: no `for` duration"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_alert_rules_do_not_name_a_scrape_job(alerts: dict[str, dict[str, Any]]) -> None:
    """A deployment names its scrape job as it likes: no rule selects one."""
    for name, rule in alerts.items():
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", str(rule["expr"])), name


def test_an_absent_rule_fires_when_the_series_vanish(alerts: dict[str, dict[str, Any]]) -> None:
    absent = [r for r in alerts.values() if re.search(r"\babsent\(kyc_sync_\w+\)", r["expr"])]
    assert absent
    assert all(r["labels"]["severity"] == "critical" for r in absent)
    down = str(alerts["KycSyncDown"]["expr"])
    assert "up == 0" in down
    assert "kyc_sync_" in down  # the targets that export kyc-sync metrics, by any job name


def rule_on(alerts: Mapping[str, Mapping[str, Any]], metric: str) -> list[str]:
    """The expressions of the rules that select ``metric``."""
    return [str(r["expr"]) for r in alerts.values() if metric in metric_names(str(r["expr"]))]


def test_alert_rules_mirror_the_seed_monitoring(alerts: dict[str, dict[str, Any]]) -> None:
    space = re.compile(r"\s+")
    # freshness above 15 minutes: an event waiting longer, from the exporter
    freshness = rule_on(alerts, "kyc_sync_group_freshness_seconds")
    assert any(re.search(r"\)\s*>\s*900\b", e) for e in freshness)
    # lag above a threshold, from the exporter (it outlives the consumers)
    lag = rule_on(alerts, "kyc_sync_group_lag_seconds") + rule_on(
        alerts, "kyc_sync_group_lag_messages")
    assert any(re.search(r"\)\s*>\s*\d+", e) for e in lag)
    # the exporter itself, absent()
    assert any(e.startswith("absent(kyc_sync_exporter_")
               for e in rule_on(alerts, "kyc_sync_exporter_last_success_timestamp_seconds"))
    # a scheduled verify that found differences
    assert any(re.search(r"\)\s*>\s*0\b", e)
               for e in rule_on(alerts, "kyc_sync_verify_differences"))
    # any dead-lettered event
    dlq = rule_on(alerts, "kyc_sync_events_dead_lettered_total")
    assert any(re.search(r"\)\s*>\s*0\b", e) for e in dlq)
    # consecutive failed flushes: failures and no success over the same range
    flushes = [space.sub(" ", e) for e in rule_on(alerts, "kyc_sync_batches_total")]
    assert any('outcome="failed"' in e and 'outcome="ok"' in e and "== 0" in e for e in flushes)
    assert alerts["KycSyncFlushesFailing"]["labels"]["severity"] == "critical"


# --------------------------------------------------------------------------- Grafana


def test_grafana_datasource_is_the_prometheus_service(services: dict[str, dict[str, Any]]
                                                      ) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert [(s["type"], s["url"], s["uid"]) for s in sources] == [
        ("prometheus", f"http://prometheus:{EXPECTED_PORTS['prometheus']}", "prometheus"),
    ]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in (
        services["grafana"]["volumes"]
    )
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_grafana_dashboard_folder_is_mounted(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "kyc-sync.yml")
    (provider,) = config["providers"]
    mounts = dict(str(v).rsplit(":", 2)[:2] for v in services["grafana"]["volumes"]
                  if str(v).startswith("."))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert provider["folder"] == "kyc-sync"
    assert (DEPLOY / "grafana" / "dashboards").is_dir()


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_kyc_sync_as_a_non_root_user(services: dict[str, dict[str, Any]]
                                                     ) -> None:
    instructions = list(dockerfile_instructions())
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[-1]
            for kind, rest in instructions if kind == "ARG"}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    users = [rest for kind, rest in instructions if kind == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    assert ("ENTRYPOINT", '["kyc-sync"]') in instructions
    assert ("CMD", '["run"]') in instructions
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert "kyc-sync" in scripts
    (healthcheck,) = [rest for kind, rest in instructions if kind == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert ("EXPOSE", str(metrics_port(services))) in instructions
    env = " ".join(rest for kind, rest in instructions if kind == "ENV")
    assert "KYC_SYNC_METRICS__HOST=0.0.0.0" in env
    assert f"KYC_SYNC_METRICS__PORT={metrics_port(services)}" in env


def runtime_packages(pyproject: dict[str, Any]) -> set[str]:
    """The top-level packages the wheel installs (``packages.find`` includes ``name*``)."""
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {name.rstrip("*") for name in include}


def test_dockerfile_installs_only_the_runtime_package() -> None:
    instructions = list(dockerfile_instructions())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    packages = runtime_packages(pyproject)
    copied = {rest.split()[0] for kind, rest in instructions
              if kind == "COPY" and not rest.startswith("--from")}
    assert copied == packages | {"pyproject.toml"}
    installs = " ".join(rest for kind, rest in instructions if kind == "RUN")
    assert "pip install --constraint constraints.txt \".${EXTRAS:+[$EXTRAS]}\"" in installs
    assert "pip install --constraint constraints.txt --upgrade pip" in installs
    assert "[dev]" not in installs
    (first_copy,) = [rest for kind, rest in instructions
                     if kind == "COPY" and rest.startswith("pyproject.toml")]
    assert "constraints.txt" in first_copy.split()
    assert "snowflake" in pyproject["project"]["optional-dependencies"]


def pinned_versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            pins[name] = version
    return pins


def test_image_versions_are_pinned_for_every_runtime_dependency() -> None:
    """constraints.txt pins each package the runtime dependencies pull in (with the Snowflake
    extra), at a version the dependency ranges accept."""
    pins = pinned_versions()
    needed = closure(top_level())
    assert sorted(set(needed) - set(pins)) == []
    assert "pip" in pins
    for requirement in top_level():
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(pins[name], prereleases=True), requirement


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text("utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    readme = pyproject["project"]["readme"]
    assert allowed == runtime_packages(pyproject) | {
        "pyproject.toml", readme, "constraints.txt",
    }
