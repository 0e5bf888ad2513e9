"""The webhook deliveries admin and its replay action, in a real headless chromium."""

from __future__ import annotations

import json
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from conversations.models import Message
from vocoeng.testing.browser import admin_action, changelist_from_index
from webhooks.models import WebhookDelivery
from webhooks.services import delivery_fail
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/webhooks/webhookdelivery/"


def failed_delivery(body: object, *, error: str) -> WebhookDelivery:
    """Record a delivery the way the webhook does when our side fails."""
    delivery = WebhookDelivery(
        source=WebhookDelivery.Source.WHATSAPP,
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
        received_at=timezone.now(),
    )
    delivery_fail(delivery=delivery, error=error)
    return delivery


def test_replay_action_processes_failed_deliveries_and_reports_each(
    admin_browser, queued
) -> None:
    good = failed_delivery(
        p.notification([p.text("15557770000", "replay me in the browser")]),
        error="OperationalError: could not connect to server",
    )
    # Stored by an older release; today's parser refuses it.
    stale = failed_delivery({"object": "page"}, error="ConnectionError: broker down")
    forged = WebhookDelivery.objects.create(
        source=WebhookDelivery.Source.WHATSAPP,
        body=json.dumps(p.notification([p.text("15550000000", "forged")])),
        verdict=WebhookDelivery.Verdict.UNAUTHORIZED,
        error="bad signature",
    )
    untouched = failed_delivery(
        p.notification([p.text("15551112222", "not selected")]),
        error="OperationalError: could not connect to server",
    )

    def steps(page: Page) -> None:
        rows = changelist_from_index(page, app="webhooks", model="webhookdelivery")
        expect(rows).to_have_count(4)
        expect(rows.filter(has_text="Failed")).to_have_count(3)
        admin_browser.screenshot(page, "deliveries")
        admin_action(page, action="replay", pks=[good.pk, stale.pk, forged.pk])
        expect(page).to_have_url(re.compile(rf"{CHANGELIST}$"))
        notes = page.locator("ul.messagelist li")
        expect(notes.filter(has_text="Replayed 1 deliveries")).to_have_text(
            "Replayed 1 deliveries (1 rejected, 0 failed)."
        )
        expect(page.locator("ul.messagelist li.warning")).to_have_text(
            [
                f"Delivery {stale.pk}: object is 'page', not "
                "'whatsapp_business_account'",
                "Skipped 1 unauthorized deliveries (never verified).",
            ]
        )
        # The list shows the new verdicts and replay counts.
        good_row = rows.filter(has=page.locator(f'input[value="{good.pk}"]'))
        expect(good_row.locator("td.field-verdict")).to_have_text("Processed")
        expect(good_row.locator("td.field-replays")).to_have_text("1")
        admin_browser.screenshot(page, "deliveries-replayed")

    admin_browser.run(steps)

    good.refresh_from_db()
    assert (good.verdict, good.replays, good.error) == ("processed", 1, "")
    inbound = Message.objects.get(external_id__isnull=False, content__contains="replay")
    assert inbound.content == "replay me in the browser"
    assert inbound.conversation.external_user_id == "15557770000"
    assert queued() == 1  # one reply chain for the one message
    stale.refresh_from_db()
    assert stale.verdict == "rejected"
    assert "object is 'page'" in stale.error
    forged.refresh_from_db()
    untouched.refresh_from_db()
    assert (forged.verdict, forged.replays) == ("unauthorized", 0)
    assert (untouched.verdict, untouched.replays) == ("failed", 0)
    assert not Message.objects.filter(content__in=["forged", "not selected"]).exists()


def test_replay_while_the_broker_is_down_shows_an_error_and_records_it(
    admin_browser, queued, monkeypatch
) -> None:
    from vocoeng.celery import app

    delivery = failed_delivery(
        p.notification([p.text("15553334444", "broker still down")]),
        error="ConnectionError: broker down",
    )

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down again")

    # The broker cannot be stopped from here without stopping everyone's: no
    # producer to publish with (apply_async's and publish_batch's callers
    # borrow one from the app's pool).
    monkeypatch.setattr(app, "producer_or_acquire", broker_down)

    def steps(page: Page) -> None:
        page.goto(CHANGELIST)
        admin_action(page, action="replay", pks=[delivery.pk])
        expect(page).to_have_url(re.compile(rf"{CHANGELIST}$"))
        expect(page.locator("ul.messagelist li.error")).to_have_text(
            f"Delivery {delivery.pk} failed: ConnectionError: broker down again"
        )
        expect(page.locator("ul.messagelist li.info")).to_have_text(
            "Replayed 0 deliveries (0 rejected, 1 failed)."
        )
        row = page.locator("#result_list tbody tr")
        expect(row.locator("td.field-verdict")).to_have_text("Failed")
        admin_browser.screenshot(page, "replay-failed")

    admin_browser.run(steps)
    monkeypatch.undo()
    delivery.refresh_from_db()
    assert delivery.verdict == "failed"
    assert delivery.error == "ConnectionError: broker down again"
    assert delivery.replays == 1
    assert queued() == 0


def test_dead_letter_replay_enqueues_the_fixed_one_and_reports_the_other(
    admin_browser, queued
) -> None:
    from vocoeng.deadletters import dead_letter_record
    from vocoeng.models import DeadLetter, Tenant

    subscription = "projects/vocoeng-test/subscriptions/vocoeng-messages"
    chat = {
        "source": "api",
        "user_id": "dl-user-1",
        "message": "hello from the bridge",
        "message_id": "dl-msg-1",
    }
    # Dead-lettered while tenant "acme" did not exist yet.
    fixable = dead_letter_record(
        source="bridge",
        subscription=subscription,
        message_id="4021458311337",
        kind="chat_message",
        data=json.dumps(chat).encode(),
        attributes={"kind": "chat_message", "tenant": "acme"},
        reason="unknown tenant 'acme'",
    )
    broken = dead_letter_record(
        source="bridge",
        subscription=subscription,
        message_id="4021458311338",
        kind="chat_message",
        data=b'{"source": "api", "user_id"',
        attributes={"kind": "chat_message"},
        reason="data is not JSON",
    )
    Tenant.objects.create(slug="acme", name="Acme")  # the operator's fix

    def steps(page: Page) -> None:
        rows = changelist_from_index(page, app="vocoeng", model="deadletter")
        expect(rows).to_have_count(2)
        rows.filter(has_text="4021458311337").locator("th a").click()
        expect(page.locator(".field-data_preview .readonly")).to_contain_text(
            "hello from the bridge"
        )
        expect(page.locator(".field-reason .readonly")).to_have_text(
            "unknown tenant 'acme'"
        )
        admin_browser.screenshot(page, "dead-letter")
        page.go_back()
        admin_action(page, action="replay", pks=[fixable.pk, broken.pk])
        expect(page.locator("ul.messagelist li.info")).to_have_text(
            "4021458311337: enqueued"
        )
        expect(page.locator("ul.messagelist li.error")).to_contain_text(
            "4021458311338: still fails:"
        )
        admin_browser.screenshot(page, "dead-letters-replayed")

    admin_browser.run(steps)

    fixable.refresh_from_db()
    broken.refresh_from_db()
    assert fixable.replayed_at is not None
    assert broken.replayed_at is None
    stored = Message.objects.get(external_id="dl-msg-1")
    assert stored.content == "hello from the bridge"
    assert stored.conversation.tenant.slug == "acme"
    assert queued() == 1
    assert DeadLetter.objects.count() == 2  # kept as the record of what happened
