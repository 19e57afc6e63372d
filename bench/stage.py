"""What the benchmark's added stages share: a broker, the machine's load, progress lines, and
their figures merged into ``bench/results/latest.json``.

Each stage (``bench.scale``, ``bench.scale_out``, ``bench.latency``, ``bench.wire_format``) runs
on its own (``python -m bench.<stage>``) against a broker it is given or a local one it starts,
writes its own ``bench/results/<stage>.json`` and adds its keys to ``latest.json``, leaving the
keys already there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.localkafka import REPO_ROOT, LocalKafka

RESULTS_DIR = REPO_ROOT / "bench" / "results"
LATEST = RESULTS_DIR / "latest.json"
WORK_ROOT = REPO_ROOT / ".local" / "bench"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    """The machine's CPUs and load average now: figures compare only within one run."""
    return {"cpus": os.cpu_count(), "loadavg": loadavg(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@contextmanager
def broker(bootstrap: str, work: Path) -> Iterator[str]:
    """``bootstrap`` if given, else ``KAFKA_BOOTSTRAP_SERVERS``, else a local broker in
    ``work/kafka`` for the stage's duration."""
    given = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if given:
        yield given
        return
    with LocalKafka(work_dir=work / "kafka") as local:
        say(f"local broker on {local.bootstrap} (started in {local.startup_seconds:.1f}s)")
        yield local.bootstrap


def fresh_dir(path: Path) -> Path:
    path = path.resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_results(name: str, figures: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """``figures`` into ``<results_dir>/<name>.json``, and merged into ``latest.json`` there
    (its other keys kept). Returns the stage's own file."""
    results_dir.mkdir(parents=True, exist_ok=True)
    own = results_dir / f"{name}.json"
    own.write_text(json.dumps(figures, indent=2) + "\n")
    latest = results_dir / LATEST.name
    merged: dict[str, Any] = json.loads(latest.read_text()) if latest.exists() else {}
    merged.update(figures)
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    return own


def common_args(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--bootstrap", default="",
                        help="use this broker (default: KAFKA_BOOTSTRAP_SERVERS, else a local one)")
    parser.add_argument("--work-dir", type=Path, default=WORK_ROOT / stage)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where <stage>.json and latest.json are written")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="limit of each kyc-sync process, seconds")
