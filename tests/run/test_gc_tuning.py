"""The collector is set for a process holding batches (``consumer.run.gc_tuning``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumer.run.gc_tuning import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_young_collections_are_rare_and_startup_objects_frozen() -> None:
    _young, middle, old = gc.get_threshold()

    tune_gc()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_the_collector_still_runs_on_its_own_after_tuning() -> None:
    """Not frozen out nor off: allocations past the threshold start young collections, and a
    cycle made after tuning is freed by one of them."""
    tune_gc()
    young: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            young.append(1)

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    freed = weakref.ref(a)
    del a, b
    gc.callbacks.append(count)
    try:
        held: list[list[int]] = [[] for _ in range(3 * YOUNG_THRESHOLD)]  # containers
    finally:
        gc.callbacks.remove(count)

    assert len(held) == 3 * YOUNG_THRESHOLD
    assert len(young) >= 2
    assert freed() is None
