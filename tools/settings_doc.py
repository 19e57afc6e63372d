"""Render the configuration reference (every setting: env name, default, meaning) from the
settings model. ``python -m tools.settings_doc`` prints the Markdown table that
docs/configuration.md holds between the ``settings-reference`` markers; ``--write`` updates
docs/configuration.md; a test checks that the two agree."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from consumer.settings import Settings

BEGIN = "<!-- settings-reference:begin -->"
END = "<!-- settings-reference:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
"""The page that holds the reference."""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(secret)" if value.get_secret_value() else '""'
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def rows(model: type[BaseModel] = Settings, prefix: str = "KYC_SYNC_") -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, f"{env}__")
        else:
            meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
            yield env, _default(field), meaning


def table() -> str:
    lines = ["| env var | default | meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | `{default}` | {meaning} |" for env, default, meaning in rows()]
    return "\n".join(lines)


def section() -> str:
    return f"{BEGIN}\n{table()}\n{END}"


def update(text: str) -> str:
    """``text`` with the reference between the markers replaced by the current one."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + section() + tail


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(update(DOC.read_text("utf-8")), "utf-8")
    else:
        sys.stdout.write(section() + "\n")
