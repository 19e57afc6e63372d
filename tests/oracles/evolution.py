"""The reference of schema evolution: what the table holds after events of several writer schemas.

Independent of the decoder, the reducer and the writers: per key the winning event (greatest
(op_time, partition, offset)); the table's columns are every field any accepted schema carried;
a row takes each column's value from its winning event, null where that event's schema lacked
the field. A deleted profile is a tombstone (absent from the view).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SentEvent:
    """An event as a producer sent it: its writer schema's fields and their values."""

    key: int
    op_type: str
    op_time: int
    partition: int
    offset: int
    values: Mapping[str, Any]
    """Every field of its writer schema but the key and version fields."""


def expected_table(events: Iterable[SentEvent]) -> dict[int, tuple[str, dict[str, Any]]]:
    """key -> (op_type of the winner, its values by field; missing fields absent)."""
    winners: dict[int, SentEvent] = {}
    for event in events:
        known = winners.get(event.key)
        mine = (event.op_time, event.partition, event.offset)
        if known is None or mine > (known.op_time, known.partition, known.offset):
            winners[event.key] = event
    return {k: (e.op_type, dict(e.values)) for k, e in winners.items()}


def expected_rows(
    events: Iterable[SentEvent], columns: Iterable[str]
) -> dict[int, dict[str, Any]]:
    """The state rows (tombstones included) over ``columns``, null where the winner lacked the
    field; plus ``op_type``."""
    names = list(columns)
    return {
        key: {"op_type": op_type, **{c: values.get(c) for c in names}}
        for key, (op_type, values) in expected_table(events).items()
    }
