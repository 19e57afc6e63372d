"""The collector is set for a process holding batches (``consumer.run.gc_tuning``)."""

from __future__ import annotations

import gc
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
def test_cycles_made_after_tuning_are_still_collected() -> None:
    tune_gc()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    tracked = id(a)
    del a, b

    assert gc.collect() >= 2
    assert all(id(o) != tracked for o in gc.get_objects())
