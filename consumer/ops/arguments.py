"""Arguments of the operations commands, parsed by pure functions that raise ``ValueError``
with the message the user sees (the CLI turns it into a usage error, exit 2)."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_datetime_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date-time; without an offset it is UTC."""
    return int(parse_instant(text).replace(tzinfo=UTC).timestamp() * 1000)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time as naive UTC, as the tables store times (microseconds kept);
    without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid date-time {text!r}: use ISO 8601, e.g. 2024-01-15T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def parse_partitions(text: str) -> tuple[int, ...]:
    """``"0,2"`` -> (0, 2): distinct, sorted, non-negative."""
    try:
        found = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"invalid partition list {text!r}: use e.g. 0,2") from None
    if not found or found[0] < 0:
        raise ValueError(f"invalid partition list {text!r}: use e.g. 0,2")
    return tuple(found)


def parse_count(text: str) -> int:
    """A non-negative integer (an offset, a number of messages)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if value < 0:
        raise ValueError(f"must be >= 0, not {value}")
    return value


def parse_positive(text: str) -> int:
    """An integer of at least 1 (a number of partitions)."""
    value = parse_count(text)
    if value < 1:
        raise ValueError(f"must be >= 1, not {value}")
    return value
