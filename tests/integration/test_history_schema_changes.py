"""Profile history while the registered schema evolves, through the real CLI on the real broker
and the real Schema Registry (Apicurio), with a column policy (``cid`` hashed, ``party_id``
excluded): a schema adding fields first refused (``freeze``) and redriven from the dead-letter
topic, then one widening a field while old producers keep running. The history table gets every
column with the state table, each version its own event's values under the policy;
``show --as-of`` prints the evolved columns, ``check`` passes, and a full refresh rebuilds both
tables with them."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest

from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.registry import SchemaRegistry
from consumer.ops.sample import value_subject
from schemas import audit_schema
from tests.integration.harness import cli_env, produce_raw, run_cli
from tests.oracles.history import build_history
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

DAY_US = 1_705_276_800_000_000  # 2024-01-15T00:00:00Z
MINUTE_US = 60_000_000
HASH_KEY = uuid.uuid4().hex


def v2_schema() -> dict[str, Any]:
    """v1 and two optional fields."""
    schema = copy.deepcopy(audit_schema())
    schema["fields"] += [{"name": "risk_rating", "type": ["null", "string"], "default": None},
                         {"name": "score", "type": ["null", "int"], "default": None}]
    return schema


def v3_schema() -> dict[str, Any]:
    """v2 with ``score`` widened to long."""
    schema = v2_schema()
    schema["fields"][-1] = {"name": "score", "type": ["null", "long"], "default": None}
    return schema


Sent = tuple[int, int, str, dict[str, Any]]
"""(key, minutes after midnight, op_type, the fields beyond v1's) as produced."""


def record(key: int, minutes: int, op_type: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"kyc_profile_id": key, "goldtier_id": f"GT-{key}-{minutes}",
            "cid": f"C-{key}-{minutes}", "party_id": f"P-{key}", "created_date": None,
            "updated_date": None, "op_type": op_type, "op_time": DAY_US + minutes * MINUTE_US,
            **extra}


def produce(bootstrap: str, topic: str, encoder: AuditEncoder, events: list[Sent]) -> None:
    produce_raw(bootstrap, topic, [
        (message_key(key), encoder.encode(record(key, minutes, op, extra)), key % 2)
        for key, minutes, op, extra in events])


def hashed(value: str) -> str:
    return hmac.new(HASH_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def columns(db: Path, table: str) -> dict[str, str]:
    return {str(name): str(kind) for name, kind, *_ in query(db, f"DESCRIBE {table}")}


HistoryRow = tuple[int, int, str | None, int | None, str, int | None, bool, bool]


def history_rows(db: Path) -> list[HistoryRow]:
    """(key, minutes, risk_rating, score, cid, valid_to minutes, is_current, is_deleted)."""
    rows = query(db, "SELECT kyc_profile_id, epoch_us(op_time), risk_rating, score, cid, "
                     "epoch_us(valid_to), is_current, is_deleted FROM kyc_profile_history "
                     "ORDER BY kyc_profile_id, op_time")
    return [(k, (t - DAY_US) // MINUTE_US, risk, score, cid,
             None if to is None else (to - DAY_US) // MINUTE_US, current, deleted)
            for k, t, risk, score, cid, to, current, deleted in rows]


def expected_history(events: list[Sent]) -> list[HistoryRow]:
    built = build_history((key, minutes, 0, i, op, (key, minutes, extra))
                          for i, (key, minutes, op, extra) in enumerate(events))
    return [(key, i.op_time, extra.get("risk_rating"), extra.get("score"),
             hashed(f"C-{key}-{minutes}"), i.valid_to, i.is_current, i.is_deleted)
            for intervals in built.values() for i in intervals
            for key, minutes, extra in [i.payload]]


def shown(env: dict[str, str], at: str) -> list[dict[str, str]]:
    """``show --as-of`` as rows of its text table, by column name."""
    out = ok(env, "show", "--as-of", at)
    lines = out.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.split("|")), strict=True))
            for line in lines[2:-1]]


def ok(env: dict[str, str], *args: str) -> str:
    result = run_cli(env, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_history_follows_the_registered_schema_under_the_column_policy(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    registry = SchemaRegistry(schema_registry_url)
    subject = value_subject(topic_name)
    v1 = AuditEncoder(audit_schema(), registry.register(subject, audit_schema()))
    env = cli_env(
        kafka_bootstrap, topic_name, db, f"g-{topic_name}",
        KYC_SYNC_HISTORY__ENABLED="true", KYC_SYNC_DECODING__FORMAT="confluent",
        KYC_SYNC_DECODING__SCHEMA_REGISTRY_URL=schema_registry_url,
        KYC_SYNC_COLUMNS__HASH='["cid"]', KYC_SYNC_COLUMNS__EXCLUDE='["party_id"]',
        KYC_SYNC_COLUMNS__HASH_KEY=HASH_KEY, KYC_SYNC_REPLAY__BACKUP_DIR=str(tmp_path),
    )
    first: list[Sent] = [(1, 60, "INSERT", {}), (2, 60, "INSERT", {}), (3, 60, "INSERT", {})]
    produce(kafka_bootstrap, topic_name, v1, first)
    ok(env, "run", "--until-caught-up")

    # v2 adds two fields; under freeze its events are schema dead letters, then redriven.
    v2 = AuditEncoder(v2_schema(), registry.register(subject, v2_schema()))
    added: list[Sent] = [(1, 120, "UPDATE", {"risk_rating": "high", "score": 5}),
                         (3, 120, "UPDATE", {"risk_rating": "low", "score": None})]
    produce(kafka_bootstrap, topic_name, v2, added)
    ok({**env, "KYC_SYNC_DECODING__SCHEMA_EVOLUTION": "freeze"}, "run", "--until-caught-up")
    assert "risk_rating" not in columns(db, "kyc_profile_history")
    redriven = json.loads(ok(env, "dlq", "redrive", "--execute", "--json"))
    assert redriven["decodes_now"] == 2

    # v3 widens score to long; an old v1 producer still writes, one event of it late.
    v3 = AuditEncoder(v3_schema(), registry.register(subject, v3_schema()))
    widened: list[Sent] = [(1, 180, "UPDATE", {"risk_rating": "high", "score": 2**40}),
                           (4, 180, "INSERT", {"risk_rating": "mid", "score": 7})]
    produce(kafka_bootstrap, topic_name, v3, widened)
    old: list[Sent] = [(1, 90, "UPDATE", {}), (2, 240, "DELETE", {})]
    produce(kafka_bootstrap, topic_name, v1, old)
    ok(env, "run", "--until-caught-up")

    everything = first + added + widened + old
    expected = expected_history(everything)
    assert history_rows(db) == expected
    history, state = columns(db, "kyc_profile_history"), columns(db, "kyc_profile_state")
    assert (history["risk_rating"], history["score"]) == ("VARCHAR", "BIGINT")
    assert {k: v for k, v in history.items() if k in state} == state
    assert "party_id" not in history
    assert query(db, "SELECT count(*) FROM kyc_profile_history WHERE cid LIKE 'C-%'") == [(0,)]

    # As of 01:45 profile 1 is the late v1 version: the new columns are printed, empty.
    early = shown(env, "2024-01-15T01:45:00Z")
    assert [(r["kyc_profile_id"], r["risk_rating"], r["score"]) for r in early] == [
        ("1", "", ""), ("2", "", ""), ("3", "", "")]
    assert early[0]["cid"] == hashed("C-1-90")
    assert "party_id" not in early[0]
    late = shown(env, "2024-01-15T03:30:00Z")
    assert [(r["kyc_profile_id"], r["risk_rating"], r["score"]) for r in late] == [
        ("1", "high", str(2**40)), ("2", "", ""), ("3", "low", ""), ("4", "mid", "7")]

    checked = json.loads(ok(env, "check", "--json"))
    assert {c["name"]: c["ok"] for c in checked["checks"]} == {
        "freshness": True, "unique_key": True, "not_null": True, "history_intervals": True,
        "history_current": True, "history_state": True}, checked

    # A full refresh rebuilds both tables from the topic, with the evolved columns.
    ok(env, "replay", "--full-refresh", "--execute")
    assert history_rows(db) == expected
    assert columns(db, "kyc_profile_history") == history
    assert columns(db, "kyc_profile_state") == state
    checked = json.loads(ok(env, "check", "--json"))
    assert all(c["ok"] for c in checked["checks"]), checked
