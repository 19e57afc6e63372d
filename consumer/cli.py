"""``kyc-sync``: the command line.

Exit codes: 0 done; 1 stopped by a terminal error (nothing uncommitted was committed);
2 invalid settings or usage, reported before touching Kafka or the warehouse.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from consumer.settings import Settings, load_settings

log = logging.getLogger("kyc_sync")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kyc-sync", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML settings file (or KYC_SYNC_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume the audit topic and keep the table in sync")
    run.add_argument("--until-caught-up", action="store_true",
                     help="exit 0 once every assigned partition is read to its end and flushed")
    run.add_argument("--window-seconds", type=float, help="override window.seconds")
    run.add_argument("--on-invalid", choices=("dlq", "fail"),
                     help="override decoding.on_invalid: dead-letter invalid events, or stop")

    sample = sub.add_parser("produce-sample", help="produce the seed's sample audit trail")
    sample.add_argument("--partitions", type=int, default=3)
    sample.add_argument("--create-topic", action="store_true", help="create the topic first")
    sample.add_argument("--seed", type=int, default=None, help="shuffle seed")

    sub.add_parser("show", help="print kyc_profile_current (DuckDB)")
    sub.add_parser("settings", help="print the effective settings, secrets redacted")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _load(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "window_seconds", None) is not None:
        overrides["window"] = {"seconds": args.window_seconds}
    if getattr(args, "on_invalid", None) is not None:
        overrides["decoding"] = {"on_invalid": args.on_invalid}
    try:
        return load_settings(args.config, **overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in err.errors()
        )
        raise SystemExit(f"kyc-sync: invalid settings: {problems}") from None
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"kyc-sync: invalid settings: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _load(args)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    from consumer import commands

    if args.command == "settings":
        print(json.dumps(settings.redacted(), indent=2))
        return 0
    return commands.dispatch(args, settings)


if __name__ == "__main__":
    sys.exit(main())
