"""Injected warehouse failures, for fault and chaos tests. Off unless settings turn them on.

A writer calls its fault hook between the MERGE and the commit, so an injected failure exercises
the real rollback path: the MERGE ran, then the transaction is rolled back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

from warehouse.errors import TerminalWarehouseError, TransientWarehouseError

FaultMode = Literal["off", "transient", "terminal", "stall"]


@dataclass
class FaultPlan:
    """Fail up to ``times`` flushes (0: no limit), each with ``probability``; "stall" blocks
    them ``stall_s`` seconds instead (a hung warehouse)."""

    mode: FaultMode = "off"
    times: int = 1
    probability: float = 1.0
    seed: int | None = None
    stall_s: float = 0.0
    injected: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, point: str) -> None:
        if self.mode == "off" or (self.times and self.injected >= self.times):
            return
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return
        self.injected += 1
        message = f"injected {self.mode} warehouse fault #{self.injected} at {point}"
        if self.mode == "stall":
            time.sleep(self.stall_s)
            return
        if self.mode == "transient":
            raise TransientWarehouseError(message)
        raise TerminalWarehouseError(message)
