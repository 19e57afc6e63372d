"""Retry of transient warehouse errors: exponential backoff with jitter, bounded in total time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from warehouse.errors import TerminalWarehouseError, TransientWarehouseError

T = TypeVar("T")
log = logging.getLogger("kyc_sync.retry")


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s failed (attempt %d), retrying in %.1fs: %s",
                state.fn.__name__ if state.fn else "call", state.attempt_number, wait, error)


def retry_transient(
    call: Callable[[], T], max_s: float, what: str, initial_s: float = 0.2, cap_s: float = 10.0
) -> T:
    """Run ``call``; retry ``TransientWarehouseError`` for up to ``max_s`` seconds in total.

    Exhausted retries raise ``TerminalWarehouseError`` naming the last transient error.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(TransientWarehouseError),
        wait=wait_exponential_jitter(initial=initial_s, max=cap_s),
        stop=stop_after_delay(max_s),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        return retrying(call)
    except TransientWarehouseError as err:
        raise TerminalWarehouseError(f"{what}: still failing after {max_s:.0f}s: {err}") from err
