"""When a window is due: age, event count or byte size, whichever comes first."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]
"""Seconds on a monotonic scale; injected so tests can drive time."""


class FlushReason(StrEnum):
    AGE = "age"
    EVENTS = "events"
    BYTES = "bytes"
    CAUGHT_UP = "caught_up"
    SHUTDOWN = "shutdown"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Limits of one window. All must be positive."""

    max_age_s: float = 600.0
    max_events: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_age_s <= 0:
            raise ValueError("window age must be > 0 seconds")
        if self.max_events <= 0:
            raise ValueError("window max events must be > 0")
        if self.max_bytes <= 0:
            raise ValueError("window max bytes must be > 0")


class Window:
    """Tracks the open window. It opens with its first event, not on a wall-clock grid."""

    def __init__(self, policy: WindowPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def note_event(self) -> None:
        if self._opened_at is None:
            self._opened_at = self._clock()

    def age(self) -> float:
        return 0.0 if self._opened_at is None else self._clock() - self._opened_at

    def due(self, events: int, size: int) -> FlushReason | None:
        """The reason the open window must be flushed now, or None."""
        if self._opened_at is None:
            return None
        if events >= self.policy.max_events:
            return FlushReason.EVENTS
        if size >= self.policy.max_bytes:
            return FlushReason.BYTES
        if self._clock() - self._opened_at >= self.policy.max_age_s:
            return FlushReason.AGE
        return None

    def reset(self) -> None:
        self._opened_at = None
