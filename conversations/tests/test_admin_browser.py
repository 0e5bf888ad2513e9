"""The conversations admin in a real headless chromium (Playwright)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conversations.models import Message
from conversations.services import message_receive, reply_process_sync
from vocoeng.services import tenant_get_default
from vocoeng.testing.browser import changelist_from_index, expect_no_add_row

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_conversation_list_and_its_messages(admin_browser, fake_ai) -> None:
    tenant = tenant_get_default()
    inbound, _ = message_receive(
        tenant=tenant,
        channel="api",
        user_id="15550001111",
        text="Where is my order 4471?",
        external_id="ext-browser-1",
    )
    reply = reply_process_sync(message=inbound)
    assert reply is not None and reply.content
    message_receive(
        tenant=tenant,
        channel="api",
        user_id="15550002222",
        text="Another customer",
        external_id="ext-browser-2",
    )
    conversation = inbound.conversation

    def steps(page: Page) -> None:
        rows = changelist_from_index(page, app="conversations", model="conversation")
        expect(rows).to_have_count(2)
        row = rows.filter(has_text="15550001111")
        expect(row).to_contain_text("api")
        expect(row.locator("td.field-message_count")).to_have_text("2")
        admin_browser.screenshot(page, "conversations")
        row.locator("th a").click()
        expect(page).to_have_url(
            re.compile(rf"/admin/conversations/conversation/{conversation.pk}/change/")
        )
        messages = page.locator("#messages-group tbody tr.has_original")
        expect(messages).to_have_count(2)
        expect(messages.nth(0).locator("td.field-role")).to_have_text("User")
        expect(messages.nth(0).locator("td.field-content")).to_have_text(
            "Where is my order 4471?"
        )
        expect(messages.nth(1).locator("td.field-role")).to_have_text("Assistant")
        expect(messages.nth(1).locator("td.field-content")).to_have_text(reply.content)
        expect(messages.nth(1).locator("td.field-model")).to_have_text("gpt-4o-mini")
        # Messages are the channels' record: no blank row to add one by hand.
        expect_no_add_row(page, inline="messages")
        admin_browser.screenshot(page, "conversation")

    admin_browser.run(steps)
    assert Message.objects.filter(conversation=conversation).count() == 2


def test_ai_spend_screen_and_tenant_spend_match_the_ledger(
    admin_browser, fake_ai
) -> None:
    from decimal import Decimal

    from django.db.models import Sum
    from django.utils import timezone

    from conversations.models import AICall

    tenant = tenant_get_default()
    tenant.monthly_budget = Decimal("5.00")
    tenant.save(update_fields=["monthly_budget"])
    fake_ai.enqueue_fault("500")  # the first attempt fails, its retry answers
    for n in range(2):
        inbound, _ = message_receive(
            tenant=tenant,
            channel="api",
            user_id=f"spender-{n}",
            text=f"question {n}",
            external_id=f"spend-{n}",
        )
        assert reply_process_sync(message=inbound) is not None
    calls = AICall.objects.filter(tenant=tenant)
    assert calls.count() == 3 and calls.filter(status="failed").count() == 1
    ledger = calls.aggregate(cost=Sum("cost"), tokens=Sum("total_tokens"))
    assert ledger["cost"] > 0

    def steps(page: Page) -> None:
        calls = changelist_from_index(page, app="conversations", model="aicall")
        expect(calls).to_have_count(3)
        page.get_by_role("link", name="Spend per tenant and month").click()
        rows = page.locator("table#spend tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first.locator("td")).to_have_text(
            [
                timezone.now().strftime("%Y-%m"),
                "default",
                "gpt-4o-mini",
                "3",
                "1",
                str(ledger["tokens"]),
                f"{ledger['cost']:.6f}",
                "5.00",
            ]
        )
        admin_browser.screenshot(page, "spend")
        page.goto(f"/admin/vocoeng/tenant/{tenant.pk}/change/")
        expect(page.locator(".field-spend_this_month .readonly")).to_have_text(
            f"{ledger['cost']:.6f}"
        )
        admin_browser.screenshot(page, "tenant")

    admin_browser.run(steps)
