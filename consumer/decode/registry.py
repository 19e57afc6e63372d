"""The Schema Registry, through ``confluent_kafka.schema_registry``: the writer schema of an id
(decoding), registering a schema (the sample producer).

The client brings TLS (a CA, mutual TLS), basic auth and OAuth bearer tokens; its own retries are
turned off, since kyc-sync's rule is simpler: any failure to reach the registry, or an answer
other than "this id does not exist", raises ``RegistryUnavailable``, and the run loop re-reads the
events after a backoff, staying in its group. An event is never dead-lettered because the
registry is away. Schemas are cached per id by the decoder (and by the client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.decode.decoder import RegistryUnavailable, UnknownSchemaId

NOT_FOUND_CODES = frozenset({40401, 40402, 40403})
"""Registry error codes that mean the subject, version or schema id does not exist."""


def client_config(
    url: str, user: str = "", password: str = "", options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``SchemaRegistryClient`` configuration: ``url``, basic auth when ``user`` is set,
    then ``options`` (TLS, bearer auth, timeout: the client's own property names)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"schema registry url must be http(s): {url!r}")
    conf: dict[str, Any] = {"url": url.rstrip("/"), "max.retries": 0}
    if user:
        conf["basic.auth.user.info"] = f"{user}:{password}"
    conf.update({k: v for k, v in (options or {}).items() if v not in ("", None)})
    return conf


class SchemaRegistry:
    """The writer schema of an id; subjects and versions of an id; registering a schema."""

    def __init__(
        self, url: str, user: str | None = None, password: str | None = None,
        timeout_s: float = 10.0, options: Mapping[str, Any] | None = None,
    ) -> None:
        conf = client_config(url, user or "", password or "", {"timeout": timeout_s,
                                                               **(options or {})})
        self.url = conf["url"]
        try:
            self.client = SchemaRegistryClient(conf)
        except (ValueError, TypeError) as err:
            raise ValueError(f"schema registry client: {err}") from None

    def schema(self, schema_id: int) -> Mapping[str, Any]:
        try:
            found = self.client.get_schema(schema_id)
        except SchemaRegistryError as err:
            if err.http_status_code == 404 or err.error_code in NOT_FOUND_CODES:
                raise UnknownSchemaId(schema_id) from None
            raise RegistryUnavailable(f"schema registry answered: {err}") from None
        except Exception as err:  # network, TLS, OAuth token: the registry is away, not the event
            raise RegistryUnavailable(
                f"schema registry unreachable: {type(err).__name__}: {err}"
            ) from None
        if (found.schema_type or "AVRO") != "AVRO" or found.schema_str is None:
            raise UnknownSchemaId(schema_id)
        try:
            parsed: Mapping[str, Any] = json.loads(found.schema_str)
        except ValueError:
            raise UnknownSchemaId(schema_id) from None
        return parsed

    def versions(self, schema_id: int) -> str:
        """``subject v2[, ...]`` of the id, for the column metadata; "" when unknown."""
        try:
            pairs = self.client.get_schema_versions(schema_id)
        except Exception:  # best effort: the metadata names the id either way
            return ""
        return ", ".join(f"{p.subject} v{p.version}" for p in pairs)

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register a schema under a subject; returns its id (an identical schema keeps its
        id). ``OSError`` when the registry refuses or cannot be reached."""
        try:
            return int(self.client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))
        except SchemaRegistryError as err:
            raise OSError(f"schema registry refused the schema: {err}") from None
        except Exception as err:
            raise OSError(f"schema registry unreachable: {type(err).__name__}: {err}") from None
