"""``consumer.run.slot.Slot``: one task at a time, on a thread of its own."""

from __future__ import annotations

import threading

import pytest

from consumer.run.slot import Slot, SlotBusy, SlotTimeout


@pytest.fixture
def slot() -> Slot[str]:
    return Slot("test-slot")


def test_a_task_runs_on_the_slot_thread_and_take_returns_its_result(slot: Slot[str]) -> None:
    slot.start(lambda: threading.current_thread().name)

    assert slot.busy
    assert slot.take().startswith("test-slot")
    assert not slot.busy
    assert slot.started == 1
    slot.close()


def test_a_second_task_is_refused_until_the_first_is_taken(slot: Slot[str]) -> None:
    gate = threading.Event()
    slot.start(lambda: str(gate.wait(5.0)))

    with pytest.raises(SlotBusy):
        slot.start(lambda: "second")

    assert not slot.done()
    gate.set()
    assert slot.take() == "True"
    slot.start(lambda: "second")
    assert slot.take() == "second"
    slot.close()


def test_take_raises_the_task_exception_and_frees_the_slot(slot: Slot[str]) -> None:
    def fail() -> str:
        raise ValueError("boom")

    slot.start(fail)

    with pytest.raises(ValueError, match="boom"):
        slot.take()
    assert not slot.busy
    with pytest.raises(LookupError):
        slot.take()
    slot.close()


def test_discard_waits_for_the_task_and_ignores_its_outcome(slot: Slot[str]) -> None:
    ended = threading.Event()

    def fail() -> str:
        ended.wait(0.05)
        ended.set()
        raise ValueError("ignored")

    slot.start(fail)
    slot.discard()

    assert ended.is_set()
    assert not slot.busy
    slot.close()
    slot.close()  # closing twice is harmless


def test_take_with_a_timeout_leaves_a_running_task_in_the_slot(slot: Slot[str]) -> None:
    gate = threading.Event()
    slot.start(lambda: str(gate.wait(5.0)))

    with pytest.raises(SlotTimeout):
        slot.take(0.05)

    assert slot.busy  # still held: nothing else starts before it ends
    with pytest.raises(SlotBusy):
        slot.start(lambda: "second")
    gate.set()
    assert slot.take(5.0) == "True"
    slot.close()


def test_a_task_raising_timeout_error_is_its_own_failure_not_a_slot_timeout(
    slot: Slot[str],
) -> None:
    def time_out() -> str:
        raise TimeoutError("driver timeout")

    slot.start(time_out)

    with pytest.raises(TimeoutError, match="driver timeout"):
        slot.take(5.0)
    assert not slot.busy
    slot.close()
