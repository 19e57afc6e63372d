"""Snowflake connector errors mapped to the writer's two kinds: transient (retry) or terminal.

The connector reports a Snowflake error code (``errno``, e.g. ``2003``) and a SQLSTATE. The
mapping, in order:

1. credentials rejected (``390100``, ``390144``, ``3943xx`` or SQLSTATE ``28000``): terminal;
2. known transient codes: the session or its token expired (the writer reconnects), lock
   contention (``000625``), a statement cancelled or timed out (``000604``, ``000630``), the
   connector's own network codes (``2500xx``, ``251011``, ``251012``, ``252007``);
3. any other login refusal (``39xxxx``: user locked, role or database not granted): terminal;
4. HTTP errors the connector gave up retrying (5xx, 408, 429): transient; 4xx: terminal;
5. SQLSTATE class ``08`` (connection), ``40001`` (serialization), ``57014`` (cancelled),
   ``57P03`` while a warehouse is resuming, or a message about a lock wait or resuming warehouse:
   transient;
6. everything else (SQL compilation, missing object or privilege, data errors, no warehouse
   selected): terminal. ``OperationalError``/``InterfaceError`` not matched above are network
   trouble (the connection broke): transient.

A transient error that is a lock wait (``000625``, or a message about a lock another statement
holds) becomes ``WarehouseLockWait``: it is retried for ``warehouse.lock_wait_max_s``, long enough
for Snowflake to abort the detached transaction of an instance that died mid-flush.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from snowflake.connector import errors as sf

from warehouse.errors import (
    TerminalWarehouseError,
    TransientWarehouseError,
    WarehouseError,
    WarehouseLockWait,
)

CREDENTIAL_ERRNOS: frozenset[int] = frozenset(
    {390100, 390144, 394300, 394301, 394302, 394303, 394304, 394305, 394306}
)
"""Incorrect user/password, JWT (key-pair) token rejected."""

TRANSIENT_ERRNOS: frozenset[int] = frozenset(
    {
        604,  # SQL execution cancelled
        625,  # lock waiters limit reached / lock wait timeout
        630,  # statement reached its statement or warehouse timeout
        390110, 390112, 390113, 390114, 390115,  # session or token expired: log in again
        250001,  # could not connect (network level; rejected credentials carry their own code)
        250002,  # connection is closed
        250003,  # failed to get a response
        250005,  # failed to connect to the server
        251011,  # connection timeout
        251012,  # retryable request code
        252007,  # failed to renew the session
    }
)

TERMINAL_ERRNOS: frozenset[int] = frozenset(
    {
        606,  # no active warehouse selected (settings: warehouse, role grants)
        1003,  # SQL compilation error: syntax
        2003,  # object does not exist or not authorized
        3001,  # insufficient privileges
    }
)

TRANSIENT_HTTP: tuple[type[sf.Error], ...] = (
    sf.InternalServerError,
    sf.BadGatewayError,
    sf.ServiceUnavailableError,
    sf.GatewayTimeoutError,
    sf.RequestTimeoutError,
    sf.TooManyRequests,
    sf.OtherHTTPRetryableError,
    sf.RequestExceedMaxRetryError,
)

TERMINAL_HTTP: tuple[type[sf.Error], ...] = (sf.ForbiddenError, sf.BadRequest, sf.MethodNotAllowed)

TERMINAL_CLASSES: tuple[type[sf.Error], ...] = (
    sf.ProgrammingError, sf.DataError, sf.IntegrityError, sf.NotSupportedError, sf.InternalError,
)

TRANSIENT_SQLSTATES: frozenset[str] = frozenset({"40001", "57014"})
"""Serialization failure; statement cancelled (timeouts, lock waits)."""

LOCK_WAIT_ERRNOS: frozenset[int] = frozenset({625})
"""The statement gave up waiting for a lock: LOCK_TIMEOUT reached, or too many waiters."""

_LOCK_WAIT_MESSAGE = re.compile(
    r"lock wait|waiters for this lock|has locked table|deadlock", re.IGNORECASE
)

_TRANSIENT_MESSAGE = re.compile(
    r"lock wait|waiters for this lock|deadlock|warehouse .*(resum|provision)|being resumed",
    re.IGNORECASE,
)


def describe(err: sf.Error) -> str:
    """The error's code, SQLSTATE and message (the connector never puts credentials in it)."""
    return f"{type(err).__name__} {err.errno} ({err.sqlstate}): {err.raw_msg or err.msg}"


def is_transient(err: sf.Error) -> bool:
    """The mapping of the module doc: the first rule that matches decides."""
    errno, sqlstate = err.errno, str(err.sqlstate or "")
    text = str(err.raw_msg or err.msg or "")
    rules: tuple[tuple[bool, bool], ...] = (  # (matches, transient)
        (errno in CREDENTIAL_ERRNOS or sqlstate == "28000", False),
        (errno in TRANSIENT_ERRNOS, True),
        (390000 <= errno < 400000, False),
        (isinstance(err, TRANSIENT_HTTP), True),
        (isinstance(err, TERMINAL_HTTP) or errno in TERMINAL_ERRNOS, False),
        (sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES, True),
        (_TRANSIENT_MESSAGE.search(text) is not None, True),
        (isinstance(err, TERMINAL_CLASSES), False),
    )
    for matches, transient in rules:
        if matches:
            return transient
    return isinstance(err, sf.OperationalError | sf.InterfaceError)


def is_lock_wait(err: sf.Error) -> bool:
    """A transient error that ended a wait for a lock another session holds."""
    text = str(err.raw_msg or err.msg or "")
    return is_transient(err) and (
        err.errno in LOCK_WAIT_ERRNOS or _LOCK_WAIT_MESSAGE.search(text) is not None
    )


def translate(err: sf.Error) -> WarehouseError:
    """Map a connector error to ``WarehouseLockWait``, ``TransientWarehouseError`` or
    ``TerminalWarehouseError``."""
    if is_lock_wait(err):
        return WarehouseLockWait(f"Snowflake: {describe(err)}")
    if is_transient(err):
        return TransientWarehouseError(f"Snowflake: {describe(err)}")
    return TerminalWarehouseError(f"Snowflake: {describe(err)}")


@contextmanager
def translated() -> Iterator[None]:
    """Raise the connector's errors as the writer's: the one place they are translated."""
    try:
        yield
    except sf.Error as err:
        raise translate(err) from err
