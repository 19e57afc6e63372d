"""Decode throughput of the packaged 8-field schema next to a 16-field evolved one.

The evolved schema adds eight fields of the kinds a KYC platform adds: nullable text, an int, a
decimal, a date, a nanosecond timestamp, a uuid, a boolean and a nullable enum. Both are decoded
in memory (no broker) with ``decode_batch`` in consume-sized batches, the way the run loop does;
the evolved schema must stay on the columnar path (checked: no message goes one by one).

    python -m bench.evolved [--events N] [--batch B] [--repeat R]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import decimal
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumer.decode.decoder import PlainAvroDecoder
from consumer.decode.encoder import AuditEncoder, message_key
from schemas import audit_schema

EXTRA_FIELDS: tuple[dict[str, Any], ...] = (
    {"name": "risk_rating", "type": ["null", "string"], "default": None},
    {"name": "score", "type": "int", "default": 0},
    {"name": "credit_limit", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                               "precision": 12, "scale": 2}], "default": None},
    {"name": "birth_date", "type": ["null", {"type": "int", "logicalType": "date"}],
     "default": None},
    {"name": "reviewed_at", "type": ["null", {"type": "long", "logicalType": "timestamp-nanos"}],
     "default": None},
    {"name": "case_ref", "type": {"type": "string", "logicalType": "uuid"}, "default": ""},
    {"name": "is_pep", "type": "boolean", "default": False},
    {"name": "tier", "type": ["null", {"type": "enum", "name": "Tier",
                                       "symbols": ["GOLD", "SILVER", "BRONZE"]}],
     "default": None},
)


def evolved_schema() -> dict[str, Any]:
    schema = copy.deepcopy(audit_schema())
    schema["fields"] += copy.deepcopy(list(EXTRA_FIELDS))
    return schema


BASE = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)


def record(i: int, evolved: bool) -> dict[str, Any]:
    at = BASE + dt.timedelta(milliseconds=i)
    rec: dict[str, Any] = {
        "kyc_profile_id": i % 1_000_000, "goldtier_id": f"GT-{i:08d}",
        "cid": f"CID-{i:08d}", "party_id": None if i % 5 == 0 else f"PARTY-{i:08d}",
        "created_date": BASE, "updated_date": at, "op_type": ("INSERT", "UPDATE")[i % 2],
        "op_time": at,
    }
    if evolved:
        rec |= {
            "risk_rating": None if i % 3 else "high", "score": i % 1000,
            "credit_limit": decimal.Decimal(i % 100_000).scaleb(-2),
            "birth_date": dt.date(1960 + i % 40, 1 + i % 12, 1 + i % 28),
            "reviewed_at": 1_705_000_000_000_000_000 + i, "case_ref": str(uuid.UUID(int=i)),
            "is_pep": i % 7 == 0, "tier": (None, "GOLD", "SILVER", "BRONZE")[i % 4],
        }
    return rec


@dataclass(frozen=True, slots=True)
class Rate:
    fields: int
    events: int
    seconds: float
    singles: int

    @property
    def per_s(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True, slots=True)
class Workload:
    """Encoded messages of one schema and a decoder for them."""

    fields: int
    values: list[bytes | None]
    keys: list[bytes | None]
    decoder: PlainAvroDecoder


def workload(events: int, evolved: bool) -> Workload:
    schema = evolved_schema() if evolved else audit_schema()
    encoder = AuditEncoder(schema)
    values: list[bytes | None] = [encoder.encode(record(i, evolved)) for i in range(events)]
    keys: list[bytes | None] = [message_key(i % 1_000_000) for i in range(events)]
    return Workload(len(schema["fields"]), values, keys, PlainAvroDecoder(schema))


def decode_once(work: Workload, batch: int = 10_000) -> Rate:
    """Time ``decode_batch`` over the workload in consume-sized batches."""
    decoder, values, keys = work.decoder, work.values, work.keys
    singles = 0
    started = time.perf_counter()
    for start in range(0, len(values), batch):
        decoded = decoder.decode_batch(values[start:start + batch], keys[start:start + batch])
        singles += len(decoded.singles)
    return Rate(work.fields, len(values), time.perf_counter() - started, singles)


def decode_rates(events: int, batch: int = 10_000, repeat: int = 5) -> tuple[Rate, Rate]:
    """The best of ``repeat`` interleaved runs for the 8-field and the 16-field schema (the
    best run is the one least disturbed by other work on a shared machine)."""
    works = [workload(events, evolved) for evolved in (False, True)]
    for work in works:  # warm up: schema plans, polars
        work.decoder.decode_batch(work.values[:batch], work.keys[:batch])
    best: list[Rate | None] = [None, None]
    for _ in range(repeat):
        for i, work in enumerate(works):
            rate = decode_once(work, batch)
            known = best[i]
            if known is None or rate.seconds < known.seconds:
                best[i] = rate
    eight, sixteen = best
    assert eight is not None
    assert sixteen is not None
    return eight, sixteen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    args = parser.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for rate in decode_rates(args.events, args.batch, args.repeat):
        print(f"{rate.fields:>2} fields: {rate.events:,} events in {rate.seconds:.2f} s = "
              f"{rate.per_s:,.0f} events/s (decoded one by one: {rate.singles}; best of "
              f"{args.repeat})")
    print(f"load average {load} -> {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cpus")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
