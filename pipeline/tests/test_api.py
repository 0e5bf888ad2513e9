"""Runs API over HTTP with API keys: start, filter, read, cancel, tenant scope."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from pipeline import services
from pipeline.models import Run
from vocoeng.models import Tenant
from vocoeng.services import api_key_create

pytestmark = pytest.mark.django_db


def _client(slug: str) -> APIClient:
    tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults={"name": slug})
    _, plaintext = api_key_create(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {plaintext}")
    return client


def test_post_starts_a_run_and_the_same_key_returns_it() -> None:
    client = _client("acme")
    body = {"idea": "Pet drones", "personas": ["Optimist", "skeptic"]}
    first = client.post(
        "/api/v1/runs/", {**body, "idempotency_key": "k1"}, format="json"
    )
    assert first.status_code == 201, first.content
    run = first.json()
    assert run["status"] == "queued"
    assert run["tenant"] == "acme"
    assert [s["name"] for s in run["steps"]] == [
        "expand",
        "review:optimist",
        "review:skeptic",
        "aggregate",
    ]
    assert run["progress"] == {"finished": 0, "total": 4, "percent": 0}
    again = client.post(
        "/api/v1/runs/", {**body, "idempotency_key": "k1"}, format="json"
    )
    assert again.status_code == 200
    assert again.json()["id"] == run["id"]
    assert Run.objects.count() == 1


def test_default_personas_apply_when_none_are_given(settings) -> None:
    settings.PIPELINE_DEFAULT_PERSONAS = ["a", "b"]
    response = _client("acme").post("/api/v1/runs/", {"idea": "x"}, format="json")
    assert response.status_code == 201
    assert response.json()["input"]["personas"] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "idea"),
        ({"idea": 42}, "idea"),
        ({"idea": "x", "personas": []}, "personas"),
        ({"idea": "x", "personas": ["a", "a"]}, "personas"),
        ({"idea": "x", "personas": ["bad name!"]}, "personas"),
        ({"idea": "x", "idempotency_key": ["k"]}, "idempotency_key"),
    ],
)
def test_bad_input_is_a_clear_400_and_stores_nothing(body, field) -> None:
    response = _client("acme").post("/api/v1/runs/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Run.objects.exists()


def test_list_filters_by_status_and_idempotency_key() -> None:
    client = _client("acme")
    tenant = Tenant.objects.get(slug="acme")
    a, _ = services.run_create(tenant=tenant, idea="a", idempotency_key="ka")
    b, _ = services.run_create(tenant=tenant, idea="b", idempotency_key="kb")
    services.run_cancel(run=b)
    cancelled = client.get("/api/v1/runs/?status=cancelled").json()["results"]
    assert [r["id"] for r in cancelled] == [str(b.pk)]
    by_key = client.get("/api/v1/runs/?idempotency_key=ka").json()["results"]
    assert [r["id"] for r in by_key] == [str(a.pk)]
    bad = client.get("/api/v1/runs/?status=nope")
    assert bad.status_code == 400
    assert "status" in bad.json()


def test_cancel_stops_a_queued_run_once() -> None:
    client = _client("acme")
    run_id = client.post("/api/v1/runs/", {"idea": "x"}, format="json").json()["id"]
    response = client.post(f"/api/v1/runs/{run_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert {s["status"] for s in response.json()["steps"]} == {"skipped"}
    assert client.post(f"/api/v1/runs/{run_id}/cancel/").status_code == 200
    run = Run.objects.get(pk=run_id)
    Run.objects.filter(pk=run.pk).update(status="succeeded")
    conflict = client.post(f"/api/v1/runs/{run_id}/cancel/")
    assert conflict.status_code == 409
    assert conflict.json()["status"] == "succeeded"


def test_a_key_never_sees_another_tenants_run() -> None:
    mine, theirs = _client("acme"), _client("globex")
    run_id = theirs.post(
        "/api/v1/runs/", {"idea": "secret", "idempotency_key": "g1"}, format="json"
    ).json()["id"]
    assert mine.get(f"/api/v1/runs/{run_id}/").status_code == 404
    assert mine.post(f"/api/v1/runs/{run_id}/cancel/").status_code == 404
    assert mine.get("/api/v1/runs/").json()["results"] == []
    assert mine.get("/api/v1/runs/?idempotency_key=g1").json()["results"] == []
    reused = mine.post(
        "/api/v1/runs/", {"idea": "mine", "idempotency_key": "g1"}, format="json"
    )
    assert reused.status_code == 409
    assert "secret" not in reused.content.decode()
    assert theirs.get(f"/api/v1/runs/{run_id}/").status_code == 200
    assert mine.get("/api/v1/runs/not-a-uuid/").status_code == 404


def test_staff_see_every_run_in_the_browsable_api() -> None:
    tenant = Tenant.objects.create(slug="t1", name="t1")
    run, _ = services.run_create(tenant=tenant, idea="x")
    staff = User.objects.create_user("s", password="pw-long-enough", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    root = client.get("/api/v1/", HTTP_ACCEPT="text/html")
    assert b"/api/v1/runs/" in root.content
    page = client.get(f"/api/v1/runs/{run.pk}/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert str(run.pk).encode() in page.content


def test_admin_lists_runs_and_reruns_a_failed_one_from_its_failed_steps() -> None:
    tenant = Tenant.objects.create(slug="t2", name="t2")
    run, _ = services.run_create(tenant=tenant, idea="x", personas=["a", "b"])
    run.steps.filter(name="expand").update(status="succeeded", output={"t": 1})
    run.steps.filter(name="review:a").update(status="succeeded", output={})
    run.steps.filter(name="review:b").update(status="failed", error="boom")
    Run.objects.filter(pk=run.pk).update(status="failed")
    admin_user = User.objects.create_superuser("root", "r@x.io", "pw-long-enough")
    client = APIClient()
    client.force_login(admin_user)
    listing = client.get("/admin/pipeline/run/?status__exact=failed")
    assert listing.status_code == 200
    assert b"3/4 (75%)" in listing.content  # failed counts as finished
    assert client.get(f"/admin/pipeline/run/{run.pk}/change/").status_code == 200
    response = client.post(
        "/admin/pipeline/run/",
        {"action": "rerun_from_failed_steps", "_selected_action": [str(run.pk)]},
    )
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "queued" and run.attempts == 2
    states = dict(run.steps.values_list("name", "status"))
    assert states == {
        "expand": "succeeded",
        "review:a": "succeeded",
        "review:b": "pending",
        "aggregate": "pending",
    }


@pytest.mark.django_db(transaction=True)
def test_broker_down_is_503_with_nothing_kept_and_a_retry_starts_the_run(
    monkeypatch,
) -> None:
    from kombu import Producer
    from kombu.exceptions import OperationalError

    from conftest import purge_queues
    from webhooks.tests.conftest import broker_queue_size

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis. Connection refused.")

    client = _client("acme")
    body = {"idea": "Pet drones", "personas": ["skeptic"], "idempotency_key": "k-down"}
    purge_queues()
    try:
        with pytest.MonkeyPatch.context() as outage:
            outage.setattr(Producer, "publish", refuse)
            down = client.post("/api/v1/runs/", body, format="json")
        assert down.status_code == 503
        assert "retry" in down.json()["error"]
        assert down["Retry-After"]
        assert not Run.objects.exists()  # no run that nothing would ever execute
        assert broker_queue_size("ai") == 0
        again = client.post("/api/v1/runs/", body, format="json")
        assert again.status_code == 201, again.content
        assert Run.objects.get().idempotency_key == "k-down"
        assert broker_queue_size("ai") == 1  # the run's canvas: expand first
    finally:
        purge_queues()
