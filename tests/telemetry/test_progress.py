"""Unit tests of the progress of long operations: events read counted from the positions reached
(re-reads and messages past the plan never counted twice), the periodic line, the phase gauge,
the bar only on a terminal with text logs."""

from __future__ import annotations

import io
import logging
import os

import pytest
from prometheus_client import generate_latest

from batcher.ranges import PartitionRange
from consumer.telemetry.progress import Progress, show_bar
from tests.telemetry.test_metrics import Msg, batch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_positions_reached_within_the_plan(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = Progress("full refresh", (PartitionRange(0, 10, 20), PartitionRange(1, 0, 5)),
                        ("build", "swap"), interval_s=5, clock=clock)
    progress.phase("build")
    progress.consumed(batch(Msg(0, 10), Msg(0, 11), Msg(1, 0)), 3)
    progress.consumed(batch(Msg(0, 10), Msg(0, 11)), 2)  # re-read after a rewind
    progress.consumed(batch(Msg(1, 4), Msg(1, 9), Msg(2, 0)), 2)  # 9: past the plan; 2: not in it
    assert progress.read == 7
    clock.now += 7
    with caplog.at_level(logging.INFO, "kyc_sync.progress"):
        progress.consumed(batch(Msg(0, 19)), 1)
    assert progress.read == 15
    assert caplog.messages == [
        "full refresh: read 15 of 15 events (100%), 2/s, ETA 0s, phase build"]
    text = generate_latest(progress.registry).decode()
    assert 'kyc_sync_progress_events_read{operation="full refresh"} 15.0' in text
    assert 'kyc_sync_progress_events_planned{operation="full refresh"} 15.0' in text
    assert 'kyc_sync_progress_phase{operation="full refresh",phase="build"} 1.0' in text
    assert 'kyc_sync_progress_phase{operation="full refresh",phase="swap"} 0.0' in text


def test_bar_only_on_a_terminal_with_text_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

        def fileno(self) -> int:
            return 2

    width = [80]
    monkeypatch.setattr(os, "get_terminal_size", lambda _fd: os.terminal_size((width[0], 24)))
    assert show_bar(Tty(), "text")
    assert not show_bar(Tty(), "json")
    assert not show_bar(io.StringIO(), "text")
    width[0] = 0  # a terminal without a size (a pseudo-terminal nobody sized): lines instead
    assert not show_bar(Tty(), "text")
    stream = Tty()
    progress = Progress("verify", (PartitionRange(0, 0, 4),), ("read",), stream=stream, bar=True)
    with progress.shown():
        progress.consumed(batch(Msg(0, 0), Msg(0, 1)), 2)
    assert "verify" in stream.getvalue()
    assert "/4" in stream.getvalue()
