"""The benchmark's peak RSS is the measured command's own, not the benchmark process's."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.run import run_measured


def test_peak_rss_is_the_commands_own(tmp_path: Path) -> None:
    ballast = bytearray(400 * 2**20)  # this process's high-water mark goes above 400 MiB
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])
    measured = run_measured(
        [sys.executable, "-c", "x = bytearray(64 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
        {}, tmp_path / "probe.log", timeout_s=60,
    )
    del ballast
    assert measured.returncode == 0
    assert 64 * 2**20 < measured.peak_rss_bytes < 200 * 2**20


def test_exit_code_is_passed_through(tmp_path: Path) -> None:
    measured = run_measured(
        [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "probe.log", timeout_s=60
    )
    assert measured.returncode == 3
