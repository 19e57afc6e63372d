"""A minimal Schema Registry client: the writer schema of an id (Confluent-compatible API)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from consumer.decode.decoder import RegistryUnavailable, UnknownSchemaId


class SchemaRegistry:
    """``GET <url>/schemas/ids/<id>``; HTTP basic auth when a user is given."""

    def __init__(
        self, url: str, user: str | None = None, password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"schema registry url must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._auth: str | None = None
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)  # noqa: S310 (scheme checked above)
        request.add_header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
        if self._auth:
            request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            return json.loads(response.read())

    def schema(self, schema_id: int) -> Mapping[str, Any]:
        try:
            body = self._get(f"/schemas/ids/{schema_id}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise UnknownSchemaId(schema_id) from None
            raise RegistryUnavailable(f"schema registry answered HTTP {err.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise RegistryUnavailable(f"schema registry unreachable: {err}") from None
        if body.get("schemaType", "AVRO") != "AVRO":
            raise UnknownSchemaId(schema_id)
        schema: Mapping[str, Any] = json.loads(body["schema"])
        return schema

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register a schema under a subject (used by the sample producer); returns its id."""
        data = json.dumps({"schema": json.dumps(schema)}).encode()
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/subjects/{subject}/versions", data=data, method="POST"
        )
        request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        if self._auth:
            request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            return int(json.loads(response.read())["id"])
