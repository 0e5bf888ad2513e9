"""The reply's SQL statements read and claim what the ORM would."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.queries import message_claim, message_for_reply
from vocoeng.models import Channel, Tenant

pytestmark = pytest.mark.django_db


def _fields(instance) -> dict:
    fields = type(instance)._meta.concrete_fields
    return {f.attname: getattr(instance, f.attname) for f in fields}


def _inbound(*, account: Channel | None) -> Message:
    tenant = Tenant.objects.create(
        slug=f"t{Tenant.objects.count()}",
        name="Acme",
        monthly_budget=Decimal("12.50"),
        over_budget_text="Back soon",
    )
    if account is not None:
        account.tenant = tenant
        account.save()
    conversation = Conversation.objects.create(
        tenant=tenant,
        account=account,
        channel="whatsapp" if account else "api",
        external_user_id="u-1",
        message_count=3,
    )
    return Message.objects.create(
        conversation=conversation,
        channel=conversation.channel,
        role=Message.Role.USER,
        content="Hello ✓",
        external_id="m-1",
        status=Message.Status.RECEIVED,
        metadata={"nested": {"a": [1, 2]}, "n": 1.5},
    )


@pytest.mark.parametrize("with_channel", [False, True])
def test_message_for_reply_reads_what_select_related_reads(with_channel) -> None:
    account = None
    if with_channel:
        account = Channel(
            name="Support line",
            kind="whatsapp",
            phone_number_id="555",
            access_token="secret-token",  # encrypted at rest, decrypted on read
            providers=["openai", "echo"],
            provider_models={"openai": "gpt-4o-mini"},
            history_length=7,
            tools=["current_time"],
        )
        account.tenant = Tenant.objects.create(slug="other", name="Other")
        account.save()
    inbound = _inbound(account=account)
    expected = Message.objects.select_related(
        "conversation__tenant", "conversation__account"
    ).get(pk=inbound.pk)

    got = message_for_reply(inbound.pk)

    assert got is not None
    assert _fields(got) == _fields(expected)
    assert _fields(got.conversation) == _fields(expected.conversation)
    assert _fields(got.conversation.tenant) == _fields(expected.conversation.tenant)
    assert got.conversation.tenant.monthly_budget == Decimal("12.50")
    assert got.metadata == {"nested": {"a": [1, 2]}, "n": 1.5}
    if with_channel:
        account = expected.conversation.account
        assert _fields(got.conversation.account) == _fields(account)
        assert got.conversation.account.access_token == "secret-token"
        assert got.conversation.account.providers == ["openai", "echo"]
    else:
        assert got.conversation.account is None
    # The relations are loaded: reading them runs no query.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        _ = got.conversation.tenant.slug, got.conversation.account
    assert len(queries) == 0


def test_message_for_reply_of_an_unknown_id_is_none() -> None:
    assert message_for_reply("00000000-0000-0000-0000-000000000000") is None


def test_claim_takes_a_received_message_once_and_a_stale_claim_again() -> None:
    inbound = _inbound(account=None)
    now = timezone.now()
    stale_before = now - timedelta(minutes=10)

    assert message_claim(inbound.pk, now=now, stale_before=stale_before) is True
    inbound.refresh_from_db()
    assert inbound.status == Message.Status.PROCESSING
    assert inbound.processing_started_at == now
    # A second claim while the first is fresh fails.
    assert message_claim(inbound.pk, now=now, stale_before=stale_before) is False
    # Once the claim is older than stale_before (a worker died), it is retaken.
    later = now + timedelta(minutes=11)
    stale_before = later - timedelta(minutes=10)
    assert message_claim(inbound.pk, now=later, stale_before=stale_before) is True
    inbound.refresh_from_db()
    assert inbound.processing_started_at == later


def test_claim_ignores_replies_and_finished_messages() -> None:
    inbound = _inbound(account=None)
    now = timezone.now()
    Message.objects.filter(pk=inbound.pk).update(status=Message.Status.REPLIED)
    assert message_claim(inbound.pk, now=now, stale_before=now) is False
    reply = Message.objects.create(
        conversation=inbound.conversation,
        channel="api",
        role=Message.Role.ASSISTANT,
        content="hi",
        status=Message.Status.RECEIVED,
    )
    assert message_claim(reply.pk, now=now, stale_before=now) is False
