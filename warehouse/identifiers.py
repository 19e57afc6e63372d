"""Validated, quoted SQL identifiers. Names from settings never reach SQL unchecked."""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import UsageError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")


class InvalidIdentifierError(UsageError, ValueError):
    """A table, schema or database name that is not a plain SQL identifier."""


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain identifier (letters, digits, ``_``, ``$``)."""
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidIdentifierError(
            f"{name!r} is not a valid identifier: use letters, digits, '_' or '$', "
            "starting with a letter or '_'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Ident:
    """A validated identifier, quoted on rendering.

    ``upper`` renders it in upper case, Snowflake's case for unquoted names, so that quoting keeps
    the name users see when they write it unquoted.
    """

    name: str
    upper: bool = False

    def __post_init__(self) -> None:
        validate_identifier(self.name)

    def sql(self) -> str:
        text = self.name.upper() if self.upper else self.name
        return f'"{text}"'


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """``[database.]schema.table``, each part validated and quoted."""

    parts: tuple[Ident, ...]

    @classmethod
    def of(cls, *names: str | None, upper: bool = False) -> QualifiedName:
        return cls(tuple(Ident(n, upper) for n in names if n))

    def sql(self) -> str:
        return ".".join(p.sql() for p in self.parts)

    @property
    def name(self) -> Ident:
        return self.parts[-1]
