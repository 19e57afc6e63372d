"""Warehouse errors, translated from driver errors at the boundary."""

from __future__ import annotations


class WarehouseError(Exception):
    """Base of every error a writer raises."""


class TransientWarehouseError(WarehouseError):
    """Worth retrying: lock conflicts, network trouble, a warehouse resuming."""


class TerminalWarehouseError(WarehouseError):
    """Retrying will not help: bad SQL, missing privilege, authentication. Stop, commit nothing."""
