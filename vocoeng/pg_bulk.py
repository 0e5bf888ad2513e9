"""Run batch statements on PostgreSQL with the parameters bound by the server.

A 200-row ``INSERT ... VALUES`` is a query text that changes with the row
count, and with Django's client-side binding (``DB_PREPARED_STATEMENTS=0``)
Python quoting of every value (profiled in the bridge: ~13% of its time). The
batch paths here send one fixed statement whose rows are one JSON parameter
(:func:`json_rows`), bound by the server on a plain psycopg cursor of
Django's own connection, so they run in Django's transaction and their errors
come out as ``django.db`` errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from django.db import connection
from django.db.utils import DatabaseErrorWrapper, InterfaceError, OperationalError


def is_postgres() -> bool:
    """Say whether the default database is PostgreSQL (the array paths)."""
    return connection.vendor == "postgresql"


def execute(
    sql: str, params: Sequence[Any], *, prepare: bool | None = False
) -> list[tuple[Any, ...]]:
    """Run ``sql`` with server-side binding; return its rows (if it has any).

    ``prepare=None``: prepared as the connection prepares (after 5 runs with
    DB_PREPARED_STATEMENTS, never without), for a statement whose plan does
    not depend on its rows (a plain INSERT of them).
    """
    import psycopg

    connection.ensure_connection()
    # psycopg.Cursor, not connection.cursor(): server-side binding whatever
    # DB_PREPARED_STATEMENTS says, and by default never prepared. A batch's
    # best plan depends on its rows (how many, which keys); prepared,
    # PostgreSQL moved to a generic plan after five runs and the bridge's chat
    # route fell from ~2,700 to ~1,500 msg/s at the same CPU (bench/bridge.py).
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cur:
        cur.execute(sql, params, prepare=prepare)
        return cur.fetchall() if cur.description is not None else []


class OwnConnection:
    """A PostgreSQL connection that one batching stage of a process keeps for
    itself, in autocommit, outside Django's pool.

    The webhook's hand-off (webhooks.handoff) runs one INSERT at a time per
    process, each from whichever request thread leads it. On Django's
    connection of that thread, every batch checked a connection out of the
    pool and, at the end of the request, back in: ~45 us of CPU a batch (a
    webhook's hand-off ~25 us of ~300, measured in-process with 8 threads).
    One caller at a time: the stage serializes its leaders.

    Made from the default database's settings as Django makes its own (the
    same parameters, adapters, time zone and role), on first use; errors come
    out as ``django.db`` errors. After one that may have broken it (anything
    but a refused row) it is closed, and the next call connects again; a
    statement that finds the kept connection lost runs again on a new one. A
    forked child never touches (nor finalizes, which would end the parent's
    session) the connection it inherited: it opens its own.
    """

    import psycopg as Database  # what DatabaseErrorWrapper maps errors from

    def __init__(self) -> None:
        self._conn: Any = None
        self._pid = 0
        self._name: str | None = None  # the database it is connected to
        self.errors_occurred = False  # set by DatabaseErrorWrapper
        self._lost = False  # the last call found the connection lost

    def execute(
        self, sql: str, params: Sequence[Any], *, prepare: bool | None = None
    ) -> None:
        """Run ``sql`` (autocommit: committed when it returns).

        When the connection kept from an earlier call turns out lost (the
        server restarted, or ended it after ``idle_session_timeout``), the
        statement runs once more on a new one. Only the statements of the
        hand-off come here: INSERTs of rows with their own ids, which a
        second run cannot store twice.
        """
        kept = self._conn is not None and self._pid == os.getpid()
        try:
            self._execute(sql, params, prepare)
        except (OperationalError, InterfaceError):
            if not (kept and self._lost):
                raise
            self._execute(sql, params, prepare)

    def _execute(self, sql: str, params: Sequence[Any], prepare: bool | None) -> None:
        conn = self._connection()
        self.errors_occurred, self._lost = False, False
        try:
            with DatabaseErrorWrapper(self), self.Database.Cursor(conn) as cur:
                cur.execute(sql, params, prepare=prepare)
        finally:
            if self.errors_occurred or conn.closed:
                self._lost = conn.broken
                self.close()

    def close(self) -> None:
        """Close the connection (the next call opens another)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:  # noqa: S110 - broken already: dropped either way
                pass

    def _connection(self) -> Any:
        name = connection.settings_dict["NAME"]  # the test database, in tests
        if self._conn is not None and self._pid != os.getpid():
            # Inherited: dropped, not closed (psycopg finalizes a connection
            # only in the process that opened it, so the parent's stays open).
            self._conn = None
        elif self._conn is not None and self._name != name:
            self.close()
        if self._conn is None:
            with DatabaseErrorWrapper(self):
                conn = connection.Database.connect(
                    **connection.get_connection_params(), autocommit=True
                )
            try:
                # Django's own set-up of a new connection (its pool's too).
                connection._configure_connection(conn)
            except BaseException:
                conn.close()
                raise
            self._conn, self._pid, self._name = conn, os.getpid(), name
        return self._conn


# The rows of a JSON parameter, as a statement's FROM item: ``FROM {ROWS}``,
# then ``r->>0``, ``(r->>1)::bigint``, ``r->2`` (JSON) ... As jsonb, not json:
# json is kept as text, and each ``r->>i`` scans its row's text again from the
# start, so a row of n fields was read n times. jsonb is parsed once and each
# field is then found by its offset. Measured on the webhook's INSERT of
# deliveries (10 fields, a ~700-byte body): PostgreSQL's CPU for a batch of 5
# rows fell from ~620 to ~300 us, for one row from ~250 to ~175.
ROWS = "jsonb_array_elements(%s::jsonb) AS r"


def json_rows(rows: Iterable[Sequence[Any]], *, default: Any = None) -> str:
    """Return ``rows`` as one JSON parameter: a list of rows, each a list.

    A statement reads it with ``FROM {ROWS}`` (see ROWS). One ``orjson.dumps``
    (C) instead of psycopg's array dumper, which loops in Python over every
    element (~5 ms for six 200-element text arrays against ~0.5, measured).

    Encoded by orjson (a tuple is a JSON array to it; ~4 times faster than
    the json module for the bridge's message rows). What it refuses (an
    integer beyond 64 bits, a lone surrogate) the json module writes, as
    before: PostgreSQL then takes or refuses it with its own error. orjson
    writes UUIDs and datetimes as PostgreSQL reads them (``(r->>0)::uuid``,
    ``::timestamptz``); ``default`` converts, for the json module, what it
    cannot write itself.
    """
    rows = rows if isinstance(rows, list | tuple) else list(rows)
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:
        return json.dumps([list(row) for row in rows], default=default)


def quoted(*names: str) -> str:
    """Return the quoted column names, comma-separated."""
    return ", ".join(connection.ops.quote_name(n) for n in names)
