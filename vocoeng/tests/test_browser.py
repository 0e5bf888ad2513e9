"""The admin login form and the DRF browsable API, in a real headless chromium."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conversations.services import message_receive
from vocoeng.services import tenant_get_default
from vocoeng.testing.browser import expect_no_add_row, login_form_submit

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_admin_login_form_refuses_a_wrong_password_then_logs_in(
    browser_page, django_user_model
) -> None:
    django_user_model.objects.create_user("ops", password="right-pw", is_staff=True)
    django_user_model.objects.create_user("visitor", password="pw")

    def steps(page: Page) -> None:
        page.goto("/admin/")
        expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
        login_form_submit(page, username="ops", password="wrong-pw")
        expect(page.locator(".errornote")).to_contain_text(
            "Please enter the correct username and password"
        )
        browser_page.screenshot(page, "login-refused")
        # A user that is not staff is refused by the same form.
        login_form_submit(page, username="visitor", password="pw")
        expect(page.locator(".errornote")).to_be_visible()
        login_form_submit(page, username="ops", password="right-pw")
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


def test_channel_secrets_are_typed_once_and_never_sent_back(admin_browser) -> None:
    from django.db import connection

    from vocoeng.models import Channel, Tenant

    tenant = Tenant.objects.create(slug="acme", name="Acme")
    token, app_secret = "EAAG-browser-live-token", "browser-app-secret-123"

    def add(page: Page) -> None:
        page.goto("/admin/vocoeng/channel/add/")
        page.select_option("#id_tenant", str(tenant.pk))
        page.fill("#id_name", "Support line")
        page.select_option("#id_kind", "whatsapp")
        page.fill("#id_phone_number_id", "555000111")
        page.fill("#id_access_token", token)
        page.fill("#id_app_secret", app_secret)
        page.fill("#id_system_prompt", "Be brief.")
        page.fill("#id_providers", '["openai"]')
        page.fill("#id_rate_limit", "10/min")
        page.click("input[name=_save]")
        expect(page.locator("ul.messagelist li.success")).to_contain_text(
            "was added successfully"
        )
        admin_browser.screenshot(page, "channel-added")

    admin_browser.run(add)
    channel = Channel.objects.get()
    assert (channel.access_token, channel.app_secret) == (token, app_secret)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT access_token FROM {Channel._meta.db_table}"  # noqa: S608
        )
        (stored,) = cursor.fetchone()
    assert token not in stored  # encrypted at rest

    def change(page: Page) -> str:
        page.goto(f"/admin/vocoeng/channel/{channel.pk}/change/")
        for field in ("access_token", "app_secret"):
            box = page.locator(f"#id_{field}")
            expect(box).to_have_attribute("type", "password")
            expect(box).to_have_value("")
            expect(page.locator(f".field-{field} .help")).to_contain_text(
                "A value is stored"
            )
        html = page.content()
        admin_browser.screenshot(page, "channel")
        # Saved with the secret boxes left empty: the stored secrets stay.
        page.fill("#id_name", "Support line (EU)")
        page.click("input[name=_continue]")
        expect(page.locator("ul.messagelist li.success")).to_be_visible()
        page.check("#id_access_token__clear")
        page.click("input[name=_save]")
        expect(page.locator("ul.messagelist li.success")).to_be_visible()
        return html

    html = admin_browser.run(change)
    assert token not in html and app_secret not in html
    channel.refresh_from_db()
    assert channel.name == "Support line (EU)"
    assert (channel.access_token, channel.app_secret) == ("", app_secret)

    def tenant_page(page: Page) -> None:
        page.goto(f"/admin/vocoeng/tenant/{tenant.pk}/change/")
        channels = page.locator("#channels-group tbody tr.has_original")
        expect(channels).to_have_count(1)
        expect(channels.first.locator("td.field-name")).to_have_text(
            "Support line (EU)"
        )
        # API keys come from create_api_key (the secret is printed once): the
        # tenant page offers no blank key row.
        expect_no_add_row(page, inline="api_keys")
        admin_browser.screenshot(page, "tenant")

    admin_browser.run(tenant_page)
