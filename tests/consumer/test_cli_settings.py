"""Invalid settings stop the CLI with exit code 2 and one line naming the setting, before it
touches Kafka or the warehouse. The bootstrap servers point at a listening socket of the test,
which must see no connection. Most cases call ``main()`` in this process (fast); a few run the
real CLI as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from consumer.cli import main

PREFIX = "kyc-sync: invalid settings: "


class Runner(Protocol):
    def __call__(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def fake_broker() -> Iterator[socket.socket]:
    """A listening TCP socket: any connection kyc-sync makes waits in its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        yield sock


def bootstrap_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def was_contacted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def run_subprocess(
    tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
    full["KYC_SYNC_DUCKDB__PATH"] = str(tmp_path / "kyc.duckdb")
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args],
        env=full, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.fixture
def run_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Runner:
    """``main(args)`` in this process with exactly ``env`` as the KYC_SYNC_* environment."""
    for name in list(os.environ):
        if name.upper().startswith("KYC_SYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            patch.setenv("KYC_SYNC_DUCKDB__PATH", str(tmp_path / "kyc.duckdb"))
            for name, value in env.items():
                patch.setenv(name, value)
            code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def assert_rejected(
    result: subprocess.CompletedProcess[str], tmp_path: Path, *settings: str
) -> str:
    """Exit 2, nothing on stdout, one stderr line naming each of ``settings``; no database."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX)
    for setting in settings:
        assert setting in lines[0]
    assert list(tmp_path.glob("*.duckdb*")) == []
    return lines[0]


@pytest.mark.parametrize(
    ("env", "args", "setting"),
    [
        pytest.param({"KYC_SYNC_WAREHOUSE__KIND": "oracle"}, (), "warehouse.kind", id="kind"),
        pytest.param(
            {"KYC_SYNC_WAREHOUSE__TABLE": "kyc profile; drop table x"}, (), "warehouse.table",
            id="table-identifier",
        ),
        pytest.param(
            {"KYC_SYNC_DUCKDB__SCHEMA_NAME": "1st"}, (), "duckdb.schema_name", id="schema-name"
        ),
        pytest.param({"KYC_SYNC_WINDOW__SECONDS": "0"}, (), "window.seconds", id="window-0"),
        pytest.param({"KYC_SYNC_WINDOW__SECONDS": "-5"}, (), "window.seconds", id="window-neg"),
        pytest.param({}, ("--window-seconds", "0"), "window.seconds", id="window-flag"),
        pytest.param(
            {"KYC_SYNC_KAFKA__CLIENT_OPTIONS": '{"enable.auto.commit": true}'}, (),
            "kafka.client_options", id="reserved-client-option",
        ),
    ],
)
def test_invalid_setting_exits_2_naming_it(
    tmp_path: Path,
    fake_broker: socket.socket,
    run_cli: Runner,
    env: dict[str, str],
    args: tuple[str, ...],
    setting: str,
) -> None:
    env = {"KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap_of(fake_broker), **env}

    result = run_cli(env, "run", "--until-caught-up", *args)

    line = assert_rejected(result, tmp_path, setting)
    assert line.count(":") >= 2  # "kyc-sync: invalid settings: <setting>: <why>"
    assert not was_contacted(fake_broker)


@pytest.mark.parametrize("value", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_missing_bootstrap_servers(
    tmp_path: Path, run_cli: Runner, value: str | None
) -> None:
    env = {} if value is None else {"KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": value}

    result = run_cli(env, "run")

    line = assert_rejected(result, tmp_path, "kafka.bootstrap_servers")
    assert "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS" in line


def test_several_problems_on_one_line(
    tmp_path: Path, fake_broker: socket.socket, run_cli: Runner
) -> None:
    env = {
        "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap_of(fake_broker),
        "KYC_SYNC_WINDOW__SECONDS": "0",
        "KYC_SYNC_WAREHOUSE__KIND": "oracle",
    }

    result = run_cli(env, "run")

    assert_rejected(result, tmp_path, "window.seconds", "warehouse.kind")
    assert not was_contacted(fake_broker)


def test_invalid_setting_in_config_file(
    tmp_path: Path, fake_broker: socket.socket, run_cli: Runner
) -> None:
    config = tmp_path / "kyc-sync.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{bootstrap_of(fake_broker)}"\n\n[window]\nseconds = 0\n'
    )

    result = run_cli({}, "--config", str(config), "run")

    assert_rejected(result, tmp_path, "window.seconds")
    assert not was_contacted(fake_broker)


def test_missing_config_file(
    tmp_path: Path, fake_broker: socket.socket, run_cli: Runner
) -> None:
    env = {"KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap_of(fake_broker)}

    result = run_cli(env, "--config", str(tmp_path / "nope.toml"), "run")

    line = assert_rejected(result, tmp_path)
    assert "config file not found" in line
    assert not was_contacted(fake_broker)


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_and_log_format_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    config = tmp_path / "kyc-sync.toml"
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:9"\ngroup_id = "from-file"\n')
    options = ["--config", str(config), "--log-format", "json"]
    argv = [*options, "settings"] if where == "before" else ["settings", *options]

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert '"group_id": "from-file"' in out
    assert '"log_format": "json"' in out


@pytest.mark.parametrize("command", ["settings", "show", "produce-sample"])
def test_every_command_validates_first(
    tmp_path: Path, fake_broker: socket.socket, run_cli: Runner, command: str
) -> None:
    env = {
        "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap_of(fake_broker),
        "KYC_SYNC_WINDOW__SECONDS": "0",
    }

    result = run_cli(env, command)

    assert_rejected(result, tmp_path, "window.seconds")
    assert not was_contacted(fake_broker)


# --------------------------------------------------------------------------- the real CLI


def test_subprocess_invalid_window(tmp_path: Path, fake_broker: socket.socket) -> None:
    env = {
        "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS": bootstrap_of(fake_broker),
        "KYC_SYNC_WINDOW__SECONDS": "0",
    }

    result = run_subprocess(tmp_path, env, "run", "--until-caught-up")

    line = assert_rejected(result, tmp_path, "window.seconds")
    assert line == f"{PREFIX}window.seconds: Input should be greater than 0"
    assert not was_contacted(fake_broker)


def test_subprocess_missing_bootstrap_servers(tmp_path: Path) -> None:
    result = run_subprocess(tmp_path, {}, "run")

    line = assert_rejected(result, tmp_path, "kafka.bootstrap_servers")
    assert line == (
        f"{PREFIX}kafka.bootstrap_servers is required (KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS)"
    )
