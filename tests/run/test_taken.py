"""Batches taken from consume() and merged while the decoder is busy."""

from __future__ import annotations

from typing import Any

from consumer.run.loop import Taken


def taken(n: int, start: int) -> Taken:
    messages: list[Any] = [f"m{i}" for i in range(start, start + n)]
    return Taken(
        messages, messages, [b"v%d" % i for i in range(start, start + n)],
        [None] * n, [i % 3 for i in range(start, start + n)],
        list(range(start, start + n)), n, 0.5,
    )


def test_merged_batches_are_the_batches_in_order_and_leave_them_unchanged() -> None:
    parts = [taken(3, 0), taken(2, 3), taken(4, 5)]
    before = [(list(p.messages), list(p.values), list(p.offsets)) for p in parts]
    merged = parts[0].merged(parts[1]).merged(parts[2])
    assert [str(m) for m in merged.messages] == [f"m{i}" for i in range(9)]
    assert merged.kept == merged.messages
    assert merged.values == [b"v%d" % i for i in range(9)]
    assert merged.keys == [None] * 9
    assert merged.partitions == [i % 3 for i in range(9)]
    assert merged.offsets == list(range(9))
    assert (merged.size, merged.scan_s) == (9, 1.5)
    assert merged.kept is not merged.messages  # extended one at a time, never twice
    assert [(p.messages, p.values, p.offsets) for p in parts] == before
