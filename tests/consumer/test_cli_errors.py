"""Mistakes and missing parts around the CLI end with one line and exit 1 (or 2 for invalid
settings), never a traceback; the commands that need no Kafka work without its settings.

Run as the real CLI in a subprocess, with a clean ``KYC_SYNC_*`` environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.app import table_names
from consumer.settings import Settings
from warehouse.duckdb_writer import DuckDBWarehouse

SNOWFLAKE = {
    "KYC_SYNC_WAREHOUSE__KIND": "snowflake",
    "KYC_SYNC_SNOWFLAKE__ACCOUNT": "acct",
    "KYC_SYNC_SNOWFLAKE__USER": "kyc",
    "KYC_SYNC_SNOWFLAKE__PASSWORD": "secret",
    "KYC_SYNC_SNOWFLAKE__DATABASE": "KYC",
}


def kyc_sync(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
    full["KYC_SYNC_DUCKDB__PATH"] = str(tmp_path / "kyc.duckdb")
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], env=full, cwd=tmp_path,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The run's only stderr line (no traceback), with exit ``code`` and nothing on stdout."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert lines[0].startswith("kyc-sync: ")
    return lines[0]


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A port that accepts connections and never answers: a Snowflake host that hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def test_show_without_a_database_file(tmp_path: Path) -> None:
    line = one_line(kyc_sync(tmp_path, {}, "show"))

    assert f"no DuckDB database at {tmp_path / 'kyc.duckdb'}" in line
    assert not (tmp_path / "kyc.duckdb").exists()


def test_show_and_settings_need_no_kafka_settings(tmp_path: Path) -> None:
    db = tmp_path / "kyc.duckdb"
    settings = Settings(duckdb={"path": str(db)})  # type: ignore[arg-type]
    writer = DuckDBWarehouse(str(db), table_names(settings, False, "main"))
    writer.open()
    writer.close()

    shown = kyc_sync(tmp_path, {}, "show")
    printed = kyc_sync(tmp_path, {}, "settings")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == "(0 rows)"
    assert printed.returncode == 0, printed.stderr
    assert '"bootstrap_servers": ""' in printed.stdout


@pytest.mark.parametrize("command", ["run", "lag", "produce-sample"])
def test_commands_that_talk_to_kafka_still_need_its_servers(
    tmp_path: Path, command: str
) -> None:
    line = one_line(kyc_sync(tmp_path, {}, command), code=2)

    assert "kafka.bootstrap_servers is required" in line


def test_snowflake_without_its_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "site" / "snowflake"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ImportError("No module named \'snowflake.connector\'")\n')
    env = {**SNOWFLAKE, "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "PYTHONPATH": str(shadow.parent)}

    line = one_line(kyc_sync(tmp_path, env, "check"))

    assert "pip install 'kyc-sync[snowflake]'" in line


def test_check_gives_up_on_a_silent_snowflake_in_bounded_time(
    tmp_path: Path, silent_endpoint: int
) -> None:
    env = {**SNOWFLAKE, "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "KYC_SYNC_SNOWFLAKE__HOST": "127.0.0.1",
           "KYC_SYNC_SNOWFLAKE__PORT": str(silent_endpoint),
           "KYC_SYNC_SNOWFLAKE__PROTOCOL": "http",
           "KYC_SYNC_WAREHOUSE__READ_TIMEOUT_S": "3",
           "KYC_SYNC_KAFKA__REQUEST_TIMEOUT_S": "2"}  # check reads Kafka's side first

    started = time.monotonic()
    line = one_line(kyc_sync(tmp_path, env, "check"))
    elapsed = time.monotonic() - started

    assert line == "kyc-sync: the warehouse did not answer within 3s"
    assert elapsed < 20  # interpreter and connector start-up + 3 s; today it was over 60 s


def test_version(tmp_path: Path) -> None:
    result = kyc_sync(tmp_path, {}, "--version")

    assert result.returncode == 0, result.stderr
    name, number = result.stdout.split()
    assert name == "kyc-sync"
    assert number[0].isdigit()


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "kyc-sync.toml"
    config.write_text('[kafka]\nbootstrap_servers = \n')

    line = one_line(kyc_sync(tmp_path, {}, "--config", str(config), "settings"), code=2)

    assert line.startswith(f"kyc-sync: invalid settings: {config}: not valid TOML: ")


def test_log_level_in_lower_case(tmp_path: Path) -> None:
    result = kyc_sync(tmp_path, {"KYC_SYNC_LOG_LEVEL": "debug"}, "settings")

    assert result.returncode == 0, result.stderr
    assert '"log_level": "DEBUG"' in result.stdout


@pytest.mark.parametrize(
    ("variable", "setting"),
    [("KYC_SYNC_KAFKA__CLIENT_OPTIONS", "kafka.client_options"),
     ("KYC_SYNC_CHECKS__NOT_NULL", "checks.not_null")],
)
def test_bad_json_names_the_setting(tmp_path: Path, variable: str, setting: str) -> None:
    line = one_line(kyc_sync(tmp_path, {variable: '{"linger.ms": 5'}, "settings"), code=2)

    assert line.startswith(f"kyc-sync: invalid settings: {variable} ({setting}) is not valid "
                           "JSON: ")

