"""Log output of kyc-sync: plain text lines, or one JSON object per line (``--log-format json``
or ``log_format = "json"``) for log shippers.

A JSON line holds ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; a record logged with ``extra={"flush": {...}}`` (one per flush: batch id, events,
keys, inserted/updated/deleted/stale, offsets, durations) carries those fields under ``flush``;
an exception is formatted into ``exc_info`` (type, message and traceback as one string).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from consumer.run.observer import FlushReport, Observer

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
STRUCTURED_EXTRAS: tuple[str, ...] = ("flush",)
"""``extra`` keys copied into the JSON object when a record has them."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in STRUCTURED_EXTRAS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, log_format: LogFormat = "text", stream: IO[str] | None = None
                  ) -> None:
    """Route every logger to ``stream`` (stderr) at ``level`` in ``log_format``. Like
    ``logging.basicConfig``, it does nothing when the root logger already has handlers."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    if level != "DEBUG":
        for name, quiet in QUIET_LIBRARIES.items():
            logging.getLogger(name).setLevel(quiet)


QUIET_LIBRARIES: dict[str, int] = {
    "snowflake.connector": logging.WARNING,
    "snowflake.connector.vendored.urllib3": logging.ERROR,
}
"""Libraries whose routine lines (connector version, each retried HTTP request) are left out
unless log_level is DEBUG: kyc-sync reports the outcome itself."""


class FlushLog(Observer):
    """One INFO line per flush (``kyc_sync.loop``), its fields under ``flush`` in JSON logs."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("kyc_sync.loop")

    def flushed(self, report: FlushReport) -> None:
        result = report.result
        offsets = ",".join(f"{r.partition}:{r.first}-{r.next_offset - 1}" for r in report.ranges)
        fields: dict[str, Any] = {
            "batch_id": report.batch_id, "reason": report.reason.value, "events": report.events,
            "invalid": report.invalid, "keys": report.keys, "offsets": offsets,
            "decode_s": round(report.decode_s, 3), "total_s": round(report.total_s, 3),
        }
        if result is not None:
            fields.update(
                inserted=result.inserted, updated=result.updated, deleted=result.deleted,
                stale=result.skipped_stale, write_s=round(result.write_s, 3),
            )
        self.log.info("flush %s", " ".join(f"{k}={v}" for k, v in fields.items()),
                      extra={"flush": fields})
