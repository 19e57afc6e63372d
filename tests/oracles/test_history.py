"""Unit tests of the reference profile history (the oracle of the history table)."""

from __future__ import annotations

from tests.oracles.history import as_of, build_history


def test_intervals_follow_the_version_order_not_the_arrival_order() -> None:
    history = build_history([
        (1, 30, 0, 2, "UPDATE", "c"),
        (1, 10, 0, 0, "INSERT", "a"),
        (1, 30, 0, 2, "UPDATE", "c-redelivered"),
        (1, 20, 0, 1, "DELETE", "b"),
        (2, 5, 1, 0, "INSERT", "x"),
    ])
    assert [(i.payload, i.valid_from, i.valid_to, i.is_current, i.is_deleted)
            for i in history[1]] == [
        ("a", 10, 20, False, False), ("b", 20, 30, False, True), ("c", 30, None, True, False)]
    assert [i.payload for i in history[2]] == ["x"]


def test_as_of_skips_deleted_and_not_yet_seen_profiles() -> None:
    history = build_history([
        (1, 10, 0, 0, "INSERT", "a"), (1, 20, 0, 1, "DELETE", "b"),
        (2, 15, 0, 2, "INSERT", "x"),
        (3, 12, 0, 3, "INSERT", "tie-early"), (3, 12, 1, 0, "UPDATE", "tie-late"),
    ])
    assert {k: i.payload for k, i in as_of(history, 12).items()} == {1: "a", 3: "tie-late"}
    assert {k: i.payload for k, i in as_of(history, 20).items()} == {2: "x", 3: "tie-late"}
    assert as_of(history, 9) == {}
