"""A slot for one task on a background thread: how the run loop overlaps its work with consuming.

The loop decodes and reduces a consume() batch while it fetches the next one, and writes a window
while it consumes the next one; polars, Arrow and DuckDB release the GIL while they work. Each of
the two runs in a ``Slot`` of its own, which holds at most one task: the loop starts a task, goes
on, and takes the task's outcome back on its own thread before it starts another one there, and
before anything that depends on it. So every decision -- what is committed and when, which
partitions are rewound, what is dropped -- stays on the loop's thread, in order; a slot only moves
work off it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotBusy(RuntimeError):
    """A task was started while the slot still held one (a programming error)."""


class SlotTimeout(Exception):
    """``Slot.take`` waited its whole timeout: the task is still running."""


class Slot(Generic[T]):
    """At most one task at a time, run on a thread of its own. Not thread-safe: one owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: Future[T] | None = None
        self.started = 0
        """Tasks started so far."""

    @property
    def busy(self) -> bool:
        """A task was started and its outcome not taken yet (it may have finished)."""
        return self._task is not None

    def done(self) -> bool:
        """A task was started and has finished; ``take`` will not wait."""
        return self._task is not None and self._task.done()

    def start(self, task: Callable[[], T]) -> None:
        """Run ``task`` in the background. Refused while the slot holds a task."""
        if self._task is not None:
            raise SlotBusy(f"{self.name}: a task is in flight; take its outcome first")
        self._task = self._executor.submit(task)
        self.started += 1

    def take(self, timeout_s: float | None = None) -> T:
        """Wait for the task to end and free the slot: its result, or its exception raised.
        Raises ``SlotTimeout`` when it has not ended within ``timeout_s``; the slot then still
        holds it (``discard`` waits for it)."""
        task = self._task
        if task is None:
            raise LookupError(f"{self.name}: no task to take")
        try:
            task.exception(timeout=timeout_s)  # waits; the task's own exception is not raised
        except FutureTimeout:
            raise SlotTimeout(
                f"{self.name}: the task did not end within {timeout_s:g}s") from None
        self._task = None
        return task.result()

    def discard(self) -> None:
        """Wait for the task in flight, if any, to end; free the slot, ignoring its outcome."""
        if self._task is not None:
            self._task.exception()
            self._task = None

    def close(self) -> None:
        """Discard the task in flight and stop the thread."""
        self.discard()
        self._executor.shutdown(wait=True)
