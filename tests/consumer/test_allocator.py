"""The command line configures polars' allocator before polars is imported (``ALLOCATOR_CONF``),
and leaves an operator's own ``_RJEM_MALLOC_CONF`` alone. Each case runs a fresh interpreter:
the setting only counts before polars' first import."""

from __future__ import annotations

import os
import subprocess
import sys

from consumer.cli import ALLOCATOR_CONF

SNIPPET = """
import os, sys
import consumer.cli
assert "polars" not in sys.modules, "importing the CLI imported polars"
consumer.cli.use_allocator_defaults()
import polars
print(os.environ["_RJEM_MALLOC_CONF"])
"""


def run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_polars_starts_with_the_allocator_conf_of_the_cli() -> None:
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}

    conf = run(env)

    # polars puts its own defaults first; the last setting of an option wins.
    assert conf.endswith("," + ALLOCATOR_CONF)


def test_an_operators_allocator_conf_is_kept() -> None:
    env = {**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:0"}

    conf = run(env)

    assert conf.endswith(",dirty_decay_ms:0")
    assert ALLOCATOR_CONF not in conf
