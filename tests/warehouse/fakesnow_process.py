"""Starting and stopping the Snowflake test double (``tests.warehouse.snowflake_double``: fakesnow's
server with Snowflake's locks and transaction ends) in a subprocess, for the warehouse tests and
the chaos run.

``start_fakesnow`` runs ``python -m tests.warehouse.snowflake_double`` on a free port of
127.0.0.1 and waits until the port accepts connections. The real connector reaches it with
``host``/``port``/``protocol="http"``: nothing is patched in-process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def stop_fakesnow(proc: subprocess.Popen[bytes]) -> None:
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
    work_dir: Path, idle_abort_s: float = 300.0, host: str = FAKESNOW_HOST,
    table_locks: bool = True,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the double on a free port; returns the process and the port (retries a port race).

    ``idle_abort_s``: a transaction that blocks another and has been idle this long is aborted
    (Snowflake: about 5 minutes). ``table_locks`` False: concurrent writes meet DuckDB's
    conflict detection instead of waiting. Its log is ``work_dir/fakesnow.log``."""
    log_path = work_dir / "fakesnow.log"
    # Stage files (PUT) go under the server's temporary directory: keep them in the test's.
    env = {**os.environ, "TMPDIR": str(work_dir)}
    last_error = ""
    for _ in range(3):
        port = free_port(host)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.warehouse.snowflake_double", "--host", host,
                 "--port", str(port), "--idle-abort-s", str(idle_abort_s),
                 *([] if table_locks else ["--no-table-locks"])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _accepts(host, port):
                return proc, port
            time.sleep(0.1)
        stop_fakesnow(proc)
        last_error = f"exit code {proc.returncode}" if proc.returncode is not None else "timeout"
    raise FakesnowStartError(f"fakesnow server did not start ({last_error}):\n{_tail(log_path)}")
