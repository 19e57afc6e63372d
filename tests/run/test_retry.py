"""The retry budgets: transient failures for ``max_s``, lock waits for the longer
``lock_wait_max_s``, decided by the last failure; both end."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from consumer.run.retry import RetriesExhausted, retry_transient
from warehouse.errors import TransientWarehouseError, WarehouseLockWait


def failing(error: Exception) -> tuple[list[float], Callable[[], None]]:
    calls: list[float] = []

    def call() -> None:
        calls.append(time.monotonic())
        raise error

    return calls, call


def test_lock_waits_are_retried_for_the_lock_budget_then_give_up() -> None:
    calls, call = failing(WarehouseLockWait("locked"))
    started = time.monotonic()

    with pytest.raises(RetriesExhausted, match=r"apply: still failing after 1.5s: locked"):
        retry_transient(call, 0.2, "apply", cap_s=0.3, lock_wait_max_s=1.5)

    assert 1.0 < time.monotonic() - started <= 1.5 + 0.1
    assert len(calls) >= 4


def test_other_transient_errors_keep_the_short_budget() -> None:
    calls, call = failing(TransientWarehouseError("flaky"))
    started = time.monotonic()

    with pytest.raises(RetriesExhausted, match=r"after 0.5s: flaky"):
        retry_transient(call, 0.5, "apply", cap_s=0.3, lock_wait_max_s=30)

    assert time.monotonic() - started <= 0.5 + 0.1
    assert len(calls) >= 2


def test_a_lock_wait_that_clears_returns_the_result() -> None:
    outcomes: list[Exception | None] = [WarehouseLockWait("locked")] * 3 + [None]

    def call() -> str:
        if (error := outcomes.pop(0)) is not None:
            raise error
        return "applied"

    assert retry_transient(call, 0.01, "apply", initial_s=0.05, lock_wait_max_s=5) == "applied"
