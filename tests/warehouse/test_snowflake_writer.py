"""Unit tests of the Snowflake writer's parts: error mapping, settings, key-pair loading, the
generated SQL (parsed in Snowflake's dialect by sqlglot), the Parquet payload, and that no secret
reaches a log line. The writer's behaviour is covered by ``test_contract.py``."""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError
from snowflake.connector import SnowflakeConnection
from snowflake.connector import errors as sf
from sqlglot import exp

from batcher.ranges import PartitionRange
from consumer.app import build_warehouse
from consumer.settings import REDACTED, Settings, load_settings
from tests.oracles.reducer import Version, Winner
from tests.oracles.staging import Row, build_staged
from tests.warehouse.test_contract import T0, Event, fakesnow_config, make_batch, snowflake_harness
from warehouse import history_sql
from warehouse.errors import TerminalWarehouseError, TransientWarehouseError, WarehouseLockWait
from warehouse.identifiers import Ident, QualifiedName
from warehouse.snowflake_errors import translate
from warehouse.snowflake_settings import SnowflakeSettings, load_private_key, private_key_der
from warehouse.snowflake_writer import (
    HISTORY_FILE,
    STAGE,
    STAGED,
    STAGED_HISTORY,
    SnowflakeWarehouse,
    copy_sql,
    create_stage_sql,
    create_staged_sql,
    parquet_payload,
    put_sql,
    recorded_sql,
    use_schema_sql,
)
from warehouse.sql import classify_sql, ledger_insert_sql, merge_sql
from warehouse.swap import (
    discard_statements,
    exchange_statements,
    finish_statements,
    level_statements,
)
from warehouse.tables import LEDGER_COLUMNS, STATE_COLUMNS, TableNames, ddl

# -- error mapping ------------------------------------------------------------------------------

TRANSIENT = [
    sf.ProgrammingError(msg="Statement '01b' has locked table 'KYC_PROFILE_STATE' in transaction "
                        "1 and this lock has not yet been released. Your statement '01c' was "
                        "aborted because the number of waiters for this lock exceeds the 20 "
                        "statements limit.", errno=625, sqlstate="57014"),
    sf.ProgrammingError(msg="Statement reached its statement or warehouse timeout of 300 "
                        "second(s) and was canceled.", errno=630, sqlstate="57014"),
    sf.ProgrammingError(msg="Warehouse 'KYC_WH' is being resumed.", errno=9999, sqlstate="57P03"),
    sf.ProgrammingError(msg="could not serialize", errno=9998, sqlstate="40001"),
    sf.DatabaseError(msg="Authentication token has expired.", errno=390114, sqlstate="08001"),
    sf.DatabaseError(msg="Session no longer exists.", errno=390112, sqlstate="08001"),
    sf.OperationalError(msg="Could not connect to Snowflake backend after 2 attempt(s).",
                        errno=250001, sqlstate="08001"),
    sf.OperationalError(msg="Failed to execute request", errno=250003),
    sf.OperationalError(msg="connection reset by peer"),
    sf.InterfaceError(msg="Connection is closed", errno=250002, sqlstate="08003"),
    sf.InternalServerError(),
    sf.BadGatewayError(),
    sf.ServiceUnavailableError(),
    sf.GatewayTimeoutError(),
    sf.RequestTimeoutError(),
    sf.TooManyRequests(),
    sf.OtherHTTPRetryableError(),
]

TERMINAL = [
    sf.DatabaseError(msg="Incorrect username or password was specified.", errno=390100,
                     sqlstate="28000"),
    sf.DatabaseError(msg="JWT token is invalid.", errno=390144, sqlstate="08001"),
    sf.DatabaseError(msg="User temporarily locked.", errno=390102, sqlstate="08001"),
    sf.DatabaseError(msg="Role 'X' specified in the connect string is not granted to this user.",
                     errno=390189, sqlstate="08004"),
    sf.ProgrammingError(msg="SQL compilation error: syntax error line 1 at position 0",
                        errno=1003, sqlstate="42000"),
    sf.ProgrammingError(msg="SQL compilation error: Object 'KYC.PUBLIC.X' does not exist or not "
                        "authorized.", errno=2003, sqlstate="42S02"),
    sf.ProgrammingError(msg="SQL access control error: Insufficient privileges to operate on "
                        "schema 'KYC'", errno=3001, sqlstate="42501"),
    sf.ProgrammingError(msg="No active warehouse selected in the current session.", errno=606,
                        sqlstate="57P03"),
    sf.DataError(msg="Numeric value 'x' is not recognized", errno=100038, sqlstate="22018"),
    sf.IntegrityError(msg="NULL result in a non-nullable column", errno=100072,
                      sqlstate="22000"),
    sf.NotSupportedError(msg="not supported", errno=2),
    sf.ForbiddenError(),
    sf.BadRequest(),
    sf.DatabaseError(msg="something else"),
]


def _id(err: sf.Error) -> str:
    return f"{type(err).__name__}-{err.errno}"


@pytest.mark.parametrize("err", TRANSIENT, ids=_id)
def test_transient_errors(err: sf.Error) -> None:
    mapped = translate(err)
    assert isinstance(mapped, TransientWarehouseError)
    assert str(err.errno) in str(mapped)


@pytest.mark.parametrize("err", TERMINAL, ids=_id)
def test_terminal_errors(err: sf.Error) -> None:
    assert isinstance(translate(err), TerminalWarehouseError)


LOCK_WAITS = [
    TRANSIENT[0],  # too many waiters
    sf.ProgrammingError(msg="Statement '01b' has locked table 'KYC_PROFILE_STATE' in transaction "
                        "1 and this lock has not yet been released. Your statement '01c' was "
                        "aborted because the lock wait timeout of 60 seconds was exceeded.",
                        errno=625, sqlstate="57014"),
    sf.ProgrammingError(msg="Statement aborted: lock wait timeout exceeded", errno=9997,
                        sqlstate="57014"),
]


@pytest.mark.parametrize("err", LOCK_WAITS, ids=_id)
def test_lock_waits_are_transient_with_the_lock_wait_budget(err: sf.Error) -> None:
    mapped = translate(err)
    assert isinstance(mapped, WarehouseLockWait)
    assert isinstance(mapped, TransientWarehouseError)


@pytest.mark.parametrize("err", [e for e in TRANSIENT if e not in LOCK_WAITS], ids=_id)
def test_other_transient_errors_are_not_lock_waits(err: sf.Error) -> None:
    assert not isinstance(translate(err), WarehouseLockWait)


# -- settings -------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("KYC_SYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")


COMPLETE = {"account": "myorg-kyc", "user": "KYC_SYNC", "database": "KYC"}


def snowflake_settings(**snowflake: Any) -> Settings:
    return load_settings(warehouse={"kind": "snowflake"}, snowflake=snowflake)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "snowflake.account, snowflake.user, snowflake.database required"),
        ({**COMPLETE, "account": ""}, "snowflake.account required"),
        ({**COMPLETE, "database": ""}, "KYC_SYNC_SNOWFLAKE__DATABASE"),
        (COMPLETE, "snowflake.password or a private key"),
        ({**COMPLETE, "password": "pw", "private_key": "PEM"}, "or a private key, not both"),
        ({**COMPLETE, "private_key_file": "k.p8", "private_key": "PEM"}, "not both"),
        ({**COMPLETE, "password": "pw", "database": "kyc-db"}, "not a valid identifier"),
        ({**COMPLETE, "password": "pw", "schema_name": ""}, "not a valid identifier"),
        ({**COMPLETE, "password": "pw", "role": "SYS ADMIN"}, "not a valid identifier"),
        ({**COMPLETE, "password": "pw", "warehouse": "WH;DROP"}, "not a valid identifier"),
        ({**COMPLETE, "password": "pw", "protocol": "ftp"}, "protocol"),
    ],
)
def test_incomplete_or_invalid_snowflake_settings(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        snowflake_settings(**given)


@pytest.mark.usefixtures("clean_env")
def test_snowflake_settings_only_required_for_snowflake() -> None:
    settings = load_settings()
    assert settings.warehouse.kind == "duckdb"
    assert settings.snowflake.account == ""


@pytest.mark.usefixtures("clean_env")
def test_default_timeouts_are_nested_below_max_poll_interval() -> None:
    settings = snowflake_settings(**COMPLETE, password="pw")
    sfs = settings.snowflake

    # A lock wait ends as a lock error, before the statement timeout; Snowflake cancels a
    # statement before the connector gives up on it; one attempt (a login, then a statement
    # to its limit) ends before librdkafka's max.poll.interval.ms (300 s): the flush blocks
    # the poll, and an instance that does not poll within it leaves its group.
    assert sfs.lock_timeout_s < sfs.statement_timeout_s < sfs.network_timeout_s
    assert sfs.login_timeout_s + sfs.network_timeout_s < settings.kafka.max_poll_interval_s == 300
    # Lock waits are retried long enough to outlast a detached transaction: Snowflake aborts
    # it after 5 minutes idle while it blocks, plus up to 5 for a statement it was running.
    assert settings.warehouse.lock_wait_max_s > 600 > settings.warehouse.retry_max_s


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("snowflake", "client_options", "message"),
    [
        ({"lock_timeout_s": 180}, {},
         r"snowflake.lock_timeout_s \(180\) must be below snowflake.statement_timeout_s \(180\)"),
        ({"statement_timeout_s": 250}, {},
         r"snowflake.statement_timeout_s \(250\) must be below snowflake.network_timeout_s"),
        ({"network_timeout_s": 300, "statement_timeout_s": 250}, {},
         r"\(360\) must be below the consumer's max.poll.interval.ms \(300 s"),
        ({}, {"max.poll.interval.ms": 200_000},
         r"\(260\) must be below the consumer's max.poll.interval.ms \(200 s"),
    ],
)
def test_incoherent_timeouts_are_refused(
    snowflake: dict[str, Any], client_options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(warehouse={"kind": "snowflake"}, kafka={"client_options": client_options},
                      snowflake={**COMPLETE, "password": "pw", **snowflake})


@pytest.mark.usefixtures("clean_env")
def test_a_longer_poll_interval_allows_longer_statements() -> None:
    settings = load_settings(
        warehouse={"kind": "snowflake"},
        kafka={"client_options": {"max.poll.interval.ms": 900_000}},
        snowflake={**COMPLETE, "password": "pw", "statement_timeout_s": 600,
                   "network_timeout_s": 700},
    )
    assert settings.snowflake.statement_timeout_s == 600


@pytest.mark.usefixtures("clean_env")
def test_lock_wait_budget_is_at_least_the_retry_budget() -> None:
    with pytest.raises(ValidationError, match=r"lock_wait_max_s \(60\) must be at least"):
        load_settings(warehouse={"retry_max_s": 120, "lock_wait_max_s": 60})


@pytest.mark.usefixtures("clean_env")
def test_snowflake_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = f"Sentinel{uuid.uuid4().hex}"
    env = {
        "WAREHOUSE__KIND": "snowflake", "SNOWFLAKE__ACCOUNT": "myorg-kyc",
        "SNOWFLAKE__USER": "KYC_SYNC", "SNOWFLAKE__PASSWORD": sentinel,
        "SNOWFLAKE__ROLE": "KYC_WRITER", "SNOWFLAKE__WAREHOUSE": "KYC_WH",
        "SNOWFLAKE__DATABASE": "KYC", "SNOWFLAKE__SCHEMA_NAME": "AUDIT",
        "SNOWFLAKE__QUERY_TAG": "kyc-sync-prod",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"KYC_SYNC_{name}", value)
    settings = load_settings()

    sf_settings = settings.snowflake
    assert (sf_settings.role, sf_settings.warehouse, sf_settings.schema_name) == (
        "KYC_WRITER", "KYC_WH", "AUDIT")
    assert sf_settings.password.get_secret_value() == sentinel
    assert sentinel not in repr(settings)
    assert settings.redacted()["snowflake"]["password"] == REDACTED


@pytest.mark.usefixtures("clean_env")
def test_build_warehouse_makes_the_snowflake_writer_without_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(**_: Any) -> None:
        raise AssertionError("build_warehouse must not connect")

    monkeypatch.setattr("snowflake.connector.connect", refuse)
    settings = snowflake_settings(**COMPLETE, password="pw", schema_name="audit")
    writer = build_warehouse(settings)

    assert isinstance(writer, SnowflakeWarehouse)
    assert writer.names.state.sql() == '"KYC"."AUDIT"."KYC_PROFILE_STATE"'
    assert writer.names.current.sql() == '"KYC"."AUDIT"."KYC_PROFILE_CURRENT"'
    assert writer.names.ledger.sql() == '"KYC"."AUDIT"."KYC_SYNC_LEDGER"'
    assert writer.config.password.get_secret_value() == "pw"
    writer.close()


# -- key pair ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def same_key(der: bytes, key: rsa.RSAPrivateKey) -> bool:
    loaded = serialization.load_der_private_key(der, password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded.private_numbers() == key.private_numbers()


def config(**overrides: Any) -> SnowflakeSettings:
    fields: dict[str, Any] = {"account": "myorg-kyc", "user": "KYC_SYNC", "database": "kyc"}
    return SnowflakeSettings(**{**fields, **overrides})


def test_key_file_unencrypted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(pem(rsa_key))
    assert same_key(private_key_der(config(private_key_file=path)), rsa_key)


def test_key_file_encrypted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(pem(rsa_key, b"open sesame"))
    der = private_key_der(
        config(private_key_file=path, private_key_passphrase=SecretStr("open sesame"))
    )
    assert same_key(der, rsa_key)


def test_key_pem_in_a_secret_with_escaped_newlines(rsa_key: rsa.RSAPrivateKey) -> None:
    one_line = pem(rsa_key).decode().replace("\n", "\\n")
    assert same_key(private_key_der(config(private_key=SecretStr(one_line))), rsa_key)


def test_encrypted_key_without_passphrase_names_the_setting(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TerminalWarehouseError, match=re.escape("snowflake.private_key_passphrase")):
        private_key_der(config(private_key=SecretStr(pem(rsa_key, b"s3cret-pass").decode())))


def test_wrong_passphrase_reveals_nothing(rsa_key: rsa.RSAPrivateKey) -> None:
    text = pem(rsa_key, b"right-pass").decode()
    wrong = f"Sentinel{uuid.uuid4().hex}"
    with pytest.raises(TerminalWarehouseError) as caught:
        load_private_key(text.encode(), SecretStr(wrong), "snowflake.private_key")
    message = str(caught.value)
    assert "snowflake.private_key" in message
    assert wrong not in message
    assert "PRIVATE KEY" not in message
    assert caught.value.__cause__ is None


def test_not_a_key() -> None:
    with pytest.raises(TerminalWarehouseError, match="not a PEM private key"):
        private_key_der(config(private_key=SecretStr("hello")))


def test_missing_key_file(tmp_path: Path) -> None:
    message = re.escape("snowflake.private_key_file: cannot read")
    with pytest.raises(TerminalWarehouseError, match=message):
        private_key_der(config(private_key_file=tmp_path / "absent.p8"))


def test_connect_args_key_pair(rsa_key: rsa.RSAPrivateKey) -> None:
    args = config(
        private_key=SecretStr(pem(rsa_key).decode()), role="KYC_WRITER", warehouse="KYC_WH",
        schema_name="audit",
    ).connect_args()
    assert args["authenticator"] == "SNOWFLAKE_JWT"
    assert same_key(args.pop("private_key"), rsa_key)
    assert "password" not in args
    assert args == {
        "account": "myorg-kyc", "user": "KYC_SYNC", "database": "KYC", "schema": "AUDIT",
        "role": "KYC_WRITER", "warehouse": "KYC_WH", "paramstyle": "qmark",
        "login_timeout": 60, "network_timeout": 200, "protocol": "https",
        "session_parameters": {
            "QUERY_TAG": "kyc-sync", "LOCK_TIMEOUT": 60, "STATEMENT_TIMEOUT_IN_SECONDS": 180,
            "ABORT_DETACHED_QUERY": True,
        },
        "authenticator": "SNOWFLAKE_JWT",
    }


def test_connect_args_password() -> None:
    args = config(password=SecretStr("pw"), host="127.0.0.1", port=8080, protocol="http",
                  query_tag="").connect_args()
    assert args["password"] == "pw"
    assert "private_key" not in args
    assert "authenticator" not in args
    assert (args["host"], args["port"], args["protocol"]) == ("127.0.0.1", 8080, "http")
    assert args["session_parameters"] == {
        "LOCK_TIMEOUT": 60, "STATEMENT_TIMEOUT_IN_SECONDS": 180, "ABORT_DETACHED_QUERY": True,
    }
    assert "role" not in args
    assert "warehouse" not in args


def test_config_repr_hides_secrets() -> None:
    sentinel = f"Sentinel{uuid.uuid4().hex}"
    shown = repr(config(password=SecretStr(sentinel), private_key=SecretStr(sentinel),
                        private_key_passphrase=SecretStr(sentinel)))
    assert sentinel not in shown


# -- SQL ------------------------------------------------------------------------------------------


def flush_statements(names: TableNames) -> list[str]:
    """Every statement of one flush, in order, as ``apply`` issues them (COMMIT aside)."""
    return [
        create_staged_sql(),
        put_sql(),
        copy_sql(),
        classify_sql(names.state, STAGED.sql(), "snowflake"),
        merge_sql(names.state, STAGED.sql(), "snowflake"),
        ledger_insert_sql(names.ledger, "snowflake"),
    ]


NAMES = TableNames(*(QualifiedName.of("kyc", "audit", t, upper=True)
                     for t in ("kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger")))


def every_statement() -> dict[str, str]:
    built = (PartitionRange(0, 0, 10), PartitionRange(1, 3, 9))
    statements = {
        "use schema": use_schema_sql(Ident("kyc", upper=True), Ident("audit", upper=True)),
        "create stage": create_stage_sql(),
        **{f"ddl {i}": s for i, s in enumerate(ddl(NAMES, "snowflake"))},
        **{f"flush {i}": s for i, s in enumerate(flush_statements(NAMES))},
        "recorded": recorded_sql(NAMES.ledger),
        **{f"discard {i}": s for i, s in enumerate(discard_statements(NAMES))},
        **{f"level {i}": s for i, (s, _) in enumerate(
            level_statements(NAMES, built, "snowflake", into_live=False))},
        **{f"swap {i}": s for i, s in enumerate(exchange_statements(NAMES, "snowflake"))},
        **{f"finish {i}": s for i, s in enumerate(finish_statements(NAMES, "snowflake"))},
    }
    return statements


@pytest.mark.parametrize("name", sorted(every_statement()))
def test_generated_sql_parses_in_snowflake_dialect(name: str) -> None:
    sql = every_statement()[name]
    parsed = sqlglot.parse(sql, read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)
    assert len(parsed) == 1
    assert parsed[0] is not None
    assert not isinstance(parsed[0], exp.Command), f"not parsed, only passed through: {sql}"


def test_flush_statements_in_order() -> None:
    kinds = [type(sqlglot.parse_one(s, read="snowflake")) for s in flush_statements(NAMES)]
    assert kinds == [exp.Create, exp.Put, exp.Copy, exp.Select, exp.Merge, exp.Insert]


def test_history_statements_parse_in_snowflake_dialect() -> None:
    """The second temporary table and file of a flush with history on, and the history
    statements it runs after the MERGE (the order is the contract suite's, on fakesnow)."""
    history = QualifiedName.of("kyc", "audit", "kyc_profile_history", upper=True)
    staging = [create_staged_sql(table=STAGED_HISTORY), put_sql(HISTORY_FILE),
               copy_sql(table=STAGED_HISTORY, file=HISTORY_FILE)]
    kinds = [type(sqlglot.parse_one(sql, read="snowflake")) for sql in staging]
    assert kinds == [exp.Create, exp.Put, exp.Copy]
    assert STAGED_HISTORY.sql() in staging[0]
    assert STAGED_HISTORY.sql() in staging[2]
    assert "file://history.parquet" in staging[1]
    assert "/history.parquet" in staging[2]
    written = [
        *history_sql.flush_statements(history, STAGED_HISTORY.sql(), "snowflake", STATE_COLUMNS),
        *history_sql.seed_statements(history, NAMES.state, "snowflake", STATE_COLUMNS)]
    kinds = [type(sqlglot.parse_one(sql, read="snowflake")) for sql in written]
    assert kinds == [exp.Insert, exp.Update, exp.Update, exp.Insert]
    for sql in written:
        for ident in sqlglot.parse_one(sql, read="snowflake").find_all(exp.Identifier):
            assert not ident.quoted or ident.name == ident.name.upper(), ident.name


def test_identifiers_are_quoted_and_upper_case() -> None:
    for name, sql in every_statement().items():
        for ident in sqlglot.parse_one(sql, read="snowflake").find_all(exp.Identifier):
            if ident.quoted:
                assert ident.name == ident.name.upper(), (name, ident.name)


def test_values_are_bound_never_formatted() -> None:
    ledger = flush_statements(NAMES)[-1]
    placeholders = list(sqlglot.parse_one(ledger, read="snowflake").find_all(exp.Placeholder))
    assert len(placeholders) == len(LEDGER_COLUMNS)
    # The only literals of a flush are constants of the writer: the staged file's name and the
    # timestamp scale; no value of a batch is ever part of the SQL text.
    literals = {
        lit.this for sql in flush_statements(NAMES)
        for lit in sqlglot.parse_one(sql, read="snowflake").find_all(exp.Literal)
    }
    assert literals <= {"file://batch.parquet", "6", "0", "1", "19", "10"}


def test_temporary_objects_are_session_scoped() -> None:
    create_staged, _, copy, *_ = flush_statements(NAMES)
    assert create_staged.startswith(f"CREATE OR REPLACE TEMPORARY TABLE {STAGED.sql()} (")
    assert create_stage_sql().startswith(f"CREATE TEMPORARY STAGE IF NOT EXISTS {STAGE.sql()}")
    assert "PURGE = TRUE" in copy
    assert "ON_ERROR = ABORT_STATEMENT" in copy


def test_copy_reads_every_state_column_typed() -> None:
    copy = sqlglot.parse_one(copy_sql(), read="snowflake")
    select = copy.find(exp.Select)
    assert select is not None
    assert len(select.expressions) == len(STATE_COLUMNS)
    timestamps = [c for c in STATE_COLUMNS if c.type == "timestamp"]
    assert copy_sql().count("TO_TIMESTAMP_NTZ(") == len(timestamps)


def test_view_keeps_grants() -> None:
    assert " COPY GRANTS AS\n" in ddl(NAMES, "snowflake")[2]
    assert "COPY GRANTS" not in ddl(NAMES, "duckdb")[2]


# -- Parquet payload ----------------------------------------------------------------------------


def test_parquet_payload_timestamps_as_micros() -> None:
    t = 1_767_225_600_123_456
    winners: list[Winner[Row]] = [
        Winner(1, Version(t, 0, 5), "INSERT", (1, "G", None, "P", t - 1, None)),
        Winner(2, Version(t + 1, 1, 6), "DELETE", (2, None, None, None, None, None)),
    ]
    rows = build_staged(winners, "b1", t + 9)
    table = pq.read_table(io.BytesIO(parquet_payload(rows)))

    assert table.column_names == [c.name.upper() for c in STATE_COLUMNS]
    assert table.schema.field("OP_TIME").type == pa.int64()
    assert table.column("OP_TIME").to_pylist() == [t, t + 1]
    assert table.column("CREATED_DATE").to_pylist() == [t - 1, None]
    assert table.column("SYNCED_AT").to_pylist() == [t + 9, t + 9]
    assert table.column("IS_DELETED").to_pylist() == [False, True]
    assert table.column("KYC_PROFILE_ID").to_pylist() == [1, 2]


def test_parquet_payload_refuses_other_columns() -> None:
    with pytest.raises(TerminalWarehouseError, match="not the state columns"):
        parquet_payload(pa.table({"kyc_profile_id": [1]}))


# -- secrets never logged -----------------------------------------------------------------------


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def test_connecting_logs_no_secret(
    fakesnow_server: tuple[str, int], snowflake_database: str,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    host, port = fakesnow_server
    sentinel = f"Sentinel{uuid.uuid4().hex}"
    writer = SnowflakeWarehouse(
        config(password=SecretStr(sentinel), database=snowflake_database, host=host, port=port,
               protocol="http", login_timeout_s=20, network_timeout_s=30),
        TableNames(*(QualifiedName.of(snowflake_database, "PUBLIC", t, upper=True)
                     for t in ("kyc_profile_state", "kyc_profile_current", "kyc_sync_ledger"))),
    )
    writer.open()
    writer.close()

    assert "connected to Snowflake" in all_logs.text
    assert "auth=password" in all_logs.text
    assert sentinel not in all_logs.text


# -- a COMMIT whose reply is lost -----------------------------------------------------------------


def test_batch_committed_but_reply_lost_is_not_applied_twice(
    fakesnow_server: tuple[str, int], snowflake_database: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = snowflake_harness(fakesnow_config(*fakesnow_server, snowflake_database), examples=1)
    h.writer.open()
    batch = make_batch([Event(1, T0, 0, 0), Event(2, T0, 0, 1, "DELETE")])
    real_commit = SnowflakeConnection.commit

    def commit_then_lose_reply(self: SnowflakeConnection) -> None:
        real_commit(self)
        raise sf.OperationalError(msg="Connection reset by peer", errno=250003, sqlstate="08001")

    monkeypatch.setattr(SnowflakeConnection, "commit", commit_then_lose_reply)
    with pytest.raises(TransientWarehouseError):
        h.writer.apply(batch)
    monkeypatch.undo()

    retried = h.writer.apply(batch)  # what the run loop does with a transient error

    assert (retried.inserted, retried.deleted, retried.skipped_stale) == (1, 1, 0)
    assert [r["batch_id"] for r in h.ledger()] == [batch.batch_id]
    h.writer.apply(make_batch([Event(3, T0, 0, 2)]))  # later batches are applied as usual
    assert set(h.live()) == {1, 3}
    h.writer.close()
