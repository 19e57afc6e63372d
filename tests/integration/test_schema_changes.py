"""Schema changes on the real broker and the real Schema Registry (Apicurio, ccompat API),
through the CLI: a field added upstream becomes a column; ``freeze`` refuses it; an incompatible
change and a registry schema that is not a record become ``schema`` dead letters (never a crash
loop); a timestamp no warehouse holds is a ``validation`` dead letter; a plain-Avro schema file
behind the producers is fixed and the dead letters redriven; a changed column policy is
refused on a table that has rows."""

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

from consumer.decode.decoder import WIRE_HEADER
from consumer.decode.encoder import AuditEncoder, message_key
from consumer.decode.registry import SchemaRegistry
from consumer.ops.sample import value_subject
from schemas import audit_schema
from tests.integration.harness import cli_env, produce_raw, read_current, run_cli
from tests.integration.test_registry import headers, read_topic
from tools.localkafka import create_topic

pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000_000  # 2024-01-01


def v2_schema() -> dict[str, Any]:
    schema = copy.deepcopy(audit_schema())
    schema["fields"].append({"name": "risk_rating", "type": ["null", "string"], "default": None})
    return schema


def v3_schema() -> dict[str, Any]:
    """risk_rating retyped string -> long: incompatible with the column."""
    schema = copy.deepcopy(audit_schema())
    schema["fields"].append({"name": "risk_rating", "type": ["null", "long"], "default": None})
    return schema


def record(key: int, at: int, **extra: Any) -> dict[str, Any]:
    return {"kyc_profile_id": key, "goldtier_id": f"GT-{key}", "cid": None, "party_id": None,
            "created_date": None, "updated_date": None, "op_type": "INSERT", "op_time": at,
            **extra}


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def env_for(bootstrap: str, topic: str, db: Path, registry_url: str | None = None,
            **extra: str) -> dict[str, str]:
    wire = {} if registry_url is None else {
        "KYC_SYNC_DECODING__FORMAT": "confluent",
        "KYC_SYNC_DECODING__SCHEMA_REGISTRY_URL": registry_url,
    }
    return cli_env(bootstrap, topic, db, f"g-{topic}", **wire, **extra)


def test_an_added_field_becomes_a_column_older_rows_null(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    registry = SchemaRegistry(schema_registry_url)
    subject = value_subject(topic_name)
    v1_id = registry.register(subject, audit_schema())
    v1 = AuditEncoder(audit_schema(), v1_id)
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(k), v1.encode(record(k, T0 + k)), k % 2) for k in (1, 2, 3)
    ])
    env = env_for(kafka_bootstrap, topic_name, db, schema_registry_url)
    first = run_cli(env, "run", "--until-caught-up")
    assert first.returncode == 0, first.stderr
    assert "risk_rating" not in [r[0] for r in query(db, "DESCRIBE kyc_profile_current")]

    v2_id = registry.register(subject, v2_schema())
    v2 = AuditEncoder(v2_schema(), v2_id)
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(3), v2.encode(record(3, T0 + 10, risk_rating="high")), 1),
        (message_key(4), v2.encode(record(4, T0 + 11, risk_rating="low")), 0),
        (message_key(5), v2.encode(record(5, T0 + 12)), 1),
    ])
    second = run_cli(env, "run", "--until-caught-up")

    assert second.returncode == 0, second.stderr
    assert f"registry id {v2_id}" in second.stderr  # the change is logged
    rows = dict(query(db, "SELECT kyc_profile_id, risk_rating FROM kyc_profile_current"))
    assert rows == {1: None, 2: None, 3: "high", 4: "low", 5: None}
    recorded = query(db, "SELECT column_name, change, column_type, source_schema, schema_id "
                         "FROM kyc_sync_columns WHERE change = 'add'")
    assert len(recorded) == 1
    name, change, column_type, source, schema_id = recorded[0]
    assert (name, change, column_type, schema_id) == ("risk_rating", "add", "text", v2_id)
    assert source.startswith(f"registry id {v2_id}")
    assert subject in source  # the subject and version the registry gave


def test_freeze_incompatible_and_non_record_schemas_are_schema_dead_letters(
    kafka_bootstrap: str, schema_registry_url: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    registry = SchemaRegistry(schema_registry_url)
    subject = value_subject(topic_name)
    v1_id = registry.register(subject, audit_schema())
    v2_id = registry.register(f"{subject}-v2", v2_schema())
    v3_id = registry.register(f"{subject}-v3", v3_schema())
    key_id = registry.register(f"{topic_name}-key", "string")  # type: ignore[arg-type]
    union_id = registry.register(f"{topic_name}-union", ["null", "string"])  # type: ignore[arg-type]
    encode = {i: AuditEncoder(s, i) for i, s in ((v1_id, audit_schema()), (v2_id, v2_schema()),
                                                 (v3_id, v3_schema()))}
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(1), encode[v1_id].encode(record(1, T0)), 0),
        (message_key(2), encode[v2_id].encode(record(2, T0, risk_rating="x")), 0),
    ])
    env = env_for(kafka_bootstrap, topic_name, db, schema_registry_url,
                  KYC_SYNC_DECODING__SCHEMA_EVOLUTION="freeze")
    frozen = run_cli(env, "run", "--until-caught-up")
    assert frozen.returncode == 0, frozen.stderr
    assert read_current(db).keys() == {1}
    dead = read_topic(kafka_bootstrap, f"{topic_name}.dlq", 1)
    meta = headers(dead[0])
    assert meta["kyc_sync.error_class"] == "schema"
    assert "adds field(s) risk_rating" in meta["kyc_sync.reason"]
    assert "freeze" in meta["kyc_sync.reason"]

    # evolve: v2 adds the column; then v3 (risk_rating as long) and two schemas that are no
    # record are dead letters, and the run still ends (no crash loop)
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(3), encode[v2_id].encode(record(3, T0, risk_rating="y")), 0),
        (message_key(4), encode[v3_id].encode(record(4, T0, risk_rating=7)), 0),
        (message_key(5), WIRE_HEADER.pack(0, key_id) + b"\x02a", 0),
        (message_key(6), WIRE_HEADER.pack(0, union_id) + b"\x02\x02a", 0),
    ])
    evolving = env_for(kafka_bootstrap, topic_name, db, schema_registry_url,
                       KYC_SYNC_KAFKA__GROUP_ID=f"g2-{topic_name}")
    for _ in range(2):  # a restart meets the same messages and ends the same way
        done = run_cli(evolving, "run", "--until-caught-up")
        assert done.returncode == 0, done.stderr
    assert dict(query(db, "SELECT kyc_profile_id, risk_rating FROM kyc_profile_current")) == {
        1: None, 2: "x", 3: "y"}
    dead = read_topic(kafka_bootstrap, f"{topic_name}.dlq", 1 + 2 * 4)
    reasons = {(headers(m)["kyc_sync.source_offset"], headers(m)["kyc_sync.error_class"],
                headers(m)["kyc_sync.reason"]) for m in dead}
    by_offset = {o: (c, r) for o, c, r in reasons}
    assert by_offset["3"][0] == "schema"
    assert "incompatible type change: risk_rating" in by_offset["3"][1]
    assert by_offset["4"][0] == "schema"
    assert "not an Avro record" in by_offset["4"][1]
    assert by_offset["5"][0] == "schema"
    assert "not an Avro record" in by_offset["5"][1]


def test_a_timestamp_no_warehouse_holds_is_a_validation_dead_letter(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    encoder = AuditEncoder(audit_schema())
    year_10000 = 253_402_300_800_000_000
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(1), encoder.encode(record(1, T0)), 0),
        (message_key(2), encoder.encode(record(2, year_10000)), 0),
        (message_key(3), encoder.encode(record(3, T0, created_date=-62_135_596_800_000_001)), 0),
    ])
    done = run_cli(env_for(kafka_bootstrap, topic_name, db), "run", "--until-caught-up")
    assert done.returncode == 0, done.stderr
    assert read_current(db).keys() == {1}
    dead = read_topic(kafka_bootstrap, f"{topic_name}.dlq", 2)
    meta = sorted((headers(m)["kyc_sync.error_class"], headers(m)["kyc_sync.reason"])
                  for m in dead)
    assert [c for c, _ in meta] == ["validation", "validation"]
    assert {r.split(":")[0] for _, r in meta} == {"op_time", "created_date"}
    assert all("outside years 1 to 9999" in r for _, r in meta)


def test_plain_avro_schema_file_behind_then_fixed_and_redriven(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    db = tmp_path / "kyc.duckdb"
    old_file = tmp_path / "v1.avsc"
    old_file.write_text(json.dumps(audit_schema()))
    new_file = tmp_path / "v2.avsc"
    new_file.write_text(json.dumps(v2_schema()))
    v1, v2 = AuditEncoder(audit_schema()), AuditEncoder(v2_schema())
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(1), v1.encode(record(1, T0)), 0),
        (message_key(2), v2.encode(record(2, T0 + 1, risk_rating="high")), 1),
        (message_key(3), v2.encode(record(3, T0 + 2, risk_rating="low")), 0),
        (message_key(3), v2.encode(record(3, T0 + 1, risk_rating="older")), 1),
        (message_key(9), b"\x00garbage that no schema reads", 1),
    ])
    behind = env_for(kafka_bootstrap, topic_name, db,
                     KYC_SYNC_DECODING__SCHEMA_FILE=str(old_file))
    done = run_cli(behind, "run", "--until-caught-up")
    assert done.returncode == 0, done.stderr
    assert read_current(db).keys() == {1}
    dead = read_topic(kafka_bootstrap, f"{topic_name}.dlq", 4)
    assert len(dead) == 4
    assert all("schema file (decoding.schema_file) is probably behind" in
               headers(m)["kyc_sync.reason"] for m in dead)

    inspected = run_cli(behind, "dlq", "inspect", "--json")
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads(inspected.stdout)
    assert summary["messages"] == 4
    assert [(c["class"], c["count"]) for c in summary["classes"]] == [("decode", 4)]
    text = run_cli(behind, "dlq", "inspect")
    assert "decode" in text.stdout
    assert "probably behind" in text.stdout

    fixed = env_for(kafka_bootstrap, topic_name, db, KYC_SYNC_DECODING__SCHEMA_FILE=str(new_file))
    dry = run_cli(fixed, "dlq", "redrive", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert (plan["executed"], plan["decodes_now"], plan["still_invalid"]) == (False, 3, 1)
    assert read_current(db).keys() == {1}  # a dry run writes nothing

    applied = run_cli(fixed, "dlq", "redrive", "--execute")
    assert applied.returncode == 0, applied.stderr
    assert "still invalid, left in the topic: 1" in applied.stdout
    rows = dict(query(db, "SELECT kyc_profile_id, risk_rating FROM kyc_profile_current"))
    assert rows == {1: None, 2: "high", 3: "low"}  # the older event of 3 lost under the guard
    assert len(read_topic(kafka_bootstrap, f"{topic_name}.dlq", 5, timeout_s=5)) == 4  # no copy

    again = run_cli(fixed, "dlq", "redrive", "--execute", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["read"] == 0  # the group moved past them
    replayed = run_cli(fixed, "dlq", "redrive", "--execute", "--from-start", "--json")
    assert json.loads(replayed.stdout)["applied"]["skipped_stale"] == 2  # harmless
    assert dict(query(db, "SELECT kyc_profile_id, risk_rating FROM kyc_profile_current")) == rows


def test_a_changed_column_policy_is_refused_on_a_table_with_rows(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=1)
    db = tmp_path / "kyc.duckdb"
    encoder = AuditEncoder(audit_schema())
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(1), encoder.encode(record(1, T0, cid="C-1")), 0)])
    env = env_for(kafka_bootstrap, topic_name, db)
    assert run_cli(env, "run", "--until-caught-up").returncode == 0
    hashed = {**env, "KYC_SYNC_COLUMNS__HASH": '["cid"]',
              "KYC_SYNC_COLUMNS__HASH_KEY": uuid.uuid4().hex}
    refused = run_cli(hashed, "run", "--until-caught-up")
    assert refused.returncode == 1
    assert "column policy" in refused.stderr
    assert "full refresh" in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "column policy (exclude=[] hash=[cid]) differs" in last
    rebuilt = run_cli(hashed, "replay", "--full-refresh", "--execute")
    assert rebuilt.returncode == 0, rebuilt.stderr
    produce_raw(kafka_bootstrap, topic_name, [
        (message_key(2), encoder.encode(record(2, T0, cid="C-2")), 0)])
    done = run_cli(hashed, "run", "--until-caught-up")
    assert done.returncode == 0, done.stderr
    cids = dict(query(db, "SELECT kyc_profile_id, cid FROM kyc_profile_current"))
    key = hashed["KYC_SYNC_COLUMNS__HASH_KEY"].encode()
    assert cids == {k: hmac.new(key, f"C-{k}".encode(), hashlib.sha256).hexdigest()
                    for k in (1, 2)}
    assert query(db, "SELECT column_name FROM kyc_sync_columns WHERE change = 'hash'") == [
        ("cid",)]
