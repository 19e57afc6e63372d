"""Plain text output of the operations commands: aligned tables, UTC times."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns separated by two spaces; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in header], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(header))
    ]
    lines = []
    for line in cells:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(line, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def utc_text(moment: datetime | None) -> str:
    """``2024-01-15T14:15:00Z`` for a naive-UTC or aware datetime; ``-`` for None."""
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


def utc_iso(moment: datetime | None) -> str | None:
    """ISO 8601 with microseconds and ``Z``, for JSON; None stays None."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"
