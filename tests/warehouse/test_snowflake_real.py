"""The writer contract against a real Snowflake account: the very tests of ``test_contract.py``,
each in a schema of its own that is dropped afterwards.

Runs only when the account is configured in the environment, otherwise the module is reported as
skipped with the reason:

- ``SNOWFLAKE_ACCOUNT``, ``SNOWFLAKE_USER``, ``SNOWFLAKE_DATABASE`` (the role must be allowed to
  create and drop schemas in it, and to create tables, views and stages in them);
- ``SNOWFLAKE_PASSWORD``, or ``SNOWFLAKE_PRIVATE_KEY_FILE`` / ``SNOWFLAKE_PRIVATE_KEY`` (PEM) with
  ``SNOWFLAKE_PRIVATE_KEY_PASSPHRASE`` if it is encrypted;
- optional: ``SNOWFLAKE_ROLE``, ``SNOWFLAKE_WAREHOUSE``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

REQUIRED = ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_DATABASE")
AUTH = ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY_FILE", "SNOWFLAKE_PRIVATE_KEY")

_missing = [name for name in REQUIRED if not os.environ.get(name)]
if not any(os.environ.get(name) for name in AUTH):
    _missing.append(" or ".join(AUTH))
if _missing:
    pytest.skip(
        f"real Snowflake not configured: set {', '.join(_missing)} to run the writer contract "
        "against an account",
        allow_module_level=True,
    )

import snowflake.connector  # noqa: E402  (only needed, and importable, when configured)

from tests.warehouse import test_contract as contract  # noqa: E402
from warehouse.identifiers import Ident  # noqa: E402
from warehouse.snowflake_settings import SnowflakeSettings  # noqa: E402

REAL_EXAMPLES = 5


def real_config(schema: str) -> SnowflakeSettings:
    env = os.environ
    key_file = env.get("SNOWFLAKE_PRIVATE_KEY_FILE")
    return SnowflakeSettings(
        account=env["SNOWFLAKE_ACCOUNT"],
        user=env["SNOWFLAKE_USER"],
        password=SecretStr(env.get("SNOWFLAKE_PASSWORD", "")),
        private_key_file=Path(key_file) if key_file else None,
        private_key=SecretStr(env.get("SNOWFLAKE_PRIVATE_KEY", "")),
        private_key_passphrase=SecretStr(env.get("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "")),
        role=env.get("SNOWFLAKE_ROLE", ""),
        warehouse=env.get("SNOWFLAKE_WAREHOUSE", ""),
        database=env["SNOWFLAKE_DATABASE"],
        schema_name=schema,
        query_tag="kyc-sync-tests",
    )


@pytest.fixture
def harness() -> Iterator[contract.Harness]:
    """The Snowflake writer on a schema created for this test, dropped afterwards."""
    schema = f"KYC_SYNC_TEST_{uuid.uuid4().hex[:12].upper()}"
    config = real_config(schema)
    qualified = f"{Ident(config.database, upper=True).sql()}.{Ident(schema, upper=True).sql()}"
    args = {k: v for k, v in config.connect_args().items() if k != "schema"}
    admin = snowflake.connector.connect(**args)
    try:
        admin.cursor().execute(f"CREATE SCHEMA {qualified}")
        h = contract.snowflake_harness(config, examples=REAL_EXAMPLES)
        h.writer.open()
        try:
            yield h
        finally:
            h.writer.close()
            admin.cursor().execute(f"DROP SCHEMA IF EXISTS {qualified} CASCADE")
    finally:
        admin.close()


# Every test of the contract, collected here with the fixture above (new ones included).
globals().update({name: test for name, test in vars(contract).items() if name.startswith("test_")})
