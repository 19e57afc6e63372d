"""fakesnow's server, made to behave like Snowflake where recovering from a dead instance needs it.

fakesnow gives every session its own DuckDB connection (``fakesnow.server.sessions``). Left as it
is, DuckDB's optimistic concurrency fails a conflicting write at once and fakesnow answers that
with HTTP 500 (the connector then retries the request until its ``network_timeout``); a session
that is closed, or whose client died, keeps its open transaction forever. Snowflake instead:

- locks a table for a transaction from its first DML statement on it until the transaction
  ends; another transaction's DML on that table waits, up to its session's ``LOCK_TIMEOUT``, and
  then fails with error 000625;
- rolls back the open transaction of a session that is closed;
- leaves the transaction of a client that died detached, and aborts it once it blocks another
  transaction and has been idle long enough (5 minutes there; ``idle_abort_s`` here).

``SnowflakeDouble`` wraps fakesnow's ASGI app to do the same, without changing fakesnow:

- before a DML statement (INSERT, UPDATE, DELETE, MERGE, COPY INTO) on a table other than the
  session's temporary ones, the session takes the table's lock, waiting while another session
  holds it; after each statement, a session with no open transaction (fakesnow's own
  bookkeeping) releases its locks;
- a holder that has no statement running and has been idle for ``idle_abort_s`` is aborted by
  the waiter: its transaction is rolled back and its locks released; its next statement (other
  than ROLLBACK) fails with error 000604, so that a live but idle client never commits half a
  transaction;
- ``/session?delete`` rolls back the session's transaction and closes its DuckDB connection;
- a temporary stage belongs to its session, as in Snowflake (fakesnow keeps one stage per name
  for every session): the session's statements are sent on with its temporary stages renamed
  ``<name>_S<n>``, so that two sessions' ``PUT``s of one file name do not overwrite each other;
- a write conflict DuckDB still reports (two open transactions updating one row: what a write
  the locks do not cover would meet, or any write with ``--no-table-locks``; or a transaction
  that began before a swap and wrote a swapped table by its old binding) is answered as error
  000625 instead of HTTP 500;
- ``ALTER TABLE a SWAP WITH b``, which fakesnow cannot parse, runs as Snowflake runs it: the
  session's open transaction is committed first (DDL), the locks of both tables are taken, and
  the two tables trade names in one DuckDB transaction (three renames). Both tables must exist
  (error 002003), in one schema (the double's limit). DuckDB binds a view by name when it is
  queried, so a view of the live name reads the table swapped in, as in Snowflake.

Run it: ``python -m tests.warehouse.snowflake_double --host 127.0.0.1 --port N``; connect with
``host``, ``port`` and ``protocol="http"``. It logs one line per lock timeout, aborted transaction
and closed session to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import duckdb
import sqlglot
import uvicorn
from fakesnow.server import app as fakesnow_app
from fakesnow.server import sessions as fakesnow_sessions
from fakesnow.statement_type import statement_type_id
from sqlglot import Expr, exp
from sqlglot.errors import SqlglotError
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("snowflake_double")

DEFAULT_LOCK_TIMEOUT_S = 43_200.0  # Snowflake's default LOCK_TIMEOUT
WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy)
_TOKEN = re.compile(r'Token="([^"]*)"')
SUCCESS_SQL = "SELECT 'Statement executed successfully.' AS \"status\""

# The exceptions fakesnow logs while answering the current request (it answers an unexpected one
# with HTTP 500 and a message that does not name it).
_logged: ContextVar[list[BaseException] | None] = ContextVar("_logged", default=None)


class _KeepLoggedExceptions(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        kept = _logged.get()
        if kept is not None and record.exc_info and record.exc_info[1] is not None:
            kept.append(record.exc_info[1])
        return True


@dataclass
class Session:
    token: str
    lock_timeout_s: float
    last_active: float = field(default_factory=time.monotonic)
    running: int = 0
    temporary: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    aborted: str = ""  # why its transaction was aborted; answered to its next statement
    closed: bool = False
    number: int = 0
    stages: set[str] = field(default_factory=set)  # its temporary stages


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


def error_body(code: int, sqlstate: str, message: str) -> dict[str, Any]:
    """A failed statement as Snowflake answers it (HTTP 200, ``success`` false)."""
    return {
        "data": {"errorCode": f"{code:06d}", "sqlState": sqlstate},
        "code": f"{code:06d}", "message": message, "success": False,
    }


def is_conflict(error: BaseException) -> bool:
    """A write DuckDB refused because another transaction changed the table: a row both wrote,
    or a table renamed (swapped) after this transaction bound its name."""
    if not isinstance(error, duckdb.TransactionException):
        return False
    message = str(error).lower()
    return "conflict" in message or "attempting to modify table" in message


@dataclass(frozen=True, slots=True)
class TableName:
    """A table as DuckDB stores it under fakesnow: database (catalog), schema, name."""

    database: str
    schema: str
    name: str

    def lock(self) -> str:
        return ".".join(p.upper() for p in (self.database, self.schema, self.name) if p)

    def sql(self) -> str:
        return ".".join(quoted(p) for p in (self.database, self.schema, self.name))


class SwapFailed(Exception):
    """A SWAP the double refuses, with the error Snowflake would answer."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.code, self.sqlstate, self.message = code, sqlstate, message


def quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def swapped_tables(statement: Expr | None) -> tuple[exp.Table, exp.Table] | None:
    """The two tables of ``ALTER TABLE a SWAP WITH b``; None for any other statement."""
    if not isinstance(statement, exp.Alter) or not isinstance(statement.this, exp.Table):
        return None
    actions = statement.args.get("actions") or []
    if len(actions) != 1 or not isinstance(actions[0], exp.SwapTable):
        return None
    other = actions[0].this
    return (statement.this, other) if isinstance(other, exp.Table) else None


def stored(duck: Any, table: TableName) -> TableName | None:
    """``table`` as the catalog spells it, or None if there is no such table (Snowflake's
    names fold to upper case unquoted; DuckDB matches them without regard to case)."""
    row = duck.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        "WHERE upper(database_name) = upper(?) AND upper(schema_name) = upper(?) "
        "AND upper(table_name) = upper(?) AND NOT temporary",
        [table.database, table.schema, table.name],
    ).fetchone()
    return TableName(*row) if row is not None else None


def exchange(duck: Any, first: TableName, second: TableName, if_exists: bool) -> bool:
    """``first`` and ``second`` trade names in one DuckDB transaction (the caller committed the
    session's open one); False if there was nothing to swap; raises ``SwapFailed`` with what
    Snowflake would answer."""
    a, b = stored(duck, first), stored(duck, second)
    for given, found in ((first, a), (second, b)):
        if found is None and not (if_exists and given is first):
            raise SwapFailed(2003, "42S02", "SQL compilation error:\nTable "
                             f"'{given.lock()}' does not exist or not authorized.")
    if a is None or b is None:  # ALTER TABLE IF EXISTS of a missing table: nothing to do
        return False
    if (a.database, a.schema) != (b.database, b.schema):
        raise SwapFailed(2, "0A000", "Unsupported feature: the test double swaps two tables of "
                         "one schema only.")
    if a == b:
        return False
    interim = f"{a.name}__SWAP_{uuid.uuid4().hex[:8]}"
    duck.begin()
    try:
        duck.execute(f"ALTER TABLE {a.sql()} RENAME TO {quoted(interim)}")
        duck.execute(f"ALTER TABLE {b.sql()} RENAME TO {quoted(a.name)}")
        duck.execute(f"ALTER TABLE {TableName(a.database, a.schema, interim).sql()} "
                     f"RENAME TO {quoted(b.name)}")
        duck.commit()
    except duckdb.Error as err:
        rollback(duck)
        code, state = (625, "57014") if is_conflict(err) else (1003, "42000")
        message = f"SWAP of '{a.lock()}' with '{b.lock()}' failed: {err}"
        raise SwapFailed(code, state, message) from None
    return True


class SnowflakeDouble:
    """fakesnow's app with Snowflake's table locks and transaction ends (module doc)."""

    def __init__(self, inner: App, idle_abort_s: float, table_locks: bool = True) -> None:
        self.inner = inner
        self.idle_abort_s = idle_abort_s
        self.table_locks = table_locks
        self.sessions: dict[str, Session] = {}
        self.logins = 0
        self.owners: dict[str, str] = {}  # table -> token of the session holding its lock
        self.changed = asyncio.Condition()
        logging.getLogger("fakesnow.server").addFilter(_KeepLoggedExceptions())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
        elif path == "/session/v1/login-request":
            await self.login(scope, receive, send)
        elif path == "/queries/v1/query-request":
            await self.query(scope, receive, send)
        elif path == "/session" and b"delete=" in scope.get("query_string", b""):
            await self.delete(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    # -- requests --------------------------------------------------------------------------

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Keep the session's LOCK_TIMEOUT; answer with a master token too, without which the
        connector never closes the session (``/session?delete``) as it does with Snowflake."""
        body = await read_body(receive)
        answer = await self.call_inner(scope, body)
        try:
            params = json_body(scope, body)["data"].get("SESSION_PARAMETERS") or {}
            payload = json.loads(bytes(answer.body))
            token = payload["data"]["token"]
        except (ValueError, KeyError, TypeError):
            await forward(answer, send)
            return
        lock_timeout = float(params.get("LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))
        self.logins += 1
        self.sessions[token] = Session(token, lock_timeout, number=self.logins)
        payload["data"]["masterToken"] = f"master-{token}"
        response = JSONResponse(payload, status_code=answer.status)
        await forward(Answer(answer.status, list(response.raw_headers),
                             bytearray(response.body)), send)

    async def query(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        session = self.sessions.get(token_of(scope))
        if session is None:  # fakesnow answers an unknown token
            await forward(await self.call_inner(scope, body), send)
            return
        payload = json_body(scope, body)
        sql = str(payload.get("sqlText", ""))
        if (own := own_stages(session, sql)) != sql:
            scope, body = with_json_body(scope, {**payload, "sqlText": own})
            sql = own
        statement = parse(sql)
        if session.aborted:
            if isinstance(statement, exp.Rollback):
                session.aborted = ""
            else:
                await answer_error(send, 604, "57014", session.aborted)
                return
        session.running += 1
        try:
            if (tables := swapped_tables(statement)) is not None:
                assert isinstance(statement, exp.Alter)
                await self.swap(session, statement, tables, scope, payload, send)
                return
            if not await self.lock_all(session, self.written_tables(session, statement), send):
                return
            logged: list[BaseException] = []
            reset = _logged.set(logged)
            try:
                answer = await self.call_inner(scope, body)
            finally:
                _logged.reset(reset)
            if answer.status == 500 and any(is_conflict(e) for e in logged):
                log.info("write conflict answered as a lock error: session %s",
                         short(session.token))
                await answer_error(
                    send, 625, "57014",
                    "Statement was aborted: a table it writes was changed by a transaction "
                    "that committed after this one began (lock conflict).",
                )
                return
            if (
                isinstance(statement, exp.Create)
                and statement.find(exp.TemporaryProperty)
                and (created := statement.find(exp.Table)) is not None
            ):
                session.temporary.add(created.name.upper())
            await forward(answer, send)
        finally:
            session.running -= 1
            session.last_active = time.monotonic()
            await self.statement_done(session)

    async def delete(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Snowflake rolls back the open transaction of a session that is closed."""
        body = await read_body(receive)
        token = token_of(scope)
        conn = fakesnow_sessions.get(token)
        answer = await self.call_inner(scope, body)
        session = self.sessions.get(token)
        if session is not None and token not in fakesnow_sessions:
            session.closed = True
            if session.running == 0:
                async with self.changed:
                    self.end(session, conn)
        await forward(answer, send)

    async def swap(
        self, session: Session, statement: exp.Alter, tables: tuple[exp.Table, exp.Table],
        scope: Scope, payload: dict[str, Any], send: Send,
    ) -> None:
        """``ALTER TABLE a SWAP WITH b`` (module doc): commit the open transaction, take both
        tables' locks, exchange the names; answered as Snowflake answers DDL."""
        conn = fakesnow_sessions.get(session.token)
        if conn is None:
            await answer_error(send, 390111, "08001", "Session no longer exists.")
            return
        # DDL commits the session's open transaction first, which ends its locks.
        await asyncio.to_thread(commit_open, conn)
        async with self.changed:
            self.release(session)
        first, second = (self.qualified(session, t) for t in tables)
        locks = sorted({first.lock(), second.lock()}) if self.table_locks else []
        if not await self.lock_all(session, locks, send):
            return
        try:
            swapped = await asyncio.to_thread(
                exchange, conn._duck_conn, first, second, bool(statement.args.get("exists"))
            )
        except SwapFailed as err:
            log.info("swap refused: session %s: %s", short(session.token), err.message)
            await answer_error(send, err.code, err.sqlstate, err.message)
            return
        if swapped:
            log.info("swapped %s with %s: session %s", first.lock(), second.lock(),
                     short(session.token))
        scope, body = with_json_body(scope, {**payload, "sqlText": SUCCESS_SQL})
        answer = await self.call_inner(scope, body)
        try:
            done = json.loads(bytes(answer.body))
            done["data"]["statementTypeId"] = statement_type_id(statement)
        except (ValueError, KeyError, TypeError):
            await forward(answer, send)
            return
        response = JSONResponse(done, status_code=answer.status)
        await forward(Answer(answer.status, list(response.raw_headers),
                             bytearray(response.body)), send)

    # -- locks ------------------------------------------------------------------------------

    def qualified(self, session: Session, table: exp.Table) -> TableName:
        """``table`` with the session's current database and schema where it names none."""
        conn = fakesnow_sessions.get(session.token)
        database = table.catalog or (conn.database if conn else "") or ""
        schema = table.db or (conn.schema if conn else "") or ""
        return TableName(database, schema, table.name)

    def written_tables(self, session: Session, statement: Expr | None) -> list[str]:
        """The table a DML statement writes, unless it is one of the session's temporary
        tables (a session's own objects take no lock another session could wait for)."""
        if not self.table_locks or not isinstance(statement, WRITES) or statement.this is None:
            return []
        target = statement.this
        table = target if isinstance(target, exp.Table) else target.find(exp.Table)
        if table is None or not table.name:
            return []
        if not table.db and table.name.upper() in session.temporary:
            return []
        return [self.qualified(session, table).lock()]

    async def lock_all(self, session: Session, tables: Sequence[str], send: Send) -> bool:
        """Take each lock of ``tables``; False (error 000625 answered) when a wait timed out."""
        for table in tables:
            if not await self.acquire(session, table):
                log.info("lock wait timeout: session %s on %s", short(session.token), table)
                await answer_error(
                    send, 625, "57014",
                    f"Statement on table '{table}' was aborted because the lock wait timeout "
                    f"of {session.lock_timeout_s:g} seconds was exceeded.",
                )
                return False
        return True

    async def acquire(self, session: Session, table: str) -> bool:
        """Wait for ``table``'s lock up to the session's LOCK_TIMEOUT, aborting a holder that
        is idle past ``idle_abort_s``; False when the wait timed out."""
        deadline = time.monotonic() + session.lock_timeout_s
        async with self.changed:
            while (owner := self.owners.get(table)) not in (None, session.token):
                holder = self.sessions.get(owner) if owner is not None else None
                now = time.monotonic()
                if holder is None:
                    self.owners.pop(table, None)
                    continue
                idle_for = now - holder.last_active
                if holder.running == 0 and idle_for >= self.idle_abort_s:
                    self.abort(holder, idle_for, session)
                    continue
                if now >= deadline:
                    return False
                until_idle = self.idle_abort_s - idle_for if holder.running == 0 else 0.2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.changed.wait(), timeout=max(0.01, min(deadline - now, until_idle))
                    )
            self.owners[table] = session.token
            session.held.add(table)
            return True

    def abort(self, holder: Session, idle_for: float, waiter: Session) -> None:
        """Roll back an idle holder's transaction (in the event loop, so that no statement of
        the holder starts meanwhile) and release its locks."""
        conn = fakesnow_sessions.get(holder.token)
        if conn is not None:
            rollback(conn)
            holder.aborted = (
                f"Transaction of session {short(holder.token)} was aborted: idle for "
                f"{idle_for:.1f} s while it blocked another transaction."
            )
        log.info("aborted the idle transaction of session %s (idle %.1f s, blocking session %s)",
                 short(holder.token), idle_for, short(waiter.token))
        self.release(holder)

    def release(self, session: Session) -> None:
        for table in session.held:
            if self.owners.get(table) == session.token:
                del self.owners[table]
        session.held.clear()
        self.changed.notify_all()

    async def statement_done(self, session: Session) -> None:
        conn = fakesnow_sessions.get(session.token)
        async with self.changed:
            if session.closed:
                self.end(session, conn)
            elif conn is None or not getattr(conn, "_in_transaction", False):
                self.release(session)

    def end(self, session: Session, conn: Any) -> None:
        """A closed session (the caller holds ``changed``): roll back, close its DuckDB
        connection, release its locks."""
        if conn is not None:
            rollback(conn)
            try:
                conn.close()
            except duckdb.Error as err:
                log.debug("close failed: %s", err)
        self.sessions.pop(session.token, None)
        if session.held:
            log.info("session %s closed: its transaction was rolled back", short(session.token))
        self.release(session)

    # -- plumbing ---------------------------------------------------------------------------

    async def call_inner(self, scope: Scope, body: bytes) -> Answer:
        answer = Answer()
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the request is answered in full
            raise AssertionError("unreachable")

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.status = int(message["status"])
                answer.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                answer.body += message.get("body", b"")

        await self.inner(scope, replay, keep)
        return answer


def commit_open(conn: Any) -> None:
    """Commit the session's open transaction, as Snowflake does before a DDL statement."""
    conn._duck_conn.commit()
    conn._in_transaction = False


def rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception as err:  # the session's DuckDB connection may be closed already
        log.debug("rollback failed: %s", err)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_body(scope: Scope, body: bytes) -> dict[str, Any]:
    headers = dict(scope.get("headers", []))
    if headers.get(b"content-encoding") == b"gzip":
        body = gzip.decompress(body)
    try:
        loaded = json.loads(body)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


_TEMPORARY_STAGE = re.compile(
    r'CREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+STAGE\s+(?:IF\s+NOT\s+EXISTS\s+)?("[^"]+"|\w+)',
    re.IGNORECASE,
)


def own_stages(session: Session, sql: str) -> str:
    """``sql`` with the session's temporary stages renamed to its own (``<name>_S<n>``)."""
    if (created := _TEMPORARY_STAGE.search(sql)) is not None:
        name = created.group(1)
        session.stages.add(name[1:-1] if name.startswith('"') else name.upper())
    for stage in session.stages:
        own = f"{stage}_S{session.number}"
        sql = re.sub(rf'(@|STAGE\s+(?:IF\s+NOT\s+EXISTS\s+)?)"{re.escape(stage)}"',
                     rf'\1"{own}"', sql, flags=re.IGNORECASE)
        sql = re.sub(rf"(@|STAGE\s+(?:IF\s+NOT\s+EXISTS\s+)?){re.escape(stage)}\b",
                     rf'\1"{own}"', sql, flags=re.IGNORECASE)
    return sql


def with_json_body(scope: Scope, payload: dict[str, Any]) -> tuple[Scope, bytes]:
    """The request with ``payload`` as its (uncompressed) JSON body."""
    body = json.dumps(payload).encode()
    headers = [(k, v) for k, v in scope.get("headers", [])
               if k not in (b"content-encoding", b"content-length")]
    headers.append((b"content-length", str(len(body)).encode()))
    return {**scope, "headers": headers}, body


def token_of(scope: Scope) -> str:
    auth = dict(scope.get("headers", [])).get(b"authorization", b"").decode()
    found = _TOKEN.search(auth)
    return found.group(1) if found else ""


def parse(sql: str) -> Expr | None:
    try:
        return sqlglot.parse_one(sql, read="snowflake")
    except SqlglotError:
        return None


def short(token: str) -> str:
    return token[:8]


async def forward(answer: Answer, send: Send) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": bytes(answer.body)})


async def answer_error(send: Send, code: int, sqlstate: str, message: str) -> None:
    response = JSONResponse(error_body(code, sqlstate, message))
    await forward(Answer(200, list(response.raw_headers), bytearray(response.body)), send)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.warehouse.snowflake_double",
                                     description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-abort-s", type=float, default=300.0,
                        help="abort a blocking transaction idle this long (Snowflake: 5 min)")
    parser.add_argument("--no-table-locks", action="store_true",
                        help="take no table locks: concurrent writes meet DuckDB's conflicts")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    app = SnowflakeDouble(fakesnow_app, args.idle_abort_s, table_locks=not args.no_table_locks)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
