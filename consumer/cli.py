"""``kyc-sync``: the command line.

Exit codes: 0 done; 1 stopped by a terminal error (nothing uncommitted was committed), printed as
one line; 2 invalid settings or usage, reported before touching Kafka or the warehouse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from consumer.ops.arguments import (
    parse_count,
    parse_datetime_ms,
    parse_instant,
    parse_partitions,
    parse_positive,
)
from consumer.ops.durations import parse_duration
from consumer.settings import Settings, load_settings
from consumer.telemetry.logs import setup_logging
from schemas.errors import KycSyncError, UsageError

log = logging.getLogger("kyc_sync")
T = TypeVar("T")
Handler = Callable[[Settings, argparse.Namespace], int]


def _package_version() -> str:
    try:
        return version("kyc-sync")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options every command takes, before or after the sub-command's name."""
    parser.add_argument("--config", type=Path, default=default,
                        help="TOML settings file (or KYC_SYNC_CONFIG)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="override log_format: plain text lines or one JSON object per line")


def _parser() -> argparse.ArgumentParser:
    from consumer.ops import commands

    parser = argparse.ArgumentParser(prog="kyc-sync", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kyc-sync {_package_version()}")
    _common_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)  # absent after the command: keep the global one
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Handler, help_text: str, kafka: bool = True
    ) -> argparse.ArgumentParser:
        """A sub-command; ``kafka``: it talks to Kafka, so kafka.bootstrap_servers is needed."""
        added: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common])
        added.set_defaults(handler=handler, needs_kafka=kafka)
        return added

    run = command("run", commands.run, "consume the audit topic and keep the table in sync")
    run.add_argument("--until-caught-up", action="store_true",
                     help="exit 0 once every assigned partition is read to its end and flushed")
    run.add_argument("--window-seconds", type=float, help="override window.seconds")
    run.add_argument("--on-invalid", choices=("dlq", "fail"),
                     help="override decoding.on_invalid: dead-letter invalid events, or stop")

    sample = command("produce-sample", commands.sample,
                     "produce the seed's sample audit trail")
    sample.add_argument("--partitions", type=_arg_type(parse_positive, "count"), default=3,
                        help="spread the events over partitions 0..N-1 (at most the topic's)")
    sample.add_argument("--create-topic", action="store_true", help="create the topic first")
    sample.add_argument("--seed", type=int, default=None, help="shuffle seed")

    show = command("show", commands.show, "print kyc_profile_current, or with --as-of the "
                   "profiles live at an instant from the history table (DuckDB)", kafka=False)
    show.add_argument("--as-of", metavar="ISO8601", type=_arg_type(parse_instant, "time"),
                      help="the profiles live at this instant (UTC unless an offset is given); "
                      "needs history.enabled")
    show.add_argument("--id", metavar="N", type=_arg_type(parse_count, "id"),
                      help="only this kyc_profile_id")
    _operations(command)
    _dead_letters(sub, common)
    command("settings", _print_settings, "print the effective settings, secrets redacted",
            kafka=False)
    return parser


def _operations(command: Callable[..., argparse.ArgumentParser]) -> None:
    """replay, lag, check, verify: see docs/operations.md."""
    from consumer.ops import commands

    duration = _arg_type(parse_duration, "duration")
    replay = command(
        "replay", commands.replay, "move the group's committed offsets (a dry run unless "
        "--execute), or rebuild the table from the topic (--full-refresh)")
    to = replay.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the earliest offset still kept")
    to.add_argument("--to-latest", action="store_true", help="the log end (skip everything)")
    to.add_argument("--to-datetime", metavar="ISO8601", type=_arg_type(parse_datetime_ms, "time"),
                    help="the first message at or after this time (UTC unless an offset is given)")
    to.add_argument("--by-duration", metavar="DURATION", type=duration,
                    help="the first message of DURATION ago, e.g. 2h, 90m, PT2H")
    to.add_argument("--shift-by", metavar="N", type=int, help="N messages from the committed "
                    "offset (negative: back)")
    to.add_argument("--to-offset", metavar="N", type=_arg_type(parse_count, "offset"),
                    help="this offset")
    to.add_argument("--full-refresh", action="store_true", help="rebuild kyc_profile_current "
                    "from the topic into a fresh table beside the running group and swap it in")
    to.add_argument("--export", metavar="FILE", type=Path, help="write the group's committed "
                    "offsets to FILE (topic,partition,offset, as kafka-consumer-groups)")
    to.add_argument("--from-file", metavar="FILE", type=Path, help="the offsets in FILE (as "
                    "--export or kafka-consumer-groups --export write them)")
    replay.add_argument("--partitions", metavar="0,2", type=_arg_type(parse_partitions, "list"),
                        help="only these partitions (default: all)")
    replay.add_argument("--execute", action="store_true", help="apply (the group's committed "
                        "offsets are saved to a file first, its path printed); without it: dry "
                        "run")
    replay.add_argument("--allow-partial", action="store_true", help="--full-refresh even when "
                        "retention has dropped the start of the topic")
    replay.add_argument("--json", action="store_true", help="print the plan as JSON")

    lag = command("lag", commands.lag, "per partition: committed, log end, lag in messages "
                  "and seconds; the last batch from the ledger")
    lag.add_argument("--json", action="store_true", help="machine-readable output")
    lag.add_argument("--max-lag", metavar="N", type=_arg_type(parse_count, "count"),
                     help="exit 1 when the total lag exceeds N messages")
    lag.add_argument("--max-age", metavar="DURATION", type=duration,
                     help="exit 1 when an unconsumed message is older, e.g. 15m")
    lag.add_argument("--members", action="store_true",
                     help="each member's consumer id, host and assigned partitions")
    lag.add_argument("--serve", action="store_true", help="run as the lag exporter: serve "
                     "these figures as Prometheus metrics until stopped (exporter.interval_s)")

    check = command("check", commands.check, "freshness, unique kyc_profile_id, no null keys; "
                    "with history on, the history table's invariants")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--max-age", metavar="DURATION", type=duration,
                       help="override checks.freshness_max_age_s, e.g. 15m")

    verify = command("verify", commands.verify, "prove the state table equals the topic "
                     "up to the group's committed offsets (reads only; exit 1 on a difference)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--textfile", metavar="PATH", type=Path, help="also write the verdict "
                        "as Prometheus metrics to PATH (node exporter's textfile collector)")


def _dead_letters(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """dlq inspect, dlq redrive: see docs/operations.md."""
    from consumer.decode.decoder import ERROR_CLASSES
    from consumer.ops import commands

    dlq = sub.add_parser("dlq", help="the dead-letter topic: inspect it, redrive what now "
                         "decodes", parents=[common])
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = actions.add_parser("inspect", parents=[common], help="counts by class and "
                                 "reason, source offsets and failure times")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=commands.dlq_inspect)
    redrive = actions.add_parser(
        "redrive", parents=[common], help="apply the dead letters that now decode (a dry run "
        "unless --execute); the still invalid stay in the topic")
    redrive.add_argument("--class", dest="error_class", choices=ERROR_CLASSES,
                         help="only dead letters of this class")
    redrive.add_argument("--execute", action="store_true", help="apply; without it: dry run")
    redrive.add_argument("--from-start", action="store_true", help="read the whole topic, not "
                         "from where the last redrive of this class stopped")
    redrive.add_argument("--json", action="store_true", help="machine-readable output")
    redrive.set_defaults(handler=commands.dlq_redrive)


def _arg_type(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """``parse`` for argparse: its ValueError message becomes the usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


def _print_settings(settings: Settings, _args: argparse.Namespace) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def load(args: argparse.Namespace) -> Settings:
    """The settings, with the command line's overrides; ``UsageError`` naming what is wrong."""
    overrides: dict[str, object] = {}
    if getattr(args, "log_format", None) is not None:
        overrides["log_format"] = args.log_format
    if getattr(args, "window_seconds", None) is not None:
        overrides["window"] = {"seconds": args.window_seconds}
    if getattr(args, "on_invalid", None) is not None:
        overrides["decoding"] = {"on_invalid": args.on_invalid}
    try:
        settings = load_settings(args.config, **overrides)
    except ValidationError as err:
        raise UsageError(f"invalid settings: {describe_invalid(err)}") from None
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"invalid settings: {_one_line(str(err))}") from None
    if getattr(args, "needs_kafka", True) and (problem := settings.kafka_problem()):
        raise UsageError(f"invalid settings: {problem}")
    return settings


def describe_invalid(err: ValidationError) -> str:
    """One line naming each invalid setting by its path, e.g. ``window.seconds: Input should
    be greater than 0``. Input values are left out: they may be secrets."""
    problems = []
    for error in err.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {message}" if path else message)
    return _one_line("; ".join(problems))


def _one_line(text: str) -> str:
    return " ".join(text.split())


PRIVATE_UMASK = 0o077
"""Files kyc-sync creates (the DuckDB database, its write-ahead log) hold profile data and
offsets: readable by their owner only."""

ALLOCATOR_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
"""polars' allocator (jemalloc) keeps freed pages for half a second (dirty), then hands them back
with ``MADV_FREE`` (muzzy), and such pages count in the process's RSS until the kernel is short
of memory. A window's compactions free and allocate the reduced state's size again each time:
kept pages left the RSS of a 1M-profile window 100-150 MiB above what was in use. With this,
freed pages go back at once; it costs some throughput (more page faults, ~10 % end to end here),
which the overlap of decode and consumption has room for."""

POLARS_ALLOCATOR_CONF = "dirty_decay_ms:500,muzzy_decay_ms:1000"
"""What ``import polars`` writes to ``_RJEM_MALLOC_CONF`` ahead of any value given: a process that
imported polars passes it on to every child it starts (a scheduler, a test, a benchmark)."""


def use_allocator_defaults() -> None:
    """Configure polars' allocator: ``ALLOCATOR_CONF``, then an operator's own
    ``_RJEM_MALLOC_CONF`` (the last setting of an option wins). polars' defaults inherited from
    a parent process are not an operator's choice and are dropped. Effective only before polars
    is first imported, which the command line does lazily, in the handlers."""
    given = os.environ.get("_RJEM_MALLOC_CONF", "")
    if given == POLARS_ALLOCATOR_CONF or given.startswith(POLARS_ALLOCATOR_CONF + ","):
        given = given.removeprefix(POLARS_ALLOCATOR_CONF).removeprefix(",")
    os.environ["_RJEM_MALLOC_CONF"] = ",".join(part for part in (ALLOCATOR_CONF, given) if part)


def main(argv: Sequence[str] | None = None) -> int:
    use_allocator_defaults()
    args = _parser().parse_args(argv)
    previous = os.umask(PRIVATE_UMASK)
    try:
        settings = load(args)
        setup_logging(settings.log_level, settings.log_format, sys.stderr)
        handler: Handler = args.handler
        return handler(settings, args)
    except KycSyncError as err:
        print(f"kyc-sync: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    finally:
        os.umask(previous)


if __name__ == "__main__":
    sys.exit(main())
