"""The admin login form and the DRF browsable API, in a real headless chromium."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conversations.services import message_receive
from vocoeng.services import tenant_get_default

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_admin_login_form_refuses_a_wrong_password_then_logs_in(
    browser_page, django_user_model
) -> None:
    django_user_model.objects.create_user("ops", password="right-pw", is_staff=True)
    django_user_model.objects.create_user("visitor", password="pw")

    def steps(page: Page) -> None:
        page.goto("/admin/")
        expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
        page.fill("#id_username", "ops")
        page.fill("#id_password", "wrong-pw")
        page.click("#login-form [type=submit]")
        expect(page.locator(".errornote")).to_contain_text(
            "Please enter the correct username and password"
        )
        browser_page.screenshot(page, "login-refused")
        # A user that is not staff is refused by the same form.
        page.fill("#id_username", "visitor")
        page.fill("#id_password", "pw")
        page.click("#login-form [type=submit]")
        expect(page.locator(".errornote")).to_be_visible()
        page.fill("#id_username", "ops")
        page.fill("#id_password", "right-pw")
        page.click("#login-form [type=submit]")
        expect(page).to_have_url(re.compile(r"/admin/$"))
        expect(page.locator("#user-tools")).to_contain_text("ops")
        browser_page.screenshot(page, "admin-index")

    browser_page.run(steps)


def test_browsable_api_root_lists_the_endpoints_for_a_logged_in_user(
    admin_browser,
) -> None:
    tenant = tenant_get_default()
    message_receive(
        tenant=tenant,
        channel="api",
        user_id="api-root-user",
        text="hi",
        external_id=None,
    )
    endpoints = [
        "conversations",
        "messages",
        "runs",
        "analytics/events",
        "analytics/summary",
    ]

    def steps(page: Page) -> list[str]:
        page.goto("/api/v1/")
        expect(page.locator("h1")).to_have_text("Api Root")
        expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")
        for name in endpoints:
            link = page.locator(f'.response-info a[href$="/api/v1/{name}/"]')
            expect(link).to_have_count(1)
        hrefs = [
            a.get_attribute("href") or ""
            for a in page.locator(".response-info a").all()
        ]
        admin_browser.screenshot(page, "api-root")
        # Follow one link: the session works on the listed endpoints too.
        page.locator('.response-info a[href$="/api/v1/conversations/"]').click()
        expect(page.locator("h1")).to_have_text("Conversation List")
        expect(page.locator(".response-info")).to_contain_text("api-root-user")
        admin_browser.screenshot(page, "api-conversations")
        return hrefs

    links = admin_browser.run(steps)
    assert {link.rsplit("/api/v1/", 1)[-1] for link in links} >= {
        f"{name}/" for name in endpoints
    }


def test_browsable_api_refuses_an_anonymous_visitor(browser_page) -> None:
    def steps(page: Page) -> None:
        response = page.goto("/api/v1/")
        assert response is not None and response.status in (401, 403)
        expect(page.locator(".response-info")).to_contain_text(
            "Authentication credentials were not provided."
        )
        browser_page.screenshot(page, "api-anonymous")

    browser_page.run(steps)
