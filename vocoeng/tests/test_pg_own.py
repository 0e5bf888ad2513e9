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


def test_a_statement_that_finds_its_connection_ended_runs_on_a_new_one(own) -> None:
    # The server restarted, or ended the idle session: the next statement is
    # not refused for it (a webhook would have been answered 503).
    own.execute(INSERT, ["own-before", "Own"])
    backend = _backend(own)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
    own.execute(INSERT, ["own-after", "Own"])
    assert _backend(own) != backend
    assert set(Tenant.objects.values_list("slug", flat=True)) >= {
        "own-before",
        "own-after",
    }


def test_a_statement_that_fails_on_a_new_connection_is_not_run_again(
    own, monkeypatch
) -> None:
    # Only a kept connection found lost earns a second run: a first one that
    # fails (the server unreachable) raises at once.
    from django.db import connection as django_connection

    params, attempts = django_connection.get_connection_params(), []

    def unreachable() -> dict:
        attempts.append(1)
        return {**params, "port": 1, "host": "127.0.0.1", "connect_timeout": 2}

    monkeypatch.setattr(django_connection, "get_connection_params", unreachable)
    with pytest.raises(DatabaseError):
        own.execute(INSERT, ["own-unreachable", "Own"])
    assert own._conn is None and len(attempts) == 1


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
