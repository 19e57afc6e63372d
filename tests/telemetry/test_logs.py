"""Log output: the JSON formatter, the flush line, ``--log-format`` and ``log_format``."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from batcher.ranges import PartitionRange
from batcher.window import FlushReason
from consumer import cli
from consumer.run.observer import FlushReport
from consumer.telemetry.logs import FlushLog, JsonFormatter, formatter, setup_logging
from warehouse.base import ApplyResult


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("kyc_sync", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_json_line_has_time_level_logger_and_message() -> None:
    entry = as_json(record("flush %s done", "b-1"))

    assert entry["level"] == "INFO"
    assert entry["logger"] == "kyc_sync"
    assert entry["message"] == "flush b-1 done"
    assert entry["ts"].endswith("Z")
    assert datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).utcoffset() is not None
    assert "flush" not in entry
    assert "exc_info" not in entry


def test_flush_fields_are_copied_into_the_object() -> None:
    fields = {"batch_id": "b-1", "events": 8, "offsets": "0:0-3,1:0-3", "write_s": 0.012}

    entry = as_json(record("flush ...", flush=fields))

    assert entry["flush"] == fields


def test_values_json_cannot_encode_become_strings() -> None:
    entry = as_json(record("x", flush={"when": datetime(2024, 1, 15, 10, 0)}))

    assert entry["flush"] == {"when": "2024-01-15 10:00:00"}


def test_exception_is_formatted_into_one_field() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        rec = logging.LogRecord(
            "kyc_sync", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )

    entry = as_json(rec)

    assert entry["level"] == "ERROR"
    assert entry["exc_info"].startswith("Traceback")
    assert "ValueError: bad\nvalue" in entry["exc_info"]


def test_text_format_is_unchanged() -> None:
    line = formatter("text").format(record("hello"))

    assert line.endswith(" INFO kyc_sync hello")


@contextmanager
def configured(level: str, stream: io.StringIO) -> Iterator[None]:
    """``setup_logging`` on a root logger without handlers; pytest's own handlers (added per
    test phase) and the level are put back afterwards."""
    root = logging.getLogger()
    handlers, old_level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        setup_logging(level, "json", stream)
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(old_level)


def test_log_flush_writes_one_json_line_per_flush() -> None:
    stream = io.StringIO()
    report = FlushReport(
        batch_id="b-42", reason=FlushReason.AGE, events=8, invalid=1, keys=4,
        result=ApplyResult(inserted=3, updated=0, deleted=1, skipped_stale=0,
                           min_op_time=None, max_op_time=None, write_s=0.0123),
        ranges=(PartitionRange(0, 0, 5), PartitionRange(2, 10, 13)),
        decode_s=0.0011, total_s=0.05,
    )

    with configured("INFO", stream):
        FlushLog().flushed(report)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["logger"].startswith("kyc_sync")
    assert entry["message"].startswith("flush batch_id=b-42 ")
    assert entry["flush"] == {
        "batch_id": "b-42", "reason": "age", "events": 8, "invalid": 1, "keys": 4,
        "offsets": "0:0-4,2:10-12", "decode_s": 0.001, "total_s": 0.05,
        "inserted": 3, "updated": 0, "deleted": 1, "stale": 0, "write_s": 0.012,
    }


def test_setup_logging_honours_the_level() -> None:
    stream = io.StringIO()

    with configured("WARNING", stream):
        logging.getLogger("kyc_sync").info("hidden")
        logging.getLogger("kyc_sync").warning("shown")

    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["shown"]


# -- the setting and the CLI option ------------------------------------------------------------


@pytest.fixture
def kafka_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("KYC_SYNC_KAFKA__BOOTSTRAP_SERVERS", "localhost:9092")
    monkeypatch.delenv("KYC_SYNC_LOG_FORMAT", raising=False)
    monkeypatch.delenv("KYC_SYNC_CONFIG", raising=False)
    return monkeypatch


def load(*argv: str) -> str:
    settings = cli.load(cli._parser().parse_args(list(argv)))
    return settings.log_format


def test_log_format_defaults_to_text(kafka_env: pytest.MonkeyPatch) -> None:
    assert load("settings") == "text"


def test_log_format_from_the_environment(kafka_env: pytest.MonkeyPatch) -> None:
    kafka_env.setenv("KYC_SYNC_LOG_FORMAT", "json")

    assert load("settings") == "json"


def test_option_overrides_the_setting(kafka_env: pytest.MonkeyPatch) -> None:
    kafka_env.setenv("KYC_SYNC_LOG_FORMAT", "json")

    assert load("--log-format", "text", "settings") == "text"
    assert load("--log-format", "json", "show") == "json"


def test_unknown_log_format_is_a_usage_error(
    kafka_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(["--log-format", "xml", "settings"])

    assert exc.value.code == 2
    assert "--log-format" in capsys.readouterr().err


def test_invalid_log_format_setting_names_it(
    kafka_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka_env.setenv("KYC_SYNC_LOG_FORMAT", "xml")

    assert cli.main(["settings"]) == 2
    assert "log_format" in capsys.readouterr().err
