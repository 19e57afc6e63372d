"""Unit tests of the flush window: when it opens, what makes it due, and its policy checks."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.window import FlushReason, Window, WindowPolicy


class FakeClock:
    """A monotonic clock the test sets by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POLICY = WindowPolicy(max_age_s=10.0, max_events=100, max_bytes=1000)


def open_window(clock: FakeClock, policy: WindowPolicy = POLICY) -> Window:
    window = Window(policy, clock)
    window.note_event()
    return window


def test_not_open_before_first_event() -> None:
    clock = FakeClock()
    window = Window(POLICY, clock)
    assert not window.is_open
    assert window.age() == 0.0
    clock.now += 3600
    # Nothing buffered: never due, whatever the counters or the time say.
    assert window.due(events=10**9, size=10**12) is None
    assert window.age() == 0.0


def test_opens_with_first_event_not_on_a_grid() -> None:
    clock = FakeClock(now=1234.5)
    window = Window(POLICY, clock)
    window.note_event()
    assert window.is_open
    clock.now += 4.0
    window.note_event()  # later events do not move the opening time
    clock.now += 2.5
    assert window.age() == pytest.approx(6.5)


@pytest.mark.parametrize(
    ("elapsed", "events", "size", "expected"),
    [
        pytest.param(0.0, 1, 1, None, id="fresh-window-not-due"),
        pytest.param(9.999, 99, 999, None, id="just-below-every-limit"),
        pytest.param(10.0, 1, 1, FlushReason.AGE, id="age-reached"),
        pytest.param(60.0, 1, 1, FlushReason.AGE, id="age-exceeded"),
        pytest.param(0.0, 100, 1, FlushReason.EVENTS, id="events-reached"),
        pytest.param(0.0, 250, 1, FlushReason.EVENTS, id="events-exceeded"),
        pytest.param(0.0, 1, 1000, FlushReason.BYTES, id="bytes-reached"),
        pytest.param(0.0, 1, 5000, FlushReason.BYTES, id="bytes-exceeded"),
        pytest.param(0.0, 100, 1000, FlushReason.EVENTS, id="events-before-bytes"),
        pytest.param(10.0, 1, 1000, FlushReason.BYTES, id="bytes-before-age"),
        pytest.param(10.0, 100, 1000, FlushReason.EVENTS, id="events-before-all"),
    ],
)
def test_due_reasons(
    elapsed: float, events: int, size: int, expected: FlushReason | None
) -> None:
    clock = FakeClock()
    window = open_window(clock)
    clock.now += elapsed
    assert window.due(events, size) is expected


def test_age_measured_from_first_event() -> None:
    clock = FakeClock()
    window = Window(POLICY, clock)
    clock.now += 50.0  # idle time before the first event does not count
    window.note_event()
    clock.now += 9.0
    assert window.due(1, 1) is None
    clock.now += 1.0
    assert window.due(1, 1) is FlushReason.AGE


def test_reset_closes_window_until_next_event() -> None:
    clock = FakeClock()
    window = open_window(clock)
    clock.now += 11.0
    assert window.due(1, 1) is FlushReason.AGE

    window.reset()
    assert not window.is_open
    assert window.age() == 0.0
    assert window.due(500, 5000) is None

    clock.now += 100.0
    window.note_event()  # the new window starts now, not at the old opening time
    assert window.is_open
    assert window.due(1, 1) is None
    clock.now += 10.0
    assert window.due(1, 1) is FlushReason.AGE


def test_default_clock_is_monotonic() -> None:
    window = Window(WindowPolicy())
    window.note_event()
    assert window.age() >= 0.0
    assert window.due(1, 1) is None


def test_default_policy() -> None:
    policy = WindowPolicy()
    assert policy.max_age_s == 600.0
    assert policy.max_events == 1_000_000
    assert policy.max_bytes == 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"max_age_s": 0.0}, "age", id="age-zero"),
        pytest.param({"max_age_s": -1.0}, "age", id="age-negative"),
        pytest.param({"max_events": 0}, "events", id="events-zero"),
        pytest.param({"max_events": -5}, "events", id="events-negative"),
        pytest.param({"max_bytes": 0}, "bytes", id="bytes-zero"),
        pytest.param({"max_bytes": -1}, "bytes", id="bytes-negative"),
    ],
)
def test_invalid_policy_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowPolicy(**kwargs)


def test_reason_values_are_stable_labels() -> None:
    # The values end up in logs, metrics and the ledger.
    assert [r.value for r in FlushReason] == [
        "age", "events", "bytes", "caught_up", "shutdown", "revoke",
    ]
