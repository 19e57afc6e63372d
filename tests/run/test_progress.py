"""Which partitions the group has not read to their end (``consumer.run.progress.behind``)."""

from __future__ import annotations

from consumer.run.progress import Behind, behind, describe


def test_committed_at_the_end_is_done() -> None:
    assert behind({0: 10, 1: 5}, {0: 0, 1: 0}, {0: 10, 1: 5}) == []


def test_no_commit_on_a_partition_with_messages_is_behind() -> None:
    found = behind({0: 10, 1: None}, {0: 0, 1: 0}, {0: 10, 1: 7})

    assert found == [Behind(1, None, 7)]
    assert describe(found) == "1 (committed none, end 7)"


def test_empty_or_expired_partitions_need_no_commit() -> None:
    # 1 never held a message; every message of 2 was removed by retention.
    assert behind({0: 3}, {0: 0, 1: 0, 2: 40}, {0: 3, 1: 0, 2: 40}) == []


def test_a_commit_below_the_earliest_offset_reads_from_there() -> None:
    assert behind({0: 2}, {0: 40}, {0: 40}) == []
    assert behind({0: 2}, {0: 40}, {0: 41}) == [Behind(0, 2, 41)]
