"""Retry of transient failures: exponential backoff with jitter, bounded in total time.

The waits are injectable: the run loop waits by polling its paused consumer, so that a long
retry never lets ``max.poll.interval.ms`` expire and the instance stays in its group.

A lock another session holds (``LockWaitError``) has its own, longer budget: when an instance
dies mid-transaction, the warehouse keeps the transaction and its locks until it aborts it
(Snowflake: after minutes), and giving up earlier would only restart the instance into the same
wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential_jitter,
)

from schemas.errors import LockWaitError, TerminalError, TransientError

T = TypeVar("T")
log = logging.getLogger("kyc_sync.retry")

class RetriesExhausted(TerminalError):
    """A transient failure outlasted its retry budget."""


def retry_transient(
    call: Callable[[], T],
    max_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    initial_s: float = 0.2,
    cap_s: float = 10.0,
    lock_wait_max_s: float | None = None,
) -> T:
    """Run ``call``; retry ``TransientError`` failures for up to ``max_s`` seconds in total
    (no backoff sleep ends past it), or up to ``lock_wait_max_s`` (default: ``max_s``) while
    the last failure is a ``LockWaitError``.

    Exhausted retries raise ``RetriesExhausted`` naming the last failure.
    """
    lock_max_s = max_s if lock_wait_max_s is None else lock_wait_max_s

    def budget(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return lock_max_s if isinstance(error, LockWaitError) else max_s

    def stop(state: RetryCallState) -> bool:
        return stop_before_delay(budget(state))(state)

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (attempt %d), retrying in %.1fs: %s",
                    what, state.attempt_number, wait, error)

    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=wait_exponential_jitter(multiplier=initial_s, max=cap_s, jitter=initial_s),
        stop=stop,
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(call)
    except TransientError as err:
        spent = lock_max_s if isinstance(err, LockWaitError) else max_s
        raise RetriesExhausted(f"{what}: still failing after {spent:g}s: {err}") from err
