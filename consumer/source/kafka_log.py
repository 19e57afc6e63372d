"""librdkafka's log lines through Python logging (the clients' ``logger`` option), so that they
come out in the chosen --log-format, rate-limited: a broker that stays unreachable makes
librdkafka report every failed connection attempt, several a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

KAFKA_LOGGER = "kyc_sync.kafka"
EVERY_S = 10.0
"""At most one line per kind of client message in this many seconds."""


class RateLimit(logging.Filter):
    """Lets one record per (logger, level, librdkafka facility) through every ``every_s``
    seconds; the next one let through says how many were held back meanwhile."""

    def __init__(self, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.last: dict[tuple[str, int, str], float] = {}
        self.held: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        facility = str(args[0]) if args else record.getMessage()[:40]
        key = (record.name, record.levelno, facility)
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.every_s:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar line(s) held back)"
        return True


def kafka_logger() -> logging.Logger:
    """The logger every Kafka client of kyc-sync logs to, rate-limited."""
    logger = logging.getLogger(KAFKA_LOGGER)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit())
    return logger
