"""``GET /metrics`` and the staff-only dashboard."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from analytics.services import events_store, events_validate

from .conftest import make_event

DASHBOARD = "/admin/analytics/vocevent/dashboard/"


def scrape(client: Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_consumed_processed_rejected(client_a, eager_celery) -> None:
    web = Client()
    consumed = ("vocoeng_voc_events_consumed_total", (("source", "api"),))
    rejected = ("vocoeng_voc_events_rejected_total", (("source", "api"),))
    processed = ("vocoeng_voc_events_processed_total", ())
    batches = ("vocoeng_voc_batch_duration_seconds_count", ())
    before = scrape(web)
    events = [make_event(), make_event(), make_event(channel=None)]
    client_a.post("/api/v1/analytics/events/", {"events": events}, format="json")
    after = scrape(web)
    assert after[consumed] - before.get(consumed, 0) == 3
    assert after[rejected] - before.get(rejected, 0) == 1
    assert after[processed] - before.get(processed, 0) == 2
    assert after[batches] - before.get(batches, 0) == 1
    posts = ("vocoeng_http_requests_total", (("method", "POST"), ("status", "202")))
    assert after[posts] - before.get(posts, 0) == 1
    assert ("vocoeng_http_request_duration_seconds_count", (("method", "GET"),)) in (
        after
    )


def test_dashboard_renders_charts_for_staff(tenant_a, tenant_b) -> None:
    valid, _ = events_validate(
        events=[
            make_event("call", transcript="great service"),
            make_event("call", tenant="globex", transcript="awful"),
            make_event("qos_metric"),
        ]
    )
    events_store(events=valid)
    staff = User.objects.create_user("boss", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" role="img"') == 2
    assert "Events per type per day" in html
    assert ">acme</text>" in html and ">globex</text>" in html
    assert ">qos_metric</text>" in html
    # Nothing loaded from elsewhere (a CDN): no external script, style or image.
    # (Not a bare "cdn" substring: the page's random CSRF token may hold one.)
    for attribute in ('src="http', 'href="http', "src='http", "href='http", 'src="//'):
        assert attribute not in html, attribute
    admin_user = User.objects.create_superuser("root", password="pw")
    client.force_login(admin_user)
    changelist = client.get("/admin/analytics/vocevent/")
    assert changelist.status_code == 200
    assert DASHBOARD in changelist.content.decode()


def test_dashboard_is_staff_only(db) -> None:
    anonymous = Client().get(DASHBOARD)
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
    user = User.objects.create_user("someone", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get(DASHBOARD)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_registered_task_name_is_stable() -> None:
    from vocoeng.celery import app

    app.loader.import_default_modules()
    assert "analytics.ingest_batch" in app.tasks
