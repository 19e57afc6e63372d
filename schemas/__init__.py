"""Avro schemas of the audit stream and the generated table DDL, shipped as package data."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

AUDIT_SCHEMA_FILE = "kyc_profile_audit.avsc"


def read_text(name: str) -> str:
    """The text of a file shipped in this package."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def audit_schema() -> dict[str, Any]:
    """The writer schema of ``kyc_profile_audit`` as a JSON object."""
    loaded: dict[str, Any] = json.loads(read_text(AUDIT_SCHEMA_FILE))
    return loaded
