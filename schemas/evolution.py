"""Schema evolution: what a writer schema does to the table's columns, decided once per schema.

``resolve`` compares the fields of a writer schema (``schemas.avro_types``) with the table's
columns (``TableSchema``) under the settings' policy:

- a field the table has, of the same type or a narrower one (an ``int`` into a ``bigint``
  column): read into the column as it is;
- a field of a wider type (``int`` -> ``long``, ``float`` -> ``double``, a decimal with more
  digits and the same scale): the column is widened (``evolve`` only);
- a field the table lacks: ``evolve`` adds a nullable column, ``freeze`` refuses the schema (its
  events become ``schema`` dead letters naming the fields), ``discard`` drops the field;
- a field of another type (``string`` <-> ``long``, a decimal with another scale): refused, the
  column is never touched;
- a column the writer lacks (a field removed upstream): kept; the writer's rows carry null.

The key and version fields (``REQUIRED_FIELDS``) must be present and keep their types. The column
policy for personal data applies first: ``exclude`` fields are never stored, ``hash`` fields are
stored as HMAC-SHA256 hex text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.avro_types import FieldSpec, field_spec, named_types, read_as, version_problem
from schemas.columns import (
    BASE_SCHEMA,
    KEY,
    REQUIRED_FIELDS,
    Column,
    ColumnChange,
    TableSchema,
)

Policy = Literal["evolve", "freeze", "discard"]

RESERVED_NAMES: frozenset[str] = frozenset({
    "src_partition", "src_offset", "is_deleted", "batch_id", "synced_at",
    "valid_from", "valid_to", "is_current",
})
"""Columns kyc-sync writes itself (bookkeeping, history intervals): no field may take one."""

_WIDER: dict[str, str] = {"int": "bigint", "float": "double"}
_FITS: frozenset[tuple[str, str]] = frozenset({("uuid", "text"), ("date", "timestamp")})
"""Writer types whose values a column of another type holds as they are (a date: midnight)."""


@dataclass(frozen=True, slots=True)
class ColumnPolicy:
    """Personal data: fields never stored, fields stored as keyed hashes (HMAC-SHA256 hex)."""

    exclude: frozenset[str] = frozenset()
    hash: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        protected = sorted((self.exclude | self.hash) & set(REQUIRED_FIELDS))
        if protected:
            raise ValueError(
                f"the key and version fields cannot be excluded or hashed: {', '.join(protected)}"
            )
        both = sorted(self.exclude & self.hash)
        if both:
            raise ValueError(f"fields both excluded and hashed: {', '.join(both)}")

    def initial_schema(self, base: TableSchema = BASE_SCHEMA) -> TableSchema:
        """The columns of a new table: ``base`` without excluded columns, hashed ones as text."""
        return TableSchema(tuple(
            Column(c.name, "text", c.nullable) if c.name in self.hash else c
            for c in base.columns if c.name not in self.exclude
        ))

    def describe(self) -> str:
        return (f"exclude=[{', '.join(sorted(self.exclude))}] "
                f"hash=[{', '.join(sorted(self.hash))}]")


@dataclass(frozen=True, slots=True)
class TableState:
    """What a warehouse reports about its state table when it opens."""

    schema: TableSchema
    policy: ColumnPolicy | None
    """The column policy recorded with the table; None when none was recorded (a table created
    before the policy existed)."""
    has_rows: bool


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to do with the events of one writer schema."""

    specs: tuple[FieldSpec, ...]
    """Every field of the writer schema, in its order."""
    kept: tuple[FieldSpec, ...]
    """The fields decoded into columns (key and version fields included); hashed ones hold
    text columns."""
    hashed: frozenset[str]
    discarded: tuple[str, ...]
    """Fields dropped by ``discard`` (counted and warned about)."""
    excluded: tuple[str, ...]
    changes: tuple[ColumnChange, ...]
    table: TableSchema
    """The table's schema once ``changes`` are made."""
    rejected: str | None = None
    """Why every event of this schema is a ``schema`` dead letter; None when accepted."""


def compare(writer: Column, table: Column) -> Literal["same", "fits", "widen"] | None:
    """How a writer's column type relates to the table's: the same, narrower (fits as it is),
    wider (the table widens), or incompatible (None)."""
    if writer.type == table.type:
        if writer.type != "decimal" or writer.precision == table.precision:
            return "same" if writer.scale == table.scale else None
        if writer.scale != table.scale:
            return None
        return "widen" if writer.precision > table.precision else "fits"
    if _WIDER.get(table.type) == writer.type:
        return "widen"
    if _WIDER.get(writer.type) == table.type or (writer.type, table.type) in _FITS:
        return "fits"
    return None


def writer_specs(schema: Mapping[str, Any]) -> tuple[FieldSpec, ...]:
    """The field specs of a record schema (``ValueError`` if it is no record)."""
    fields = schema.get("fields") if isinstance(schema, Mapping) else None
    if not isinstance(schema, Mapping) or schema.get("type") != "record" or not isinstance(
        fields, list
    ):
        raise ValueError("the writer schema is not an Avro record")
    named = named_types(dict(schema))
    try:
        return tuple(field_spec(f, named) for f in fields)
    except (KeyError, TypeError) as err:
        raise ValueError(f"invalid writer schema: a field without {err}") from None


def required_problem(specs: Sequence[FieldSpec]) -> str | None:
    """Why a writer schema cannot carry audit events at all: a key or version field missing,
    or of a type that cannot order events."""
    by_name = {s.name: s for s in specs}
    missing = [f for f in REQUIRED_FIELDS if f not in by_name]
    if missing:
        return f"the writer schema lacks field(s) {', '.join(missing)}"
    for name in REQUIRED_FIELDS:
        problem = version_problem(by_name[name])
        if problem:
            return problem
    return None


def _names_problem(specs: Sequence[FieldSpec], table: TableSchema) -> str | None:
    """Why the writer's field names cannot map to columns: a key or version field missing or
    retyped, two names alike but for case (one column in Snowflake), a name kyc-sync uses."""
    problem = required_problem(specs)
    if problem:
        return problem
    lower = {c.name.lower(): c.name for c in table.columns}
    seen: dict[str, str] = {}
    for spec in specs:
        clash = seen.get(spec.name.lower())
        if clash is not None:
            return f"fields {clash} and {spec.name} differ only in case"
        seen[spec.name.lower()] = spec.name
        if spec.name.lower() in RESERVED_NAMES:
            return f"field {spec.name} has the name of a column kyc-sync writes itself"
        column = lower.get(spec.name.lower())
        if column is not None and column != spec.name:
            return f"field {spec.name} differs only in case from the column {column}"
    return None


def _change_problem(
    policy: Policy, incompatible: list[str], added: list[str], widened: list[str]
) -> str | None:
    if incompatible:
        return f"incompatible type change: {'; '.join(incompatible)}"
    if policy == "freeze" and (added or widened):
        what = [f"adds field(s) {', '.join(added)}"] if added else []
        what += [f"widens {', '.join(widened)}"] if widened else []
        return f"{' and '.join(what)}, and schema_evolution is freeze"
    if policy == "discard" and widened:
        return f"widens {', '.join(widened)}, and schema_evolution is discard"
    return None


def resolve(
    specs: Sequence[FieldSpec], table: TableSchema, policy: Policy, columns: ColumnPolicy,
    schema: str, schema_id: int | None = None,
) -> Resolution:
    """Decide what the events of the writer schema ``schema`` (described for messages, e.g.
    ``registry id 42``) do to ``table`` (see the module doc)."""

    def refuse(reason: str) -> Resolution:
        return Resolution(tuple(specs), (), frozenset(), (), (), (), table, f"{schema}: {reason}")

    problem = _names_problem(specs, table)
    if problem is not None:
        return refuse(problem)
    kept: list[FieldSpec] = []
    added: list[str] = []
    widened: list[str] = []
    discarded: list[str] = []
    excluded: list[str] = []
    changes: list[ColumnChange] = []
    incompatible: list[str] = []
    for spec in specs:
        if spec.name in columns.exclude:
            excluded.append(spec.name)
            continue
        if spec.name in (KEY, "op_type", "op_time"):
            kept.append(spec)
            continue
        wanted = Column(spec.name, "text") if spec.name in columns.hash else spec.column
        existing = table.column(spec.name)
        if existing is None:
            if policy == "discard":
                discarded.append(spec.name)
                continue
            added.append(spec.name)
            changes.append(ColumnChange(wanted, "add", schema, schema_id))
            kept.append(spec)
            continue
        relation = compare(wanted, existing)
        if relation is None:
            incompatible.append(
                f"{spec.name} is {spec.avro} ({wanted.describe()}), the column is "
                f"{existing.describe()}"
            )
        elif relation == "widen":
            widened.append(f"{spec.name} from {existing.describe()} to {wanted.describe()}")
            changes.append(ColumnChange(existing.retyped(wanted), "widen", schema, schema_id))
            kept.append(spec)
        else:
            kept.append(read_as(spec, existing) if spec.name not in columns.hash else spec)
    problem = _change_problem(policy, incompatible, added, widened)
    if problem is not None:
        return refuse(problem)
    return Resolution(
        specs=tuple(specs), kept=tuple(kept),
        hashed=frozenset(s.name for s in kept if s.name in columns.hash),
        discarded=tuple(discarded), excluded=tuple(excluded), changes=tuple(changes),
        table=table.evolved(changes) if changes else table,
    )
