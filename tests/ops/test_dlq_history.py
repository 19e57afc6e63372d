"""``dlq redrive`` with profile history on: the redriven events are versions of the history
table too, between their neighbours, under the column policy — reduced by the real reducer,
staged, and applied by the real DuckDB writer. No network (the dead letters are built here)."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
from pathlib import Path
from typing import Any

from consumer.decode.contract import Contract
from consumer.decode.decoder import PlainAvroDecoder
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.ops.dlq import DeadLetter, Redrive, classify, redrive_batch
from schemas import audit_schema
from schemas.evolution import ColumnPolicy
from tests.oracles.history import build_history
from tests.run.fakes import memory_tables
from warehouse.duckdb_writer import DuckDBWarehouse

KEY = b"k" * 16
T0 = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)
POLICY = ColumnPolicy(exclude=frozenset({"party_id"}), hash=frozenset({"cid"}))


def v2_schema() -> dict[str, Any]:
    schema = copy.deepcopy(audit_schema())
    schema["fields"].append({"name": "risk_rating", "type": ["null", "string"], "default": None})
    return schema


EVENTS = [(0, 1, 10, "INSERT", None), (1, 1, 30, "UPDATE", "high"),
          (2, 1, 20, "UPDATE", "low"), (3, 2, 10, "INSERT", "mid")]
"""(source offset, key, minutes after T0, op_type, risk_rating): key 1's versions arrive out
of order."""


def letter(offset: int, key: int, minutes: int, op_type: str, risk: str | None) -> DeadLetter:
    record = {"kyc_profile_id": key, "goldtier_id": f"GT-{offset}", "cid": f"C-{offset}",
              "party_id": f"P-{offset}", "created_date": None, "updated_date": None,
              "op_type": op_type, "op_time": T0 + dt.timedelta(minutes=minutes),
              "risk_rating": risk}
    return DeadLetter(0, 100 + offset, message_key(key), AuditEncoder(v2_schema()).encode(record),
                      "decode", "the schema file is probably behind", 0, offset, None)


def test_redriven_events_are_history_versions_under_the_column_policy(tmp_path: Path) -> None:
    warehouse = DuckDBWarehouse(str(tmp_path / "kyc.duckdb"), memory_tables(history=True),
                                policy=POLICY)
    warehouse.open()
    decoder = PlainAvroDecoder(v2_schema(), Contract(columns=POLICY, hash_key=KEY))
    decoder.contract.start(warehouse.table_state())
    letters = [letter(*e) for e in EVENTS]
    letters.append(letters[-1])  # a dead letter redriven twice
    plan = Redrive("t.dlq", "g.dlq-redrive", None, {0: 100}, {0: 105})
    classify(letters, decoder, plan)
    assert not plan.invalid

    batch = redrive_batch(plan, decoder, history=True)
    assert batch is not None
    assert batch.history is not None
    assert batch.history.num_rows == 4  # every distinct version, not only the winners
    warehouse.apply(batch)

    rows = warehouse.fetch(
        "SELECT kyc_profile_id, src_offset, cid, risk_rating, valid_to IS NULL "
        "FROM kyc_profile_history ORDER BY kyc_profile_id, op_time")
    built = build_history((k, m, 0, o, op, (o, r)) for o, k, m, op, r in EVENTS)
    expected = [
        (key, o, hmac.new(KEY, f"C-{o}".encode(), hashlib.sha256).hexdigest(), r,
         i.is_current)
        for key, intervals in built.items() for i in intervals for o, r in [i.payload]]
    assert rows == expected
    columns = {r[0] for r in warehouse.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'kyc_profile_history'")}
    assert "party_id" not in columns
    assert "risk_rating" in columns
    warehouse.close()
