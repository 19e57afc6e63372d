"""The Schema Registry client over ``confluent_kafka.schema_registry``: settings become client
properties (TLS, basic and bearer auth), and every way of not getting a schema maps to the one
the run loop needs: "no such id" (a dead letter) or "registry unavailable" (wait, re-read)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from consumer.app import build_registry, registry_options
from consumer.decode.decoder import RegistryUnavailable, UnknownSchemaId
from consumer.decode.registry import SchemaRegistry, client_config
from consumer.settings import SchemaRegistrySettings, Settings
from schemas import audit_schema
from schemas.errors import UsageError
from tests.warehouse.fakesnow_process import free_port


def settings(**registry: Any) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": "127.0.0.1:9092"},  # type: ignore[arg-type]
        decoding={"format": "confluent", "schema_registry_url": "https://sr.example:8081",
                  "schema_registry_user": "u", "schema_registry_password": "p"},  # type: ignore[arg-type]
        schema_registry=SchemaRegistrySettings(**registry),
    )


def test_tls_and_basic_auth_reach_the_client() -> None:
    options = registry_options(settings(
        ssl_ca_location="/etc/ca.pem", ssl_certificate_location="/etc/me.pem",
        ssl_key_location="/etc/me.key", ssl_key_password=SecretStr("kp"),
    ))
    conf = client_config("https://sr.example:8081/", "u", "p", options)
    assert conf == {
        "url": "https://sr.example:8081", "max.retries": 0, "basic.auth.user.info": "u:p",
        "ssl.ca.location": "/etc/ca.pem", "ssl.certificate.location": "/etc/me.pem",
        "ssl.key.location": "/etc/me.key", "ssl.key.password": "kp",
    }


def test_bearer_auth_static_token_and_oauth() -> None:
    static = registry_options(settings(bearer_auth="STATIC_TOKEN",
                                       bearer_token=SecretStr("t0k"), logical_cluster="lsrc-1"))
    assert static["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert static["bearer.auth.token"] == "t0k"
    assert static["bearer.auth.logical.cluster"] == "lsrc-1"
    oauth = registry_options(settings(
        bearer_auth="OAUTHBEARER", oauth_client_id="id", oauth_client_secret=SecretStr("s"),
        oauth_scope="sr", oauth_issuer_url="https://idp.example/token", logical_cluster="lsrc-1",
        identity_pool_id="pool-1",
    ))
    assert {k: oauth[k] for k in ("bearer.auth.client.id", "bearer.auth.client.secret",
                                  "bearer.auth.scope", "bearer.auth.issuer.endpoint.url")} == {
        "bearer.auth.client.id": "id", "bearer.auth.client.secret": "s",
        "bearer.auth.scope": "sr", "bearer.auth.issuer.endpoint.url": "https://idp.example/token",
    }
    client = build_registry(settings(
        bearer_auth="OAUTHBEARER", oauth_client_id="id", oauth_client_secret=SecretStr("s"),
        oauth_scope="sr", oauth_issuer_url="https://idp.example/token", logical_cluster="lsrc-1",
    ))
    assert client.url == "https://sr.example:8081"


def test_incomplete_bearer_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="STATIC_TOKEN needs"):
        SchemaRegistrySettings(bearer_auth="STATIC_TOKEN")
    with pytest.raises(ValueError, match="OAUTHBEARER needs"):
        SchemaRegistrySettings(bearer_auth="OAUTHBEARER", oauth_client_id="id")
    with pytest.raises(UsageError, match="schema registry url must be http"):
        build_registry(settings().model_copy(update={"decoding": settings().decoding.model_copy(
            update={"schema_registry_url": "ftp://x"})}))


class Answers(BaseHTTPRequestHandler):
    """Answers GET /schemas/ids/<id> with the status the id names (200 for 1)."""

    def do_GET(self) -> None:
        schema_id = int(self.path.split("?")[0].rstrip("/").split("/")[-1])
        status = 200 if schema_id == 1 else schema_id
        body: dict[str, Any] = (
            {"schema": json.dumps(audit_schema())} if status == 200
            else {"error_code": status * 100 + 1, "message": "no"}
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def answering() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_answers_map_to_unknown_id_or_registry_unavailable(answering: str) -> None:
    registry = SchemaRegistry(answering, timeout_s=5)
    assert registry.schema(1) == audit_schema()
    with pytest.raises(UnknownSchemaId):
        registry.schema(404)
    for status in (401, 403, 500, 503):  # wrong credentials included: wait, never dead-letter
        with pytest.raises(RegistryUnavailable, match="schema registry answered"):
            registry.schema(status)


def test_an_unreachable_registry_is_unavailable() -> None:
    registry = SchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RegistryUnavailable, match="schema registry unreachable"):
        registry.schema(1)
    with pytest.raises(OSError, match="schema registry unreachable"):
        registry.register("s-value", audit_schema())
