"""Ingest through the API (tasks run eagerly here) and through the bus route."""

from __future__ import annotations

import pytest
from celery import group
from django.db import connection
from django.urls import reverse

from analytics.models import VocEvent
from analytics.routes import voc_event
from analytics.services import events_store, events_validate
from vocoeng.routing import PermanentMessageError
from vocoeng.testing.overlap import transactions_at_once

from .conftest import make_event

URL = "/api/v1/analytics/events/"


def test_mixed_batch_keeps_the_good_events(client_a, eager_celery) -> None:
    good = [make_event(t) for t in ("call", "agent_action", "qos_metric")]
    bad_type = make_event("fax")
    bad_value = make_event("qos_metric", value="high")
    events = [good[0], bad_type, good[1], bad_value, good[2]]
    response = client_a.post(URL, {"events": events}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["accepted"] == 3
    assert body["rejected"] == 2
    assert [(e["index"], e["event_id"]) for e in body["errors"]] == [
        (1, bad_type["event_id"]),
        (3, bad_value["event_id"]),
    ]
    assert body["errors"][0]["reason"].startswith("event_type:")
    assert body["errors"][1]["reason"] == "value: must be a number"
    stored = set(VocEvent.objects.values_list("event_id", flat=True))
    assert {str(e) for e in stored} == {e["event_id"] for e in good}


def test_events_are_annotated_and_qos_denormalised(client_a, eager_celery) -> None:
    call = make_event("call", transcript="Terrible service, I was charged twice!")
    qos = make_event("qos_metric", metric="jitter_ms", value=12.5)
    client_a.post(URL, {"events": [call, qos]}, format="json")
    row = VocEvent.objects.get(event_id=call["event_id"])
    assert row.sentiment < -0.3
    assert row.topic == "billing"
    assert row.payload["transcript"] == call["transcript"]
    assert row.processed_at is not None
    qrow = VocEvent.objects.get(event_id=qos["event_id"])
    assert (qrow.metric, qrow.value, qrow.sentiment) == ("jitter_ms", 12.5, None)


def test_batch_is_split_into_chunks_of_batch_size(
    client_a, eager_celery, settings
) -> None:
    settings.VOC_BATCH_SIZE = 2
    events = [make_event("tool_invocation") for _ in range(5)]
    response = client_a.post(URL, {"events": events}, format="json")
    assert response.json()["accepted"] == 5
    assert VocEvent.objects.count() == 5


@pytest.mark.parametrize(
    "body",
    [{"events": []}, {"events": "x"}, {}, [make_event()]],
    ids=["empty", "not-a-list", "missing", "bare-list"],
)
def test_malformed_body_is_400(client_a, body) -> None:
    response = client_a.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]
    assert VocEvent.objects.count() == 0


def test_batch_over_max_is_400_and_keeps_nothing(
    client_a, eager_celery, settings
) -> None:
    settings.VOC_MAX_BATCH = 3
    events = [make_event() for _ in range(4)]
    response = client_a.post(URL, {"events": events}, format="json")
    assert response.status_code == 400
    assert "at most 3 events" in response.content.decode()
    assert VocEvent.objects.count() == 0


def test_event_naming_another_tenant_is_rejected(
    client_a, tenant_b, eager_celery
) -> None:
    mine = make_event(tenant="acme")
    theirs = make_event(tenant="globex")
    response = client_a.post(URL, {"events": [mine, theirs]}, format="json")
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["reason"] == "tenant_id 'globex' is not your tenant"
    assert not VocEvent.objects.filter(tenant=tenant_b).exists()


def test_anonymous_caller_is_refused(db) -> None:
    from rest_framework.test import APIClient

    response = APIClient().post(URL, {"events": [make_event()]}, format="json")
    assert response.status_code in (401, 403)


def test_store_twice_inserts_once(tenant_a) -> None:
    valid, errors = events_validate(events=[make_event() for _ in range(10)])
    assert errors == []
    events_store(events=valid)
    events_store(events=valid)
    assert VocEvent.objects.count() == 10


def test_route_accepts_one_event(tenant_a, eager_celery) -> None:
    event = make_event("agent_action")
    signature = voc_event(data=event, attributes={})
    signature.apply_async()
    assert VocEvent.objects.filter(event_id=event["event_id"]).exists()


def test_route_keeps_valid_events_of_a_list(tenant_a, eager_celery, settings) -> None:
    settings.VOC_BATCH_SIZE = 2
    events = [make_event() for _ in range(3)] + [make_event(duration_s=-5)]
    signature = voc_event(data=events, attributes={})
    assert isinstance(signature, group)
    signature.apply_async()
    assert VocEvent.objects.count() == 3


def test_route_rejects_unknown_tenant(tenant_a) -> None:
    with pytest.raises(PermanentMessageError) as info:
        voc_event(data=make_event(tenant="nobody"), attributes={})
    assert "unknown tenant" in info.value.reason


def test_route_rejects_message_without_valid_event(tenant_a) -> None:
    with pytest.raises(PermanentMessageError) as info:
        voc_event(data=[make_event(channel=None), "junk"], attributes={})
    assert "[0] channel: required" in info.value.reason
    assert "[1] event must be a JSON object" in info.value.reason
    with pytest.raises(PermanentMessageError, match="no events"):
        voc_event(data=[], attributes={})


def test_events_endpoint_is_listed_in_the_api_root(client_a) -> None:
    root = client_a.get(reverse("api-root")).json()
    assert root["analytics/events"].endswith(URL)
    assert root["analytics/summary"].endswith("/api/v1/analytics/summary/")


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite locks the whole database per write: no row-lock order there",
)
@pytest.mark.django_db(transaction=True)
def test_two_batches_of_the_same_events_in_other_orders_do_not_deadlock() -> None:
    """A resent batch, in another order, stored while the first is: both commit."""
    from vocoeng.models import Tenant

    Tenant.objects.create(slug="acme", name="Acme")
    valid, errors = events_validate(events=[make_event() for _ in range(4000)])
    assert errors == []
    failures = transactions_at_once(
        lambda events: events_store(events=events), [valid, valid[::-1]]
    )
    assert failures == []
    assert VocEvent.objects.count() == 4000
