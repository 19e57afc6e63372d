"""``kyc-sync run`` processes for the benchmark stages: their settings, started one or several at
a time, each measured (wall time, exact peak RSS) and its flush lines read back.

Each process is started through ``bench.peak_rss`` (see bench/README.md, "Measuring peak RSS"),
in its own session so that a timeout can end it and only it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.localkafka import REPO_ROOT

RUN_COMMAND = (sys.executable, "-m", "consumer.cli", "run")
FLUSH_LINE = re.compile(r"flush batch_id=\S+ .*")
LOCKED_LINE = "database file is locked"
"""In the warning a DuckDB writer logs when another process holds the file and it retries."""
LOCK_WAIT_LINE = "000625"
"""Snowflake's lock wait timeout, in the warning of a retried flush."""


@dataclass(frozen=True, slots=True)
class Window:
    """The window settings of a run: ``seconds``, ``max_events`` (0: the product's default)."""

    seconds: float = 86_400.0
    max_events: int = 0


def run_env(
    bootstrap: str, topic: str, warehouse: Mapping[str, str], window: Window,
    group: str = "", extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a ``kyc-sync run`` process: this process's environment without any
    ``KYC_SYNC_`` setting, then the benchmark's. Metrics stay on (the real path), on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_SYNC_")}
    env.update(
        KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        KYC_SYNC_KAFKA__TOPIC=topic,
        KYC_SYNC_KAFKA__GROUP_ID=group or f"bench-{uuid.uuid4().hex[:8]}",
        KYC_SYNC_KAFKA__CONSUME_BATCH="10000",
        KYC_SYNC_WINDOW__SECONDS=f"{window.seconds:g}",
        KYC_SYNC_WINDOW__MAX_BYTES=str(1 << 50),
        KYC_SYNC_HISTORY__ENABLED="false",
        KYC_SYNC_LOG_LEVEL="INFO",
        KYC_SYNC_METRICS__PORT="0",
        **warehouse,
    )
    if window.max_events:
        env["KYC_SYNC_WINDOW__MAX_EVENTS"] = str(window.max_events)
    env.update(extra or {})
    return env


def duckdb_env(path: Path) -> dict[str, str]:
    return {"KYC_SYNC_WAREHOUSE__KIND": "duckdb", "KYC_SYNC_DUCKDB__PATH": str(path)}


@dataclass(frozen=True, slots=True)
class Ended:
    """One process, ended: exit code, seconds from the group's start to its exit, peak RSS,
    CPU seconds (user + system, its own and its children's), its log."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    log: str

    @property
    def flushes(self) -> list[dict[str, str]]:
        """The fields of each flush line of its log."""
        return [kv(m.group(0)) for m in FLUSH_LINE.finditer(self.log)]

    def count(self, text: str) -> int:
        return self.log.count(text)


def kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


class Running:
    """Processes started together through ``bench.peak_rss``; ``wait()`` ends them."""

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str], logs: Sequence[Path],
        timeout_s: float,
    ) -> None:
        self.logs = list(logs)
        self.started = time.perf_counter()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ended_at: list[float] = [0.0] * len(logs)
        self.status: list[int] = [0] * len(logs)
        self.cpu_s: list[float] = [0.0] * len(logs)
        self.threads: list[threading.Thread] = []
        for index, log_path in enumerate(self.logs):
            log_path.with_suffix(".rss").unlink(missing_ok=True)
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.peak_rss", str(log_path.with_suffix(".rss")),
                     "--", *command],
                    env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True,
                )
            self.procs.append(proc)
            thread = threading.Thread(target=self._reap, args=(index, timeout_s), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _reap(self, index: int, timeout_s: float) -> None:
        proc = self.procs[index]
        killer = threading.Timer(timeout_s, _kill_group, (proc.pid,))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        self.ended_at[index] = time.perf_counter()
        self.cpu_s[index] = usage.ru_utime + usage.ru_stime
        self.status[index] = os.waitstatus_to_exitcode(status)
        proc.returncode = self.status[index]

    def log_text(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to each process still running (``bench.peak_rss`` passes it on; kyc-sync
        flushes, commits and leaves)."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    def wait(self) -> list[Ended]:
        for thread in self.threads:
            thread.join()
        ended = []
        for index, log_path in enumerate(self.logs):
            rss = log_path.with_suffix(".rss")
            ended.append(Ended(
                self.status[index], self.ended_at[index] - self.started,
                int(rss.read_text()) if rss.exists() else 0, self.cpu_s[index],
                self.log_text(index),
            ))
        return ended


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


def run_until_caught_up(
    env: Mapping[str, str], logs: Sequence[Path], timeout_s: float,
) -> tuple[float, list[Ended]]:
    """``len(logs)`` instances of ``kyc-sync run --until-caught-up`` started together; returns
    the seconds until the last one exited and each one's figures. Raises if one failed."""
    running = Running([*RUN_COMMAND, "--until-caught-up"], env, logs, timeout_s)
    ended = running.wait()
    for index, one in enumerate(ended):
        if one.returncode != 0:
            raise RuntimeError(f"kyc-sync instance {index} exited {one.returncode}:\n"
                               f"{one.log[-4000:]}")
    return max(e.wall_s for e in ended), ended
