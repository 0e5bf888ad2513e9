"""pg_bulk.OwnConnection: a batching stage's own PostgreSQL connection."""

from __future__ import annotations

import os

import pytest
from django.db import DatabaseError, IntegrityError, connection

from vocoeng.models import Tenant
from vocoeng.pg_bulk import OwnConnection

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="a PostgreSQL connection"
    ),
]

INSERT = (
    "INSERT INTO vocoeng_tenant (slug, name, over_budget_text, created_at)"
    " VALUES (%s, %s, '', now())"
)


@pytest.fixture
def own():
    conn = OwnConnection()
    yield conn
    conn.close()


def _backend(own: OwnConnection) -> int:
    return own._connection().info.backend_pid


def test_a_statement_is_committed_when_it_returns(own) -> None:
    own.execute(INSERT, ["own-1", "Own"])
    # Seen from Django's connection: committed, not in a transaction of its own.
    assert Tenant.objects.filter(slug="own-1").exists()
    assert _backend(own) != connection.connection.info.backend_pid


def test_errors_are_djangos_and_a_refused_row_keeps_the_connection(own) -> None:
    own.execute(INSERT, ["own-twin", "Own"])
    backend = _backend(own)
    with pytest.raises(IntegrityError):
        own.execute(INSERT, ["own-twin", "Own"])
    assert _backend(own) == backend  # the same session: nothing was broken
    with pytest.raises(DatabaseError):
        own.execute("INSERT INTO no_such_table VALUES (1)", [])


def test_a_connection_the_server_ended_is_replaced_by_the_next_call(own) -> None:
    own.execute(INSERT, ["own-before", "Own"])
    backend = _backend(own)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
    with pytest.raises(DatabaseError):  # this call finds it dead ...
        own.execute(INSERT, ["own-lost", "Own"])
    own.execute(INSERT, ["own-after", "Own"])  # ... the next one reconnects
    assert _backend(own) != backend
    assert set(Tenant.objects.values_list("slug", flat=True)) >= {
        "own-before",
        "own-after",
    }


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(own) -> None:
    own.execute(INSERT, ["own-parent", "Own"])
    # Its id only: a reference here would keep the child from finalizing it.
    parent_conn, backend = id(own._conn), _backend(own)
    pid = os.fork()
    if pid == 0:  # the child: a session of its own, the parent's untouched
        try:
            own.execute(INSERT, ["own-child", "Own"])
            child_backend = own._conn.info.backend_pid
            os._exit(0 if child_backend != backend else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's session survived the child (which never finalized it).
    own.execute(INSERT, ["own-parent-again", "Own"])
    assert id(own._conn) == parent_conn and _backend(own) == backend
    assert set(Tenant.objects.values_list("slug", flat=True)) >= {
        "own-parent",
        "own-child",
        "own-parent-again",
    }
