"""All settings of kyc-sync: environment variables (``KYC_SYNC_`` prefix, ``__`` between
sections, e.g. ``KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS``) over an optional TOML file
(``--config`` or ``KYC_SYNC_CONFIG``) over the defaults below.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from schemas.evolution import ColumnPolicy
from warehouse.identifiers import validate_identifier
from warehouse.snowflake_settings import SnowflakeSettings
from warehouse.tables import VIEW_COLUMNS

# Options kyc-sync owns: passing them through would break the commit protocol.
RESERVED_CLIENT_OPTIONS = frozenset(
    {"enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"}
)
# librdkafka options that hold secrets (sasl.password, ssl.key.password, ssl.key.pem,
# sasl.oauthbearer.client.secret, ...): their values are masked in ``Settings.redacted()``.
SECRET_CLIENT_OPTION_MARKERS = ("password", "secret", "key.pem", "ssl_key", "oauthbearer.config")
REDACTED = "**********"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(Section):
    bootstrap_servers: str = Field(
        default="", description="Kafka bootstrap servers, host:port[,host:port]. Required."
    )
    topic: str = Field(default="kyc_profile_audit", description="The audit topic.")
    group_id: str = Field(default="kyc-sync", description="Consumer group; instances share it.")
    dlq_topic: str = Field(
        default="", description="Dead-letter topic; empty means '<topic>.dlq'."
    )
    create_dlq_topic: bool = Field(
        default=True, description="Create the dead-letter topic at start if it is missing."
    )
    dlq_replication_factor: int = Field(
        default=-1, ge=-1,
        description="Replication factor of a dead-letter topic kyc-sync creates; -1: the "
        "broker's default.replication.factor.",
    )
    dlq_topic_config: dict[str, str] = Field(
        default_factory=dict,
        description="Topic settings of a dead-letter topic kyc-sync creates, e.g. "
        "{\"min.insync.replicas\": \"2\", \"retention.ms\": \"2592000000\"} (JSON object in "
        "the environment).",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: str = Field(default="", description="e.g. SCRAM-SHA-512, PLAIN.")
    sasl_username: str = Field(default="", description="SASL user name.")
    sasl_password: SecretStr = Field(default=SecretStr(""), description="SASL password.")
    client_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka options passed to the consumer and producer as they are "
        "(JSON object in the environment).",
    )
    consume_batch: int = Field(
        default=10_000, gt=0, description="Messages asked for per consume() call."
    )
    poll_timeout_s: float = Field(default=0.5, gt=0, description="consume() timeout, seconds.")
    request_timeout_s: float = Field(
        default=30.0, gt=0,
        description="lag and replay give up on a Kafka request (metadata, offsets, a group) "
        "after this long, with one line and exit 1.",
    )

    @field_validator("client_options")
    @classmethod
    def _not_reserved(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        clash = sorted(RESERVED_CLIENT_OPTIONS & value.keys())
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by kyc-sync and cannot be overridden")
        return value

    @field_validator("dlq_replication_factor")
    @classmethod
    def _replication(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the broker's default) or at least 1")
        return value

    @property
    def max_poll_interval_s(self) -> float:
        """The consumer's ``max.poll.interval.ms`` in seconds (librdkafka's default: 300)."""
        return float(self.client_options.get("max.poll.interval.ms", 300_000)) / 1000

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() mask secret ``client_options`` like ``redacted()`` does."""
        for name, value in super().__repr_args__():
            if name == "client_options":
                yield name, redact_client_options(value)
            else:
                yield name, value


class DecodingSettings(Section):
    format: Literal["avro", "confluent"] = Field(
        default="avro",
        description="'avro': schemaless Avro written with the schema file; 'confluent': "
        "Confluent wire format with a Schema Registry.",
    )
    schema_file: Path | None = Field(
        default=None, description="Writer schema for 'avro'; default: the packaged schema."
    )
    schema_registry_url: str = Field(default="", description="Registry URL for 'confluent'.")
    schema_registry_user: str = Field(default="", description="Registry basic-auth user.")
    schema_registry_password: SecretStr = Field(
        default=SecretStr(""), description="Registry basic-auth password."
    )
    on_invalid: Literal["dlq", "fail"] = Field(
        default="dlq",
        description="What to do with an event that cannot be decoded or validated: send it to "
        "the dead-letter topic, or stop.",
    )
    schema_evolution: Literal["evolve", "freeze", "discard"] = Field(
        default="evolve",
        description="A writer schema with a field the table lacks: 'evolve' adds a nullable "
        "column (and widens int->long, float->double); 'freeze' makes its events dead letters "
        "(class schema); 'discard' drops the field (metric kyc_sync_fields_discarded_total).",
    )


class SchemaRegistrySettings(Section):
    """TLS and authentication of the Schema Registry client (``decoding.format=confluent``;
    its URL and basic-auth user are ``decoding.schema_registry_*``)."""

    ssl_ca_location: str = Field(
        default="", description="CA bundle (file or directory) that signs the registry's "
        "certificate; empty: the system's."
    )
    ssl_certificate_location: str = Field(
        default="", description="Client certificate (PEM) for mutual TLS."
    )
    ssl_key_location: str = Field(default="", description="Client private key (PEM).")
    ssl_key_password: SecretStr = Field(
        default=SecretStr(""), description="Password of the client private key."
    )
    bearer_auth: Literal["", "OAUTHBEARER", "STATIC_TOKEN"] = Field(
        default="",
        description="Bearer authentication: 'OAUTHBEARER' (OAuth 2 client credentials from "
        "oauth_issuer_url) or 'STATIC_TOKEN' (bearer_token); empty: none or basic auth.",
    )
    bearer_token: SecretStr = Field(default=SecretStr(""), description="STATIC_TOKEN's token.")
    oauth_client_id: str = Field(default="", description="OAUTHBEARER client id.")
    oauth_client_secret: SecretStr = Field(
        default=SecretStr(""), description="OAUTHBEARER client secret."
    )
    oauth_scope: str = Field(default="", description="OAUTHBEARER scope.")
    oauth_issuer_url: str = Field(
        default="", description="OAUTHBEARER: the URL that issues the OAuth tokens."
    )
    logical_cluster: str = Field(
        default="", description="Bearer auth: the registry's logical cluster id, if it has one."
    )
    identity_pool_id: str = Field(default="", description="Bearer auth: identity pool id.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one registry request.")

    @model_validator(mode="after")
    def _complete(self) -> SchemaRegistrySettings:
        if self.bearer_auth == "STATIC_TOKEN" and not self.bearer_token.get_secret_value():
            raise ValueError("bearer_auth STATIC_TOKEN needs schema_registry.bearer_token")
        if self.bearer_auth == "OAUTHBEARER" and not (
            self.oauth_client_id and self.oauth_client_secret.get_secret_value()
            and self.oauth_issuer_url and self.oauth_scope
        ):
            raise ValueError(
                "bearer_auth OAUTHBEARER needs schema_registry.oauth_client_id, "
                "oauth_client_secret, oauth_scope and oauth_issuer_url"
            )
        if self.ssl_key_location and not self.ssl_certificate_location:
            raise ValueError("ssl_key_location needs ssl_certificate_location")
        return self


class ColumnsSettings(Section):
    """Personal data in the table: fields never stored, fields stored as keyed hashes. Changing
    either on an existing table is refused; a full refresh applies it."""

    exclude: tuple[str, ...] = Field(
        default=(), description="Fields never stored (JSON list in the environment)."
    )
    hash: tuple[str, ...] = Field(
        default=(),
        description="Fields stored as HMAC-SHA256 hex under hash_key: equal values give equal "
        "hashes, so joins still work (JSON list in the environment).",
    )
    hash_key: SecretStr = Field(
        default=SecretStr(""),
        description="Secret key of the hashed fields (at least 16 bytes); required with hash.",
    )

    @model_validator(mode="after")
    def _valid(self) -> ColumnsSettings:
        self.policy()  # the key and version fields cannot be excluded or hashed
        key = self.hash_key.get_secret_value()
        if self.hash and len(key.encode()) < 16:
            raise ValueError("columns.hash needs columns.hash_key of at least 16 bytes")
        return self

    def policy(self) -> ColumnPolicy:
        return ColumnPolicy(frozenset(self.exclude), frozenset(self.hash))


class WindowSettings(Section):
    seconds: float = Field(default=600.0, gt=0, description="Window length, seconds.")
    max_events: int = Field(
        default=1_000_000, gt=0,
        description="Flush early at this many events. Bounds one window; the next one fills "
        "while a window is written, so memory holds up to two.",
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Flush early at this many payload bytes."
    )


class WarehouseSettings(Section):
    kind: Literal["duckdb", "snowflake"] = Field(default="duckdb", description="Which writer.")
    table: str = Field(default="kyc_profile_current", description="View of the live profiles.")
    state_table: str = Field(
        default="kyc_profile_state", description="Table of every profile's latest version."
    )
    ledger_table: str = Field(default="kyc_sync_ledger", description="One row per batch.")
    columns_table: str = Field(
        default="kyc_sync_columns",
        description="Column metadata: which writer schema added or widened each column, and "
        "the column policy the table was built with.",
    )
    retry_max_s: float = Field(
        default=120.0, gt=0, description="Give up retrying transient errors after this long."
    )
    lock_wait_max_s: float = Field(
        default=900.0, gt=0,
        description="Give up retrying a write that waits on a lock another session holds after "
        "this long (at least retry_max_s). Long enough for Snowflake to abort the transaction "
        "of an instance that died mid-flush (about 5 minutes idle, up to 5 more for a statement "
        "it was running).",
    )
    read_timeout_s: float = Field(
        default=30.0, gt=0,
        description="lag and check give up on a warehouse that does not answer after this "
        "long in all (retries included), with one line and exit 1.",
    )

    @field_validator("table", "state_table", "ledger_table", "columns_table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value)

    @model_validator(mode="after")
    def _budgets(self) -> WarehouseSettings:
        if self.lock_wait_max_s < self.retry_max_s:
            raise ValueError(
                f"warehouse.lock_wait_max_s ({self.lock_wait_max_s:g}) must be at least "
                f"warehouse.retry_max_s ({self.retry_max_s:g})"
            )
        return self


class DuckDBSettings(Section):
    path: str = Field(default="kyc.duckdb", description="Database file.")
    schema_name: str = Field(default="main", description="Schema of the tables.")
    memory_limit: str = Field(
        default="128MB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory limit while kyc-sync uses the file (e.g. 128MB, 1GiB): "
        "what a flush's joins and checkpoint may hold before DuckDB spills to "
        "<path>.tmp. DuckDB's own default is 80% of the machine's memory.",
    )

    @field_validator("schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value)


class HistorySettings(Section):
    """The profile history table: every distinct version of each profile, with its interval."""

    enabled: bool = Field(
        default=False,
        description="Keep the history table: one row per distinct version of each profile, "
        "valid_from/valid_to, written in the same transaction as the state table (README, "
        "'Profile history', for the default).",
    )
    table: str = Field(default="kyc_profile_history", description="The history table.")

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value)


class RunSettings(Section):
    """Time budgets of the run loop."""

    revoke_budget_s: float = Field(
        default=20.0, gt=0,
        description="On partition revocation, how long the flush of the buffer may retry before "
        "the buffer is dropped uncommitted (the new owner re-reads it).",
    )
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0,
        description="After SIGTERM/SIGINT, how long finishing the write in flight, flushing "
        "the rest, committing and leaving the group may take before the process exits without "
        "committing (what is not committed is re-read).",
    )
    caught_up_wait_s: float = Field(
        default=300.0, gt=0,
        description="run --until-caught-up: once this instance has read its own partitions, how "
        "long the group may commit nothing while other partitions are not read to their end "
        "(held by another member, or by a killed one until session.timeout.ms) before it "
        "exits 1 naming them.",
    )


class MetricsSettings(Section):
    """The Prometheus endpoint of ``run``: /metrics, /healthz, /readyz."""

    enabled: bool = Field(default=True, description="Serve metrics while running.")
    host: str = Field(default="127.0.0.1", description="Address to bind; 0.0.0.0 for all.")
    port: int = Field(
        default=9464, ge=0, le=65535, description="TCP port; 0 picks a free one (logged)."
    )


class ChecksSettings(Section):
    """Data checks of ``kyc-sync check``."""

    freshness_max_age_s: float = Field(
        default=900.0, gt=0,
        description="Fail when an event older than this (seconds) is still not applied: the "
        "age of the oldest unapplied event, not of the newest op_time.",
    )
    not_null: tuple[str, ...] = Field(
        default=("kyc_profile_id", "op_time"),
        description="Columns of the view that must never be null (JSON list in the environment).",
    )

    @field_validator("not_null")
    @classmethod
    def _view_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in VIEW_COLUMNS]
        if unknown:
            raise ValueError(
                f"not columns of the view: {', '.join(unknown)} (one of {', '.join(VIEW_COLUMNS)})"
            )
        if not value:
            raise ValueError("name at least one column")
        return value


class ReplaySettings(Section):
    """Offset moves of ``kyc-sync replay``."""

    backup_dir: Path = Field(
        default=Path("."),
        description="Directory where every `replay --execute` first saves the group's "
        "committed offsets (CSV as kafka-consumer-groups --export writes it, owner-only).",
    )


class ExporterSettings(Section):
    """The lag exporter, ``kyc-sync lag --serve``."""

    interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between two reads of the group from Kafka."
    )


class FaultSettings(Section):
    """Injected warehouse failures for fault and chaos tests; off by default."""

    warehouse: Literal["off", "transient", "terminal", "stall"] = Field(
        default="off", description="Fail (or stall) flushes after the MERGE, before the commit."
    )
    times: int = Field(default=1, ge=0, description="How many flushes fail; 0: no limit.")
    probability: float = Field(
        default=1.0, ge=0, le=1, description="Chance that a flush fails while faults remain."
    )
    seed: int | None = Field(default=None, description="Random seed of the fault draw.")
    stall_s: float = Field(
        default=0.0, ge=0, description="With warehouse='stall': how long each faulty flush "
        "blocks (then it goes on); a hung warehouse for the /healthz test.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KYC_SYNC_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    decoding: DecodingSettings = DecodingSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    columns: ColumnsSettings = ColumnsSettings()
    window: WindowSettings = WindowSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    duckdb: DuckDBSettings = DuckDBSettings()
    history: HistorySettings = HistorySettings()
    snowflake: SnowflakeSettings = SnowflakeSettings()
    run: RunSettings = RunSettings()
    faults: FaultSettings = FaultSettings()
    metrics: MetricsSettings = MetricsSettings()
    checks: ChecksSettings = ChecksSettings()
    replay: ReplaySettings = ReplaySettings()
    exporter: ExporterSettings = ExporterSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as plain text, or one JSON object per line (also --log-format).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        if self.decoding.format == "confluent" and not self.decoding.schema_registry_url:
            raise ValueError(
                "decoding.schema_registry_url is required when decoding.format is 'confluent'"
            )
        if self.warehouse.kind == "snowflake" and (
            problem := self.snowflake.incomplete()
            or self.snowflake.timeouts_problem(self.kafka.max_poll_interval_s)
        ):
            raise ValueError(problem)
        return self

    def kafka_problem(self) -> str | None:
        """Why the commands that talk to Kafka cannot run; None when they can. ``show``,
        ``settings`` and ``check`` do not need Kafka, so this is not a validation rule."""
        if not self.kafka.bootstrap_servers.strip():
            return "kafka.bootstrap_servers is required (KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS)"
        return None

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-able data, secrets replaced by asterisks."""
        dumped: dict[str, Any] = self.model_dump(mode="json")
        dumped["kafka"]["client_options"] = redact_client_options(dumped["kafka"]["client_options"])
        return dumped


def is_secret_client_option(name: str) -> bool:
    """True for a librdkafka option whose value is a secret (masked in the settings dump)."""
    return any(marker in name.lower() for marker in SECRET_CLIENT_OPTION_MARKERS)


def redact_client_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: REDACTED if is_secret_client_option(k) else v for k, v in options.items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides`` > environment > TOML file > defaults."""
    path = config_file or (Path(os.environ["KYC_SYNC_CONFIG"])
                           if os.environ.get("KYC_SYNC_CONFIG") else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        return FileSettings(**overrides)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    except SettingsError as err:
        raise ValueError(_explain_source_error(err, os.environ)) from None


def _explain_source_error(err: SettingsError, environ: Mapping[str, str]) -> str:
    """pydantic-settings names only the section (``kafka``) of an environment variable it
    could not parse; name the variable and its setting instead, e.g. a JSON object that is not
    valid JSON."""
    for name, value in sorted(environ.items()):
        path = _setting_of(name)
        if path is None:
            continue
        annotation = _annotation(path)
        if annotation is None or not _is_json_setting(annotation):
            continue
        try:
            json.loads(value)
        except ValueError as bad:
            return f"{name} ({'.'.join(path)}) is not valid JSON: {bad}"
    return str(err)


def _setting_of(env_name: str) -> tuple[str, ...] | None:
    prefix = "KYC_SYNC_"
    if not env_name.upper().startswith(prefix):
        return None
    return tuple(part.lower() for part in env_name[len(prefix):].split("__"))


def _annotation(path: tuple[str, ...]) -> Any:
    model: Any = Settings
    annotation: Any = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = model = field.annotation
    return annotation


def _is_json_setting(annotation: Any) -> bool:
    """Settings that the environment gives as JSON: objects, lists, whole sections."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return get_origin(annotation) in (dict, list, tuple)
