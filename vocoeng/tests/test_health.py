from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.db import connection

from vocoeng.celery import app
from vocoeng.health import DependencyDownMiddleware


@pytest.fixture
def database_down(transactional_db: None) -> Iterator[None]:
    """Point the default connection at a database that cannot be reached."""
    saved = dict(connection.settings_dict)
    connection.close()
    if hasattr(connection, "close_pool"):
        connection.close_pool()  # PostgreSQL: the pool holds live connections
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent-dir/vocoeng.sqlite3"
    else:
        connection.settings_dict["PORT"] = "1"  # nothing listens there
        options = dict(connection.settings_dict.get("OPTIONS") or {})
        if options.get("pool"):
            # Fail in 1 s instead of waiting the pool's timeout for a connection.
            options["pool"] = {**options["pool"], "timeout": 1}
            connection.settings_dict["OPTIONS"] = options
    try:
        yield
    finally:
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def broker_down(monkeypatch) -> Iterator[None]:
    """Point Celery at a port where no broker listens."""
    down = "redis://127.0.0.1:1/0"
    saved = app.conf.broker_url
    # Celery reads CELERY_BROKER_URL from the environment before its config.
    monkeypatch.setenv("CELERY_BROKER_URL", down)
    app.conf.broker_url = down
    try:
        yield
    finally:
        app.conf.broker_url = saved


def test_health_is_ok_without_touching_anything(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_and_broker_ok(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_names_the_database_when_it_is_down(client, database_down) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "failing"
    assert body["checks"]["broker"] == "ok", body
    assert "OperationalError" in body["errors"]["database"]


@pytest.mark.django_db
def test_readyz_names_the_broker_when_it_is_down(client, broker_down) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "broker": "failing"}
    assert "broker" in body["errors"]


def test_health_rejects_post(client) -> None:
    assert client.post("/health").status_code == 405


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/webhooks/api/", {"user_id": "u", "message": "hi"}),
        ("post", "/api/v1/runs/", {"idea": "x"}),
        ("post", "/process", {"user_id": "u", "message": "hi"}),
        ("post", "/api/v1/analytics/events/", {"events": []}),
        ("get", "/api/v1/conversations/", None),
    ],
)
def test_database_down_is_503_with_retry_after_not_500(
    client, database_down, method, path, body
) -> None:
    send = getattr(client, method)
    extra = {"HTTP_AUTHORIZATION": "Token voc_abcdef_secret"}
    if body is None:
        response = send(path, **extra)
    else:
        response = send(path, json.dumps(body), "application/json", **extra)
    assert response.status_code == 503
    assert response.json() == {"error": "temporarily unavailable (database), retry"}
    assert int(response["Retry-After"]) > 0


def test_a_bug_is_not_mistaken_for_a_dependency_down(rf) -> None:
    from django.db import IntegrityError
    from kombu.exceptions import OperationalError as BrokerError

    middleware = DependencyDownMiddleware(lambda request: None)
    request = rf.get("/x")
    assert middleware.process_exception(request, IntegrityError("dup")) is None
    assert middleware.process_exception(request, ValueError("bug")) is None
    broker = middleware.process_exception(request, BrokerError("refused"))
    assert broker.status_code == 503
    assert json.loads(broker.content) == {
        "error": "temporarily unavailable (broker), retry"
    }


def test_a_transient_pubsub_failure_is_a_dependency_down_a_permanent_one_is_not(
    rf,
) -> None:
    from vocoeng.health import dependency_down
    from vocoeng.pubsub import PubSubError

    assert dependency_down(PubSubError("unreachable", transient=True)) == "pubsub"
    assert dependency_down(PubSubError("no such topic", transient=False)) is None
    response = DependencyDownMiddleware(lambda request: None).process_exception(
        rf.post("/x"), PubSubError("deadline exceeded", transient=True)
    )
    assert response.status_code == 503
    assert json.loads(response.content) == {
        "error": "temporarily unavailable (pubsub), retry"
    }
