"""Warehouse errors, translated from driver errors at the boundary."""

from __future__ import annotations

from schemas.errors import KycSyncError, LockWaitError, TerminalError, TransientError


class WarehouseError(KycSyncError):
    """Base of every error a writer raises."""


class TransientWarehouseError(WarehouseError, TransientError):
    """Worth retrying: lock conflicts, network trouble, a warehouse resuming."""


class WarehouseLockWait(TransientWarehouseError, LockWaitError):
    """A statement gave up waiting for a table lock another session (maybe a dead one) holds."""


class TerminalWarehouseError(WarehouseError, TerminalError):
    """Retrying will not help: bad SQL, missing privilege, authentication. Stop, commit nothing."""
