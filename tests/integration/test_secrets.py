"""Secrets never show in what kyc-sync prints: logs (DEBUG, with librdkafka's configuration
dump), the metrics endpoints, error messages, the ``settings`` dump.

Every ``SecretStr`` setting gets a unique sentinel value, and so do secret librdkafka options in
``kafka.client_options``; the CLI's whole output is then searched for the sentinels. The SASL
settings are passed to librdkafka for real: with security protocol PLAINTEXT it accepts them
(with a configuration warning) and does not use them, so the session broker can serve the run.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from consumer.settings import REDACTED
from tests.consumer.test_secret_redaction import env_name, secret_settings
from tests.integration.harness import cli_env, read_current, run_cli, start_cli
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

METRICS_URL = re.compile(r"metrics on (http://\S+)/metrics")


def secret_env() -> tuple[dict[str, str], list[str]]:
    """KYC_SYNC_* variables setting every secret to a sentinel, and the sentinels."""
    values = {env_name(path): sentinel for path, sentinel in secret_settings().items()}
    option_secret = f"Sentinel{uuid.uuid4().hex}"
    values.update(
        KYC_SYNC_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        KYC_SYNC_KAFKA__SASL_USERNAME="kycsync",
        KYC_SYNC_KAFKA__CLIENT_OPTIONS=json.dumps(
            {"ssl.key.password": option_secret, "debug": "conf"}
        ),
        KYC_SYNC_LOG_LEVEL="DEBUG",
        KYC_SYNC_METRICS__PORT="0",
    )
    sentinels = [*(v for k, v in values.items() if v.startswith("Sentinel")), option_secret]
    assert {"KYC_SYNC_KAFKA__SASL_PASSWORD", "KYC_SYNC_DECODING__SCHEMA_REGISTRY_PASSWORD"} <= set(
        values
    )
    return values, sentinels


def assert_no_secret(text: str, sentinels: list[str], where: str) -> None:
    leaked = [s for s in sentinels if s in text]
    assert leaked == [], f"{len(leaked)} secret(s) in {where}"


def wait_for_log(path: Path, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not logged within {timeout}s:\n{text[-3000:]}")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


def test_run_logs_and_metrics_hide_secrets(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    secrets, sentinels = secret_env()
    env = cli_env(kafka_bootstrap, topic_name, db, f"g-{topic_name}", **secrets)
    produced = run_cli(env, "produce-sample", "--partitions", "1", timeout=60)
    assert produced.returncode == 0, produced.stderr

    log = tmp_path / "run.log"
    proc = start_cli(env, "run", log=log)
    try:
        text = wait_for_log(log, r"flush batch_id=\w+ reason=\w+ events=8 ")
        found = METRICS_URL.search(text)
        assert found is not None, text[-3000:]
        scraped = {path: scrape(found.group(1) + path) for path in ("/metrics", "/readyz")}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)

    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert sorted(read_current(db)) == [1, 2, 3]
    assert f'"sasl_password": "{REDACTED}"' in output  # the settings dump was logged
    assert "sasl.password = [redacted]" in output  # and librdkafka's configuration dump
    assert "kyc_sync_" in scraped["/metrics"]
    assert_no_secret(produced.stdout + produced.stderr, sentinels, "produce-sample output")
    assert_no_secret(output, sentinels, "run output")
    for path, body in scraped.items():
        assert_no_secret(body, sentinels, path)


def test_settings_command_hides_secrets(tmp_path: Path) -> None:
    secrets, sentinels = secret_env()
    env = cli_env("127.0.0.1:9", "audit", tmp_path / "kyc.duckdb", "g", **secrets)

    shown = run_cli(env, "settings", timeout=30)

    assert shown.returncode == 0, shown.stderr
    assert_no_secret(shown.stdout + shown.stderr, sentinels, "settings output")
    dumped = json.loads(shown.stdout)
    for path in secret_settings():
        section, name = path.split(".")
        assert dumped[section][name] == REDACTED
    assert dumped["kafka"]["client_options"]["ssl.key.password"] == REDACTED


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("missing-topic", 1, "does not exist"),
        ("warehouse-fault", 1, "injected terminal warehouse fault"),
        ("invalid-settings", 2, "invalid settings: window.seconds"),
    ],
)
def test_failing_runs_hide_secrets(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, case: str, exit_code: int,
    message: str,
) -> None:
    secrets, sentinels = secret_env()
    topic = topic_name
    if case == "missing-topic":
        topic = f"{topic_name}-missing"
    else:
        create_topic(kafka_bootstrap, topic_name, partitions=1)
    if case == "warehouse-fault":
        secrets["KYC_SYNC_FAULTS__WAREHOUSE"] = "terminal"
    if case == "invalid-settings":
        secrets["KYC_SYNC_WINDOW__SECONDS"] = "0"
    env = cli_env(kafka_bootstrap, topic, tmp_path / "kyc.duckdb", f"g-{topic_name}", **secrets)
    if case == "warehouse-fault":
        seeded = run_cli(env, "produce-sample", "--partitions", "1", timeout=60)
        assert seeded.returncode == 0, seeded.stderr

    failed = run_cli(env, "run", "--until-caught-up", timeout=60)

    assert failed.returncode == exit_code, failed.stderr[-3000:]
    assert message in failed.stderr
    assert "Traceback" not in failed.stderr
    assert_no_secret(failed.stdout + failed.stderr, sentinels, f"{case} output")
