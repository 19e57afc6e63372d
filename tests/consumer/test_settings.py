"""Unit tests of the settings: environment (``KYC_SYNC_`` prefix, ``__`` nesting), TOML file,
precedence, validation errors and the redaction of secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.settings import Settings, load_settings

BOOTSTRAP = "KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS"
SECRET = "s3cr3t-Hunter2-do-not-log"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KYC_SYNC_* variable from the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("KYC_SYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env or config file in the working directory


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kyc-sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_locations(err: ValidationError) -> list[str]:
    return [".".join(str(part) for part in e["loc"]) for e in err.errors()]


# --------------------------------------------------------------------------- sources


def test_env_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("KYC_SYNC_KAFKA__TOPIC", "audit.v2")
    monkeypatch.setenv("KYC_SYNC_WINDOW__SECONDS", "30.5")
    monkeypatch.setenv("KYC_SYNC_WINDOW__MAX_EVENTS", "5000")
    monkeypatch.setenv("KYC_SYNC_WAREHOUSE__TABLE", "profiles_now")
    monkeypatch.setenv("KYC_SYNC_KAFKA__CLIENT_OPTIONS", '{"fetch.min.bytes": 1024}')
    monkeypatch.setenv("KYC_SYNC_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.topic == "audit.v2"
    assert settings.kafka.dead_letter_topic == "audit.v2.dlq"
    assert settings.window.seconds == 30.5
    assert settings.window.max_events == 5000
    assert settings.warehouse.table == "profiles_now"
    assert settings.kafka.client_options == {"fetch.min.bytes": 1024}
    assert settings.log_level == "DEBUG"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    settings = load_settings()
    assert settings.kafka.topic == "kyc_profile_audit"
    assert settings.kafka.group_id == "kyc-sync"
    assert settings.kafka.dead_letter_topic == "kyc_profile_audit.dlq"
    assert settings.decoding.format == "avro"
    assert settings.window.seconds == 600.0
    assert settings.warehouse.kind == "duckdb"
    assert settings.warehouse.table == "kyc_profile_current"
    assert settings.warehouse.state_table == "kyc_profile_state"
    assert settings.history.enabled is False
    assert settings.history.table == "kyc_profile_history"


def test_unprefixed_env_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    monkeypatch.setenv("KAFKA__TOPIC", "not-ours")
    assert load_settings().kafka.topic == "kyc_profile_audit"


TOML = """
log_level = "WARNING"

[kafka]
bootstrap_servers = "file-broker:9092"
topic = "from-file"
client_options = { "session.timeout.ms" = 45000 }

[window]
seconds = 120
max_events = 777

[warehouse]
table = "current_from_file"
"""


def test_toml_file(tmp_path: Path) -> None:
    settings = load_settings(config_file=write_toml(tmp_path, TOML))
    assert settings.kafka.bootstrap_servers == "file-broker:9092"
    assert settings.kafka.topic == "from-file"
    assert settings.kafka.client_options == {"session.timeout.ms": 45000}
    assert settings.window.seconds == 120
    assert settings.window.max_events == 777
    assert settings.warehouse.table == "current_from_file"
    assert settings.log_level == "WARNING"


def test_toml_file_from_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KYC_SYNC_CONFIG", str(write_toml(tmp_path, TOML)))
    assert load_settings().kafka.topic == "from-file"


def test_missing_config_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(config_file=tmp_path / "absent.toml")


def test_env_overrides_file_field_by_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KYC_SYNC_KAFKA__TOPIC", "from-env")
    monkeypatch.setenv("KYC_SYNC_WINDOW__SECONDS", "45")
    settings = load_settings(config_file=write_toml(tmp_path, TOML))
    assert settings.kafka.topic == "from-env"
    assert settings.window.seconds == 45
    # Fields the environment does not set still come from the file, in the same sections.
    assert settings.kafka.bootstrap_servers == "file-broker:9092"
    assert settings.window.max_events == 777
    assert settings.warehouse.table == "current_from_file"


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "env-broker:9092")
    monkeypatch.setenv("KYC_SYNC_LOG_LEVEL", "ERROR")
    settings = load_settings(log_level="DEBUG")
    assert settings.log_level == "DEBUG"
    assert settings.kafka.bootstrap_servers == "env-broker:9092"


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_missing_bootstrap_servers(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Valid settings (show and settings need no Kafka), which the Kafka commands refuse."""
    if value is not None:
        monkeypatch.setenv(BOOTSTRAP, value)
    problem = load_settings().kafka_problem()
    assert problem is not None
    assert "kafka.bootstrap_servers is required" in problem


def test_confluent_requires_registry_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    monkeypatch.setenv("KYC_SYNC_DECODING__FORMAT", "confluent")
    with pytest.raises(ValidationError, match=r"decoding\.schema_registry_url"):
        load_settings()
    monkeypatch.setenv("KYC_SYNC_DECODING__SCHEMA_REGISTRY_URL", "http://registry:8081")
    assert load_settings().decoding.format == "confluent"


@pytest.mark.parametrize(
    ("name", "value", "location"),
    [
        pytest.param("KYC_SYNC_WINDOW__SECONDS", "0", "window.seconds", id="window-zero"),
        pytest.param("KYC_SYNC_WINDOW__SECONDS", "-5", "window.seconds", id="window-negative"),
        pytest.param("KYC_SYNC_WINDOW__MAX_EVENTS", "0", "window.max_events",
                     id="max-events-zero"),
        pytest.param("KYC_SYNC_WINDOW__MAX_BYTES", "-1", "window.max_bytes",
                     id="max-bytes-negative"),
        pytest.param("KYC_SYNC_WAREHOUSE__TABLE", "x; drop table y", "warehouse.table",
                     id="table-injection"),
        pytest.param("KYC_SYNC_WAREHOUSE__TABLE", 'a"b', "warehouse.table", id="table-quote"),
        pytest.param("KYC_SYNC_WAREHOUSE__TABLE", "1table", "warehouse.table",
                     id="table-leading-digit"),
        pytest.param("KYC_SYNC_WAREHOUSE__STATE_TABLE", "a.b", "warehouse.state_table",
                     id="state-table-dot"),
        pytest.param("KYC_SYNC_WAREHOUSE__LEDGER_TABLE", "led ger", "warehouse.ledger_table",
                     id="ledger-table-space"),
        pytest.param("KYC_SYNC_DUCKDB__SCHEMA_NAME", "main--", "duckdb.schema_name",
                     id="schema-comment"),
        pytest.param("KYC_SYNC_HISTORY__TABLE", "hist ory", "history.table",
                     id="history-table-space"),
        pytest.param("KYC_SYNC_HISTORY__ENABLED", "maybe", "history.enabled",
                     id="history-enabled-not-bool"),
        pytest.param("KYC_SYNC_KAFKA__CLIENT_OPTIONS", '{"enable.auto.commit": true}',
                     "kafka.client_options", id="reserved-auto-commit"),
        pytest.param("KYC_SYNC_KAFKA__CLIENT_OPTIONS", '{"group.id": "other"}',
                     "kafka.client_options", id="reserved-group-id"),
        pytest.param("KYC_SYNC_KAFKA__SECURITY_PROTOCOL", "SASL_HTTP",
                     "kafka.security_protocol", id="unknown-protocol"),
        pytest.param("KYC_SYNC_LOG_LEVEL", "LOUD", "log_level", id="unknown-log-level"),
    ],
)
def test_invalid_env_value_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, location: str
) -> None:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        load_settings()
    assert location in error_locations(caught.value)


def test_reserved_client_option_named_in_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, TOML.replace(
        '{ "session.timeout.ms" = 45000 }', '{ "enable.auto.commit" = true }'
    ))
    with pytest.raises(ValidationError, match=r"enable\.auto\.commit"):
        load_settings(config_file=path)


def test_bad_identifier_in_file_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, TOML.replace('"current_from_file"', '"x; drop table y"'))
    with pytest.raises(ValidationError) as caught:
        load_settings(config_file=path)
    assert "warehouse.table" in error_locations(caught.value)


def test_unknown_key_in_file_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, TOML + '\n[kafka_typo]\nbootstrap_servers = "x"\n')
    with pytest.raises(ValidationError):
        load_settings(config_file=path)


# --------------------------------------------------------------------------- secrets


def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    monkeypatch.setenv("KYC_SYNC_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KYC_SYNC_KAFKA__SASL_USERNAME", "kyc")
    monkeypatch.setenv("KYC_SYNC_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KYC_SYNC_DECODING__SCHEMA_REGISTRY_PASSWORD", SECRET + "-registry")
    return load_settings()


def test_secret_is_kept_for_use(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = secret_settings(monkeypatch)
    assert settings.kafka.sasl_password.get_secret_value() == SECRET
    assert settings.decoding.schema_registry_password.get_secret_value() == SECRET + "-registry"


def test_redacted_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = secret_settings(monkeypatch)
    redacted = settings.redacted()
    assert SECRET not in str(redacted)
    assert SECRET not in json.dumps(redacted)  # JSON-able as it is
    assert redacted["kafka"]["sasl_password"] != ""
    assert set(redacted["kafka"]["sasl_password"]) == {"*"}
    assert set(redacted["decoding"]["schema_registry_password"]) == {"*"}
    assert redacted["kafka"]["sasl_username"] == "kyc"
    assert redacted["kafka"]["bootstrap_servers"] == "localhost:9092"


def test_repr_and_str_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = secret_settings(monkeypatch)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in repr(settings.kafka)


def test_history_names_its_table_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer.app import table_names
    from consumer.ops.rebuild import rebuild_settings

    monkeypatch.setenv(BOOTSTRAP, "localhost:9092")
    assert table_names(load_settings()).history is None
    monkeypatch.setenv("KYC_SYNC_HISTORY__ENABLED", "true")
    monkeypatch.setenv("KYC_SYNC_HISTORY__TABLE", "profile_versions")
    settings = load_settings()
    names = table_names(settings, True, "DB", "AUDIT")
    assert names.history is not None
    assert names.history.sql() == '"DB"."AUDIT"."PROFILE_VERSIONS"'
    rebuilt = table_names(rebuild_settings(settings, "g.full-refresh.1"))
    assert rebuilt.history is not None
    assert rebuilt.history.sql() == '"profile_versions__rebuild"'
