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
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from django.db import connection


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


def json_rows(rows: Iterable[Sequence[Any]]) -> str:
    """Return ``rows`` as one JSON parameter: a list of rows, each a list.

    A statement reads it with ``json_array_elements(%s::json) AS r`` and
    ``r->>0``, ``(r->>1)::bigint``, ``r->2`` (JSON) ... One ``json.dumps`` (C)
    instead of psycopg's array dumper, which loops in Python over every
    element (~5 ms for six 200-element text arrays against ~0.5, measured).

    Encoded by orjson (a tuple is a JSON array to it; ~4 times faster than
    the json module for the bridge's message rows). What it refuses (an
    integer beyond 64 bits, a lone surrogate) the json module writes, as
    before: PostgreSQL then takes or refuses it with its own error.
    """
    rows = rows if isinstance(rows, list | tuple) else list(rows)
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:
        return json.dumps([list(row) for row in rows])


def quoted(*names: str) -> str:
    """Return the quoted column names, comma-separated."""
    return ", ".join(connection.ops.quote_name(n) for n in names)
