"""The tenant-scoped summary and event reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from analytics.services import events_store, events_validate

from .conftest import make_event

SUMMARY = "/api/v1/analytics/summary/"
EVENTS = "/api/v1/analytics/events/"


def store(events: list[dict]) -> None:
    valid, errors = events_validate(events=events)
    assert errors == []
    events_store(events=valid)


def ago(days: int, hours: int = 0) -> str:
    return (datetime.now(UTC) - timedelta(days=days, hours=hours)).isoformat()


@pytest.fixture
def dataset(tenant_a, tenant_b) -> dict:
    """Store a known mix for acme and a decoy for globex."""
    today = datetime.now(UTC).date()
    acme = [
        make_event("call", transcript="I love it, wonderful!", timestamp=ago(0)),
        make_event("call", transcript="Terrible, I hate it.", timestamp=ago(0)),
        make_event("call", transcript="", timestamp=ago(1)),
        make_event("tool_invocation", timestamp=ago(1)),
        make_event("call", transcript="Great", timestamp=ago(30)),  # outside
    ]
    acme += [
        make_event("qos_metric", metric="latency_ms", value=float(v), timestamp=ago(0))
        for v in range(1, 101)
    ]
    acme += [
        make_event("qos_metric", metric="mos", value=v, timestamp=ago(2))
        for v in (4.0, 3.0)
    ]
    globex = [
        make_event("call", tenant="globex", transcript="ok", timestamp=ago(0))
        for _ in range(7)
    ]
    store(acme + globex)
    return {"today": today, "acme": acme, "globex": globex}


def test_summary_has_the_documented_shape_and_values(client_a, dataset) -> None:
    response = client_a.get(SUMMARY, {"days": 7})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"tenant_id", "days", "by_type", "daily", "qos"}
    assert (body["tenant_id"], body["days"]) == ("acme", 7)
    calls = body["by_type"]["call"]
    assert calls["count"] == 3  # the 30-day-old call is outside the window
    # Average of the two scored calls (the empty transcript has no sentiment).
    assert -0.2 < calls["avg_sentiment"] < 0.2
    assert body["by_type"]["tool_invocation"] == {"count": 1, "avg_sentiment": None}
    assert body["by_type"]["qos_metric"]["count"] == 102
    # percentile_cont over 1..100: 50.5 and 95.05; over (3, 4): 3.5 and 3.95.
    assert body["qos"] == {
        "latency_ms": {"p50": 50.5, "p95": 95.05},
        "mos": {"p50": 3.5, "p95": 3.95},
    }
    today = dataset["today"]
    daily = {(d["date"], d["event_type"]): d for d in body["daily"]}
    assert daily[(today.isoformat(), "call")]["count"] == 2
    assert daily[(today.isoformat(), "qos_metric")]["count"] == 100
    yesterday = (today - timedelta(days=1)).isoformat()
    assert daily[(yesterday, "call")] == {
        "date": yesterday,
        "event_type": "call",
        "count": 1,
        "avg_sentiment": None,
    }
    assert [d["date"] for d in body["daily"]] == sorted(
        d["date"] for d in body["daily"]
    )


def test_summary_without_slash_is_the_same(client_a, dataset) -> None:
    assert client_a.get("/api/v1/analytics/summary").json() == (
        client_a.get(SUMMARY).json()
    )


def test_tenant_a_never_sees_tenant_b(client_a, client_b, dataset) -> None:
    a = client_a.get(SUMMARY).json()
    b = client_b.get(SUMMARY).json()
    assert b["by_type"] == {"call": {"count": 7, "avg_sentiment": 0.296}}
    assert a["by_type"]["call"]["count"] == 3
    assert client_a.get(SUMMARY, {"tenant_id": "globex"}).status_code == 404
    assert client_a.get(SUMMARY, {"tenant_id": "nobody"}).status_code == 404
    assert client_a.get(SUMMARY, {"tenant_id": "acme"}).json() == a

    listed = client_a.get(EVENTS, {"limit": 500}).json()
    ids = {e["event_id"] for e in listed["results"]}
    assert listed["count"] == len(dataset["acme"])
    assert ids == {e["event_id"] for e in dataset["acme"]}
    assert {e["tenant_id"] for e in listed["results"]} == {"acme"}
    theirs = dataset["globex"][0]["event_id"]
    assert client_a.get(f"{EVENTS}{theirs}/").status_code == 404
    assert client_b.get(f"{EVENTS}{theirs}/").json()["event_id"] == theirs
    assert client_a.get(EVENTS, {"tenant_id": "globex"}).status_code == 404


def test_bad_days_is_400(client_a, dataset) -> None:
    for days in ("0", "abc", "1000"):
        response = client_a.get(SUMMARY, {"days": days})
        assert response.status_code == 400
        assert "days" in response.json()


def test_malformed_event_id_is_404(client_a, dataset) -> None:
    assert client_a.get(f"{EVENTS}not-a-uuid/").status_code == 404


def test_staff_sees_any_tenant(dataset, db) -> None:
    staff = User.objects.create_user("boss", password="pw", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    globex = client.get(SUMMARY, {"tenant_id": "globex"}).json()
    assert globex["tenant_id"] == "globex"
    assert globex["by_type"]["call"]["count"] == 7
    everyone = client.get(SUMMARY).json()
    assert everyone["tenant_id"] is None
    assert everyone["by_type"]["call"]["count"] == 10
    assert client.get(SUMMARY, {"tenant_id": "nobody"}).status_code == 404
    assert client.get(EVENTS).json()["count"] == len(dataset["acme"]) + 7


def test_user_without_tenant_is_forbidden(dataset, db) -> None:
    user = User.objects.create_user("someone", password="pw")
    client = APIClient()
    client.force_login(user)
    assert client.get(SUMMARY).status_code == 403
    assert client.get(EVENTS).status_code == 403
