"""The warehouses a chaos run can write to: the settings its consumers get, and how the driver
reads the state table and the live view back afterwards.

- ``DuckDBTarget``: one DuckDB file shared by every consumer.
- ``SnowflakeTarget``: the Snowflake test double (``tests.warehouse.snowflake_double``, fakesnow's
  server with Snowflake's table locks, closed sessions rolled back and detached transactions
  aborted once idle and blocking) reached through the real connector. A consumer killed
  mid-transaction leaves its transaction holding the state table's lock; the others wait on it
  (``LOCK_TIMEOUT``, then a lock-wait retry) until the double aborts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import snowflake.connector

from tests.integration.harness import HistoryRow, read_history

State = dict[int, tuple[tuple[int, int, int], bool]]
Current = dict[int, tuple[str, int]]

STATE_SQL = (
    "SELECT kyc_profile_id, {op_time_us}, src_partition, src_offset, is_deleted FROM {schema}"
    "kyc_profile_state"
)
CURRENT_SQL = "SELECT kyc_profile_id, goldtier_id, {op_time_us} FROM {schema}kyc_profile_current"
HISTORY_SQL = (
    "SELECT kyc_profile_id, {op_time_us}, src_partition, src_offset, goldtier_id, is_deleted, "
    "{valid_from_us}, valid_to IS NULL, {valid_to_us}, is_current FROM {schema}kyc_profile_history "
    "ORDER BY kyc_profile_id, op_time, src_partition, src_offset"
)
"""The Snowflake side of ``harness.read_history``; ``valid_to IS NULL`` is read apart: the
Snowflake double renders a NULL timestamp as 0."""


DOUBLE_SIGNS = {
    "detached_aborts": "aborted the idle transaction",
    "lock_timeouts": "lock wait timeout:",
    "closed_rollbacks": "closed: its transaction was rolled back",
}
"""Lines of the Snowflake double's log, counted."""


def _history(rows: list[tuple[Any, ...]]) -> dict[int, list[HistoryRow]]:
    """Values as the drivers return them (ints, or Decimals from Snowflake): ``int`` takes
    both, without the text round trip of ``_state``."""
    out: dict[int, list[HistoryRow]] = {}
    for key, t, p, o, goldtier, deleted, valid_from, open_ended, valid_to, current in rows:
        out.setdefault(int(key), []).append(
            ((int(t), int(p), int(o)), str(goldtier), bool(deleted), int(valid_from),
             None if open_ended else int(valid_to), bool(current)))
    return out


class Target(Protocol):
    @property
    def name(self) -> str:
        """The writer: ``duckdb`` or ``snowflake``."""
        ...

    def env(self) -> dict[str, str]:
        """``KYC_SYNC_*`` settings of the consumers for this warehouse."""
        ...

    def read_state(self) -> State:
        """Every row of the state table, tombstones included: key -> (version, is_deleted)."""
        ...

    def read_current(self) -> Current:
        """The live view: key -> (goldtier_id, op_time in microseconds)."""
        ...

    def read_history(self) -> dict[int, list[HistoryRow]]:
        """The history table, as ``harness.read_history`` reads it."""
        ...

    def signs(self) -> dict[str, int]:
        """What the warehouse side saw, counted (reported with the consumers' log signs)."""
        ...


def _state(rows: list[tuple[object, ...]]) -> State:
    return {int(str(k)): ((int(str(t)), int(str(p)), int(str(o))), bool(d))
            for k, t, p, o, d in rows}


def _current(rows: list[tuple[object, ...]]) -> Current:
    return {int(str(k)): (str(g), int(str(t))) for k, g, t in rows}


@dataclass(frozen=True, slots=True)
class DuckDBTarget:
    path: Path
    name: str = "duckdb"

    def env(self) -> dict[str, str]:
        return {"KYC_SYNC_WAREHOUSE__KIND": "duckdb", "KYC_SYNC_DUCKDB__PATH": str(self.path)}

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        con = duckdb.connect(str(self.path), read_only=True)
        try:
            return [tuple(r) for r in con.execute(sql).fetchall()]
        finally:
            con.close()

    def signs(self) -> dict[str, int]:
        return {}

    def read_state(self) -> State:
        return _state(self._rows(STATE_SQL.format(op_time_us="epoch_us(op_time)", schema="")))

    def read_current(self) -> Current:
        return _current(self._rows(CURRENT_SQL.format(op_time_us="epoch_us(op_time)", schema="")))

    def read_history(self) -> dict[int, list[HistoryRow]]:
        return read_history(self.path)


@dataclass(frozen=True, slots=True)
class SnowflakeTarget:
    """The double at ``host:port``, logging to ``log``; the tables in ``database.KYC``.
    ``lock_timeout_s``: the consumers' LOCK_TIMEOUT, short so that a wait on a dead consumer's
    lock is retried often."""

    host: str
    port: int
    database: str
    log: Path
    lock_timeout_s: int = 1
    name: str = "snowflake"
    OP_TIME_US = "DATE_PART(EPOCH_MICROSECOND, op_time)"

    def _connect(self) -> snowflake.connector.SnowflakeConnection:
        return snowflake.connector.connect(
            account="fakesnow", user="fake", password="snow", host=self.host, port=self.port,
            protocol="http", database=self.database, network_timeout=60,
        )

    def create_schema(self) -> None:
        with self._connect() as con:
            con.cursor().execute(f'CREATE SCHEMA IF NOT EXISTS "{self.database}"."KYC"')

    def env(self) -> dict[str, str]:
        return {
            "KYC_SYNC_WAREHOUSE__KIND": "snowflake",
            "KYC_SYNC_SNOWFLAKE__ACCOUNT": "fakesnow",
            "KYC_SYNC_SNOWFLAKE__USER": "fake",
            "KYC_SYNC_SNOWFLAKE__PASSWORD": "snow",
            "KYC_SYNC_SNOWFLAKE__DATABASE": self.database,
            "KYC_SYNC_SNOWFLAKE__SCHEMA_NAME": "KYC",
            "KYC_SYNC_SNOWFLAKE__HOST": self.host,
            "KYC_SYNC_SNOWFLAKE__PORT": str(self.port),
            "KYC_SYNC_SNOWFLAKE__PROTOCOL": "http",
            "KYC_SYNC_SNOWFLAKE__LOCK_TIMEOUT_S": str(self.lock_timeout_s),
        }

    def signs(self) -> dict[str, int]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return {name: text.count(sign) for name, sign in DOUBLE_SIGNS.items()}

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        with self._connect() as con:
            cursor = con.cursor()
            cursor.execute(sql)
            return [tuple(r) for r in cursor.fetchall()]

    def read_state(self) -> State:
        return _state(self._rows(STATE_SQL.format(op_time_us=self.OP_TIME_US, schema="KYC.")))

    def read_current(self) -> Current:
        return _current(self._rows(CURRENT_SQL.format(op_time_us=self.OP_TIME_US, schema="KYC.")))

    def read_history(self) -> dict[int, list[HistoryRow]]:
        return _history(self._rows(HISTORY_SQL.format(
            op_time_us=self.OP_TIME_US,
            valid_from_us=self.OP_TIME_US.replace("op_time", "valid_from"),
            valid_to_us=self.OP_TIME_US.replace("op_time", "valid_to"), schema="KYC.")))
