"""Secrets never leave the settings in readable form: not in repr()/str(), not in the settings
dump (``redacted()``, logged at start and printed by ``kyc-sync settings``), not in the message
of invalid settings. Every ``SecretStr`` setting is covered, including ones added later."""

from __future__ import annotations

import json
import os
import re
import typing
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretBytes, SecretStr

from consumer.cli import main
from consumer.settings import REDACTED, Settings, is_secret_client_option, load_settings
from consumer.source.client import admin_config, consumer_config, producer_config

# A setting whose name says it holds a secret must be a SecretStr (paths to key files are not).
SECRET_NAME = re.compile(r"password|passphrase|secret|token|private_key(?!_(path|file))")
SECRET_OPTIONS = ("ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.key.pem")
PLAIN_OPTIONS = {"ssl.ca.location": "/etc/kyc/ca.pem", "client.id": "kyc-sync-test"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("KYC_SYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def sections() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[name] = field.annotation
    return out


def is_secret_type(annotation: object) -> bool:
    secret_types = (SecretStr, SecretBytes)
    if isinstance(annotation, type):
        return issubclass(annotation, secret_types)
    return any(is_secret_type(arg) for arg in typing.get_args(annotation))


def secret_settings() -> dict[str, str]:
    """``section.field`` -> a unique sentinel, for every SecretStr setting."""
    return {
        f"{section}.{name}": f"Sentinel{uuid.uuid4().hex}"
        for section, model in sections().items()
        for name, field in model.model_fields.items()
        if is_secret_type(field.annotation)
    }


def env_name(path: str) -> str:
    return "KYC_SYNC_" + path.upper().replace(".", "__")


def load_with_secrets(monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, list[str]]:
    """Settings with every secret setting and some secret client options set to sentinels."""
    secrets = secret_settings()
    for path, sentinel in secrets.items():
        monkeypatch.setenv(env_name(path), sentinel)
    option_secrets = {name: f"Sentinel{uuid.uuid4().hex}" for name in SECRET_OPTIONS}
    monkeypatch.setenv("KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("KYC_SYNC_KAFKA__SASL_USERNAME", "kyc")
    monkeypatch.setenv(
        "KYC_SYNC_KAFKA__CLIENT_OPTIONS", json.dumps({**option_secrets, **PLAIN_OPTIONS})
    )
    return load_settings(), [*secrets.values(), *option_secrets.values()]


def test_secret_settings_are_found() -> None:
    assert {"kafka.sasl_password", "decoding.schema_registry_password"} <= set(secret_settings())


def test_secret_like_settings_are_secret_str() -> None:
    plain = [
        f"{section}.{name}"
        for section, model in sections().items()
        for name, field in model.model_fields.items()
        if SECRET_NAME.search(name) and not is_secret_type(field.annotation)
    ]
    assert plain == [], "declare these as SecretStr so that they are never shown"


def test_repr_str_and_dump_hide_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sentinels = load_with_secrets(monkeypatch)
    dumped = settings.redacted()
    texts = {
        "repr": repr(settings),
        "str": str(settings),
        "dump": json.dumps(dumped),
        **{f"repr({name})": repr(getattr(settings, name)) for name in sections()},
    }

    for where, text in texts.items():
        leaked = [s for s in sentinels if s in text]
        assert leaked == [], f"secret in {where}"
    for path in secret_settings():
        section, name = path.split(".")
        assert dumped[section][name] == REDACTED
    options = dumped["kafka"]["client_options"]
    assert {name: options[name] for name in SECRET_OPTIONS} == dict.fromkeys(
        SECRET_OPTIONS, REDACTED
    )
    assert {name: options[name] for name in PLAIN_OPTIONS} == PLAIN_OPTIONS
    assert dumped["kafka"]["sasl_username"] == "kyc"


def test_secrets_still_reach_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = load_with_secrets(monkeypatch)
    kafka = settings.kafka
    options = kafka.client_options
    for config in (consumer_config(kafka), producer_config(kafka), admin_config(kafka)):
        assert config["sasl.password"] == kafka.sasl_password.get_secret_value()
        assert all(config[name] == options[name] for name in SECRET_OPTIONS)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.keystore.password", True),
        ("ssl.key.pem", True),
        ("sasl.oauthbearer.client.secret", True),
        ("sasl.oauthbearer.config", True),
        ("ssl.ca.location", False),
        ("ssl.key.location", False),
        ("ssl.certificate.pem", False),
        ("sasl.username", False),
        ("debug", False),
    ],
)
def test_is_secret_client_option(name: str, secret: bool) -> None:
    assert is_secret_client_option(name) is secret


@pytest.mark.parametrize(
    "invalid",
    [
        {"KYC_SYNC_WINDOW__SECONDS": "0"},
        {"KYC_SYNC_KAFKA__SASL_PASWORD": "{secret}"},  # misspelt key holding the secret
        {"KYC_SYNC_KAFKA__CLIENT_OPTIONS": '{{"group.id": "x", "ssl.key.password": "{secret}"}}'},
        {"KYC_SYNC_KAFKA__CLIENT_OPTIONS": '{{"ssl.key.password": "{secret}"'},  # bad JSON
    ],
)
def test_invalid_settings_message_hides_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], invalid: dict[str, str]
) -> None:
    secret = f"Sentinel{uuid.uuid4().hex}"
    for path in secret_settings():
        monkeypatch.setenv(env_name(path), secret)
    monkeypatch.setenv("KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    for name, value in invalid.items():
        monkeypatch.setenv(name, value.format(secret=secret))

    code = main(["run"])

    out, err = capsys.readouterr()
    assert code == 2
    assert "invalid settings" in err
    assert secret not in out + err
