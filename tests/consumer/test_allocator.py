"""The command line configures polars' allocator before polars is imported: ``ALLOCATOR_CONF``,
then an operator's own ``_RJEM_MALLOC_CONF``, not polars' defaults inherited from a parent.
Each case runs a fresh interpreter: the setting only counts before polars' first import."""

from __future__ import annotations

import os
import subprocess
import sys

import polars  # noqa: F401  (exports its allocator defaults, as a parent process would)

from consumer.cli import ALLOCATOR_CONF, POLARS_ALLOCATOR_CONF

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


def test_polars_defaults_inherited_from_a_parent_do_not_override_the_cli() -> None:
    # This test's own process imported polars, which exported its defaults.
    assert os.environ["_RJEM_MALLOC_CONF"].startswith(POLARS_ALLOCATOR_CONF)

    conf = run(dict(os.environ))

    assert conf.endswith("," + ALLOCATOR_CONF)


def test_an_operators_allocator_conf_comes_last() -> None:
    env = {**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:100"}

    conf = run(env)

    assert conf.endswith(f",{ALLOCATOR_CONF},dirty_decay_ms:100")


def test_an_operators_conf_passed_through_a_polars_parent_comes_last() -> None:
    env = {**os.environ, "_RJEM_MALLOC_CONF": f"{POLARS_ALLOCATOR_CONF},narenas:2"}

    conf = run(env)

    assert conf.endswith(f",{ALLOCATOR_CONF},narenas:2")


def test_an_operators_conf_that_only_starts_like_polars_defaults_is_kept_whole() -> None:
    env = {**os.environ, "_RJEM_MALLOC_CONF": f"{POLARS_ALLOCATOR_CONF}0"}

    conf = run(env)

    assert conf.endswith(f",{ALLOCATOR_CONF},{POLARS_ALLOCATOR_CONF}0")
