"""Fixtures of the warehouse tests: a fakesnow server (Snowflake's wire protocol over HTTP, backed
by DuckDB) for the Snowflake writer, and a fresh database name per test.

``fakesnow_server`` starts ``python -m fakesnow -s`` in a subprocess on a free port of 127.0.0.1,
waits until the port accepts connections and stops the server at the end of the session. The real
connector reaches it with ``host``/``port``/``protocol="http"``: nothing is patched in-process.
The fixture depends on nothing of this package, so it can move to ``tests/conftest.py`` as is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKESNOW_HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class FakesnowStartError(Exception):
    """The fakesnow server did not come up."""


def free_port(host: str = FAKESNOW_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the server's own shutdown), then SIGKILL if it lingers; only this process."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)


def start_fakesnow(
    work_dir: Path, host: str = FAKESNOW_HOST
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server on a free port; returns the process and the port (retries a port race)."""
    log_path = work_dir / "fakesnow.log"
    # Stage files (PUT) go under the server's temporary directory: keep them in the test's.
    env = {**os.environ, "TMPDIR": str(work_dir)}
    last_error = ""
    for _ in range(3):
        port = free_port(host)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fakesnow", "-s", "--host", host, "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _accepts(host, port):
                return proc, port
            time.sleep(0.1)
        _stop(proc)
        last_error = f"exit code {proc.returncode}" if proc.returncode is not None else "timeout"
    raise FakesnowStartError(f"fakesnow server did not start ({last_error}):\n{_tail(log_path)}")


@pytest.fixture(scope="session")
def fakesnow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of the session's fakesnow server (connect with ``protocol="http"``)."""
    try:
        proc, port = start_fakesnow(tmp_path_factory.mktemp("fakesnow"))
    except FakesnowStartError as err:
        raise pytest.fail.Exception(str(err), pytrace=False) from None
    try:
        yield FAKESNOW_HOST, port
    finally:
        _stop(proc)


@pytest.fixture
def snowflake_database() -> str:
    """A database name no other test uses (fakesnow creates it on first connect)."""
    return f"KYC_TEST_{uuid.uuid4().hex[:12].upper()}"
