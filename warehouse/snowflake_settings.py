"""How the Snowflake writer connects: its settings section, and the connector's arguments.

Apart from ``warehouse.snowflake_writer`` so that settings load without the connector (the
optional ``kyc-sync[snowflake]`` extra).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from warehouse.errors import TerminalWarehouseError
from warehouse.identifiers import validate_identifier


class SnowflakeSettings(BaseModel):
    """The Snowflake writer's connection (used when ``warehouse.kind`` is "snowflake")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str = Field(
        default="", description="Account identifier, e.g. myorg-myaccount. Required for Snowflake."
    )
    user: str = Field(default="", description="User name. Required for Snowflake.")
    password: SecretStr = Field(
        default=SecretStr(""), description="Password; leave empty to authenticate by key pair."
    )
    private_key_file: Path | None = Field(
        default=None, description="Key-pair authentication: file holding the PEM private key."
    )
    private_key: SecretStr = Field(
        default=SecretStr(""),
        description="Key-pair authentication: the PEM private key itself (e.g. from a secret "
        "store), instead of a file.",
    )
    private_key_passphrase: SecretStr = Field(
        default=SecretStr(""), description="Passphrase of an encrypted private key."
    )
    role: str = Field(default="", description="Role; empty: the user's default role.")
    warehouse: str = Field(
        default="", description="Virtual warehouse; empty: the user's default warehouse."
    )
    database: str = Field(default="", description="Database of the tables. Required for Snowflake.")
    schema_name: str = Field(default="PUBLIC", description="Schema of the tables; must exist.")
    query_tag: str = Field(default="kyc-sync", description="QUERY_TAG of every statement.")
    host: str = Field(
        default="", description="Host name override (e.g. PrivateLink); empty: from the account."
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port override; none: the protocol's default."
    )
    protocol: Literal["https", "http"] = Field(
        default="https", description="https; http only for a local Snowflake test double."
    )
    login_timeout_s: int = Field(default=60, gt=0, description="Give up logging in after this.")
    lock_timeout_s: int = Field(
        default=60, gt=0,
        description="Session LOCK_TIMEOUT: a statement waiting for a table lock another session "
        "holds gives up after this (error 000625); the flush is rolled back and retried, "
        "waiting in the group, for up to warehouse.lock_wait_max_s.",
    )
    statement_timeout_s: int = Field(
        default=180, gt=0,
        description="Session STATEMENT_TIMEOUT_IN_SECONDS: Snowflake cancels a statement running "
        "longer (error 000630, retried). Above lock_timeout_s, below network_timeout_s.",
    )
    network_timeout_s: int = Field(
        default=200, gt=0,
        description="The connector cancels a request (and stops retrying it) after this; the "
        "flush is then retried as a transient error. Above statement_timeout_s; with "
        "login_timeout_s, below the consumer's max.poll.interval.ms.",
    )

    @field_validator("role", "warehouse", "database", "schema_name")
    @classmethod
    def _identifier(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name != "schema_name":
            return value  # optional, or required only for Snowflake (see ``incomplete``)
        return validate_identifier(value)

    def incomplete(self) -> str | None:
        """Why these settings cannot connect, naming the settings; None when complete."""
        required = ("account", "user", "database")
        missing = [f"snowflake.{n}" for n in required if not getattr(self, n)]
        if missing:
            envs = ", ".join("KYC_SYNC_" + m.upper().replace(".", "__") for m in missing)
            return f"{', '.join(missing)} required when warehouse.kind is 'snowflake' ({envs})"
        has_file = self.private_key_file is not None
        has_pem = bool(self.private_key.get_secret_value())
        if has_file and has_pem:
            return "set snowflake.private_key_file or snowflake.private_key, not both"
        if self.password.get_secret_value() and (has_file or has_pem):
            return "set snowflake.password or a private key, not both"
        if not (self.password.get_secret_value() or has_file or has_pem):
            return (
                "snowflake.password or a private key (snowflake.private_key_file or "
                "snowflake.private_key) is required when warehouse.kind is 'snowflake'"
            )
        return None

    def timeouts_problem(self, max_poll_interval_s: float) -> str | None:
        """Why the timeouts are not nested as a flush needs; None when they are.

        A flush blocks the consumer's poll: one attempt (a fresh login, then a statement that
        waits to its limit) must end before ``max.poll.interval.ms`` or the instance is dropped
        from its group. A lock wait must end as a lock error (retried for
        ``warehouse.lock_wait_max_s``) rather than as a statement timeout, and Snowflake must
        cancel a statement before the connector gives up on its request.
        """
        ladder = (
            ("snowflake.lock_timeout_s", self.lock_timeout_s),
            ("snowflake.statement_timeout_s", self.statement_timeout_s),
            ("snowflake.network_timeout_s", self.network_timeout_s),
        )
        for (low, low_s), (high, high_s) in pairwise(ladder):
            if low_s >= high_s:
                return f"{low} ({low_s}) must be below {high} ({high_s})"
        attempt_s = self.login_timeout_s + self.network_timeout_s
        if attempt_s >= max_poll_interval_s:
            return (
                f"snowflake.login_timeout_s + snowflake.network_timeout_s ({attempt_s}) must be "
                f"below the consumer's max.poll.interval.ms ({max_poll_interval_s:g} s, "
                "kafka.client_options): a flush blocks the poll, and an instance that does not "
                "poll within it is dropped from its group"
            )
        return None

    def session_parameters(self) -> dict[str, str | int | bool]:
        """Parameters of every session: its query tag, its lock and statement timeouts, and
        ABORT_DETACHED_QUERY so that a statement of an instance that died is aborted instead of
        running on (and holding its locks) after its connection is lost."""
        params: dict[str, str | int | bool] = {
            "LOCK_TIMEOUT": self.lock_timeout_s,
            "STATEMENT_TIMEOUT_IN_SECONDS": self.statement_timeout_s,
            "ABORT_DETACHED_QUERY": True,
        }
        if self.query_tag:
            params["QUERY_TAG"] = self.query_tag
        return params

    @property
    def auth(self) -> Literal["key-pair", "password"]:
        has_key = self.private_key_file is not None or bool(self.private_key.get_secret_value())
        return "key-pair" if has_key else "password"

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments of ``snowflake.connector.connect`` (secrets included: never log)."""
        args: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database.upper(),
            "schema": self.schema_name.upper(),
            "paramstyle": "qmark",
            "login_timeout": self.login_timeout_s,
            "network_timeout": self.network_timeout_s,
            "session_parameters": self.session_parameters(),
        }
        optional = {"role": self.role, "warehouse": self.warehouse, "host": self.host}
        args.update({k: v for k, v in optional.items() if v})
        if self.port is not None:
            args["port"] = self.port
        args["protocol"] = self.protocol
        if self.auth == "key-pair":
            args["authenticator"] = "SNOWFLAKE_JWT"
            args["private_key"] = private_key_der(self)
        else:
            args["password"] = self.password.get_secret_value()
        return args


def private_key_der(config: SnowflakeSettings) -> bytes:
    """The configured private key (file, or PEM text) as unencrypted PKCS#8 DER for the connector.

    Raises ``TerminalWarehouseError`` naming the setting, never the key or the passphrase.
    """
    if config.private_key_file is not None:
        try:
            pem = config.private_key_file.read_bytes()
        except OSError as err:
            raise TerminalWarehouseError(
                f"snowflake.private_key_file: cannot read {config.private_key_file}: "
                f"{err.strerror}"
            ) from None
        where = "snowflake.private_key_file"
    else:
        text = config.private_key.get_secret_value().strip()
        if "\\n" in text and "\n" not in text:
            text = text.replace("\\n", "\n")  # a PEM squeezed onto one line (env var, secret)
        pem = text.encode()
        where = "snowflake.private_key"
    return load_private_key(pem, config.private_key_passphrase, where)


def load_private_key(pem: bytes, passphrase: SecretStr, where: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    secret = passphrase.get_secret_value().encode() or None
    try:
        key = serialization.load_pem_private_key(pem, password=secret)
    except (ValueError, TypeError) as err:
        reason = (
            "it is encrypted: set snowflake.private_key_passphrase"
            if secret is None and "encrypted" in str(err).lower()
            else "not a PEM private key, or the passphrase does not match"
        )
        raise TerminalWarehouseError(f"{where}: cannot load the private key: {reason}") from None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
