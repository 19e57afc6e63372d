"""librdkafka's log lines through Python logging (the clients' ``logger`` option), so that they
come out in the chosen --log-format, rate-limited: a broker that stays unreachable makes
librdkafka report every failed connection attempt, several a second."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

KAFKA_LOGGER = "kyc_sync.kafka"
EVERY_S = 10.0
"""At most one line per kind of client message in this many seconds."""
NUMBERS = re.compile(r"\d+")


class RateLimit(logging.Filter):
    """Lets one record of a kind through every ``every_s`` seconds; the next one let through
    says how many were held back meanwhile. A kind is the logger, the level, librdkafka's
    facility and the text without its numbers (timings, counts, ports): a broker that stays
    unreachable repeats one kind. DEBUG records (asked for explicitly) all pass."""

    def __init__(self, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.last: dict[tuple[str, int, str], float] = {}
        self.held: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        facility = str(args[0]) if args else ""
        text = str(args[-1]) if args else record.getMessage()
        key = (record.name, record.levelno, facility + " " + NUMBERS.sub("#", text))
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
