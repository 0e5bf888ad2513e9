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


def test_row_insert_stores_what_create_stores() -> None:
    from django.db import IntegrityError, transaction

    from conversations.models import AICall
    from conversations.queries import row_insert

    inbound = _inbound(account=None)
    fields = {
        "conversation": inbound.conversation,
        "channel": "api",
        "role": Message.Role.ASSISTANT,
        "content": "Réponse ✓",
        "status": Message.Status.PENDING,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "cost": Decimal("0.000123"),
        "processing_time_ms": 42,
        "metadata": {"attempts": 1, "nested": [1, {"x": None}]},
    }
    reply = Message(reply_to=inbound, **fields)
    row_insert(reply)
    other = Message.objects.create(**fields)

    stored = Message.objects.get(pk=reply.pk)
    assert not reply._state.adding
    assert reply.created_at is not None and stored.created_at == reply.created_at
    assert stored.updated_at == reply.updated_at
    skip = {"id", "reply_to_id", "created_at", "updated_at"}
    assert {k: v for k, v in _fields(stored).items() if k not in skip} == {
        k: v for k, v in _fields(other).items() if k not in skip
    }
    assert stored.reply_to_id == inbound.pk
    # The one-to-one reply_to still guards against a second reply.
    with pytest.raises(IntegrityError), transaction.atomic():
        row_insert(Message(reply_to=inbound, **fields))

    call = AICall(
        tenant=inbound.conversation.tenant,
        message=inbound,
        ref="message:x",
        provider="openai",
        model="gpt-4o-mini",
        attempt=1,
        status=AICall.Status.SUCCEEDED,
        cost=Decimal("0.5"),
    )
    row_insert(call)
    assert isinstance(call.pk, int)
    assert AICall.objects.get(pk=call.pk).cost == Decimal("0.5")


def test_reply_recorded_marks_the_message_and_counts_on_the_conversation() -> None:
    from conversations.queries import reply_recorded

    inbound = _inbound(account=None)
    now = timezone.now()
    reply_recorded(inbound=inbound, status="replied", error=None, text="A", now=now)
    reply_recorded(
        inbound=inbound, status="over_budget", error="cap", text="B", now=now
    )
    inbound.refresh_from_db()
    conversation = Conversation.objects.get(pk=inbound.conversation_id)
    assert (inbound.status, inbound.error) == ("over_budget", "cap")
    assert conversation.message_count == 5  # 3 + 2
    assert conversation.last_response == "B"
    assert conversation.last_activity == now
