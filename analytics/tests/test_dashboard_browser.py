"""The VOC dashboard's charts, rendered in a real headless chromium."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect

from analytics.services import events_store, events_validate

from .conftest import make_event

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_dashboard_draws_both_charts_with_the_seeded_points(
    admin_browser, tenant_a, tenant_b
) -> None:
    today = datetime.now(UTC)
    yesterday = today - timedelta(days=1)
    events = [
        make_event("call", transcript="great service, thank you"),
        make_event("call", transcript="the agent was wonderful"),
        make_event("call", tenant="globex", transcript="awful, I am angry"),
        make_event("qos_metric"),
        make_event(
            "call", timestamp=yesterday.isoformat(), transcript="good and helpful"
        ),
        make_event(
            "call",
            tenant="globex",
            timestamp=yesterday.isoformat(),
            transcript="terrible",
        ),
    ]
    valid, rejected = events_validate(events=events)
    assert not rejected
    events_store(events=valid)
    day, day_before = today.date().isoformat(), yesterday.date().isoformat()

    def steps(page: Page) -> dict[str, list[str]]:
        page.goto("/admin/analytics/vocevent/")
        page.get_by_role("link", name="Dashboard").click()
        expect(page).to_have_url(re.compile(r"/admin/analytics/vocevent/dashboard/$"))
        charts = page.locator("#content-main svg[role=img]")
        expect(charts).to_have_count(2)
        for i in range(2):
            expect(charts.nth(i)).to_be_visible()
            box = charts.nth(i).bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
        volume, sentiment = charts.nth(0), charts.nth(1)
        expect(volume.locator(":scope > title")).to_have_text("Events per type per day")
        bars = volume.locator("rect:has(title)")
        for i in range(bars.count()):
            box = bars.nth(i).bounding_box()
            assert box is not None and box["height"] > 0 and box["width"] > 0
        points = sentiment.locator("circle")
        for i in range(points.count()):
            assert points.nth(i).is_visible()
        # One line per tenant with points on both days.
        expect(sentiment.locator("polyline")).to_have_count(2)
        admin_browser.screenshot(page, "dashboard")
        return {
            "axis": volume.locator("text[text-anchor=middle]").all_text_contents(),
            "bars": [t.text_content() or "" for t in bars.locator("title").all()],
            "points": [t.text_content() or "" for t in points.locator("title").all()],
            "legend": sentiment.locator("text").all_text_contents(),
        }

    drawn = admin_browser.run(steps)
    assert sorted(drawn["bars"]) == sorted(
        [
            f"{day} call: 3",
            f"{day} qos_metric: 1",
            f"{day_before} call: 2",
        ]
    )
    tenants_by_point = sorted(p.split(" ")[1].rstrip(":") for p in drawn["points"])
    assert tenants_by_point == ["acme", "acme", "globex", "globex"]
    acme_today = next(p for p in drawn["points"] if p.startswith(f"{day} acme"))
    globex_today = next(p for p in drawn["points"] if p.startswith(f"{day} globex"))
    assert (
        float(acme_today.rsplit(" ", 1)[1]) > 0 > float(globex_today.rsplit(" ", 1)[1])
    )
    assert {"acme", "globex"} <= set(drawn["legend"])
    # 14 days labelled every other day, ending on today's bar.
    assert len(drawn["axis"]) == 7
    assert drawn["axis"][-1] == day[5:]
