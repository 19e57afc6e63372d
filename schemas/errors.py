"""The errors of kyc-sync: one root, two branches that decide what happens next.

- ``TransientError``: worth retrying (a lock, the network, a broker or registry away). Retries
  wait while staying in the consumer group (``consumer.run.retry``); ``LockWaitError`` (a lock
  another session holds) has a longer budget.
- ``TerminalError``: retrying will not help. The run stops without committing what is buffered
  and the command line prints one line and exits 1 (``exit_code``).

``InvalidEvent`` is neither: it describes one bad input event, which goes to the dead-letter
topic (or stops the run when ``decoding.on_invalid`` is ``fail``).
"""

from __future__ import annotations


class KycSyncError(Exception):
    """Root of every error kyc-sync raises on purpose."""

    exit_code = 1


class TransientError(KycSyncError):
    """Worth retrying within a time budget."""


class LockWaitError(TransientError):
    """Gave up waiting for a lock another session holds. Retried for longer than other transient
    errors: a dead instance's transaction keeps its locks until the warehouse aborts it, minutes
    later."""


class TerminalError(KycSyncError):
    """Stop: retrying cannot help. Nothing uncommitted is committed."""


class UsageError(TerminalError):
    """Invalid settings or arguments, found before touching Kafka or the warehouse."""

    exit_code = 2


class InvalidEvent(KycSyncError):
    """An event that cannot be applied: bad bytes, schema or values."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason
