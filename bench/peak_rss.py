"""Run a command and write its exact peak RSS (``wait4``'s ru_maxrss, bytes) to a file.

Why a separate process: Linux carries the high-water RSS of the address space a process had
before ``exec`` into its ``ru_maxrss``, and ``subprocess`` starts children with ``vfork``, so a
child started by the benchmark inherits the benchmark's own peak (its buffered messages, the
oracle). Started from this small process instead, the measured command's figure is its own.

    python -m bench.peak_rss OUT_FILE -- COMMAND [ARGS...]

Exits with the command's exit code; its stdin, stdout and stderr are passed through, and so are
SIGTERM and SIGINT sent to this process (a measured ``kyc-sync run`` is stopped as it would be).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m bench.peak_rss OUT_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    out, command = Path(args[0]), args[2:]
    proc = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: proc.send_signal(received))
    _, status, usage = os.wait4(proc.pid, 0)
    out.write_text(str(usage.ru_maxrss * 1024))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
