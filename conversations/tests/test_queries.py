"""The reply's SQL statements read and claim what the ORM would."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.queries import message_claim_read, message_for_reply
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


def _reply_fields(inbound: Message) -> dict:
    return {
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


def _claim_read(message_id):
    now = timezone.now()
    return message_claim_read(message_id, now=now, stale_before=now)


@pytest.mark.parametrize("read", [message_for_reply, _claim_read])
@pytest.mark.parametrize("with_channel", [False, True])
def test_the_reads_read_what_select_related_reads(with_channel, read) -> None:
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
    got = read(inbound.pk)  # the claim reads the row as it claimed it
    expected = Message.objects.select_related(
        "conversation__tenant", "conversation__account"
    ).get(pk=inbound.pk)

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

    claimed = message_claim_read(inbound.pk, now=now, stale_before=stale_before)
    assert claimed is not None and claimed.pk == inbound.pk
    assert claimed.status == Message.Status.PROCESSING  # as claimed
    assert claimed.processing_started_at == now
    inbound.refresh_from_db()
    assert inbound.status == Message.Status.PROCESSING
    assert inbound.processing_started_at == now
    # A second claim while the first is fresh fails.
    assert message_claim_read(inbound.pk, now=now, stale_before=stale_before) is None
    # Once the claim is older than stale_before (a worker died), it is retaken.
    later = now + timedelta(minutes=11)
    stale_before = later - timedelta(minutes=10)
    again = message_claim_read(inbound.pk, now=later, stale_before=stale_before)
    assert again is not None and again.processing_started_at == later
    inbound.refresh_from_db()
    assert inbound.processing_started_at == later


def test_claim_ignores_replies_finished_and_unknown_messages() -> None:
    inbound = _inbound(account=None)
    now = timezone.now()
    Message.objects.filter(pk=inbound.pk).update(status=Message.Status.REPLIED)
    assert message_claim_read(inbound.pk, now=now, stale_before=now) is None
    reply = Message.objects.create(
        conversation=inbound.conversation,
        channel="api",
        role=Message.Role.ASSISTANT,
        content="hi",
        status=Message.Status.RECEIVED,
    )
    assert message_claim_read(reply.pk, now=now, stale_before=now) is None
    unknown = "00000000-0000-0000-0000-000000000000"
    assert message_claim_read(unknown, now=now, stale_before=now) is None
    reply.refresh_from_db()
    assert reply.status == Message.Status.RECEIVED


def test_history_rows_read_what_the_orm_reads() -> None:
    from conversations.queries import history_rows

    inbound = _inbound(account=None)
    conversation = inbound.conversation
    base = timezone.now() - timedelta(hours=1)
    statuses = [Message.Status.REPLIED, Message.Status.SENT]
    for i, status in enumerate(
        ["replied", "sent", "failed", "replied", "sent", "replied", "ignored"]
    ):
        m = Message.objects.create(
            conversation=conversation,
            channel="api",
            role="user" if i % 2 else "assistant",
            content=f"turn {i} ✓",
            status=status,
        )
        Message.objects.filter(pk=m.pk).update(created_at=base + timedelta(minutes=i))
    before = base + timedelta(minutes=6)  # excludes turn 6 and later
    for limit in (1, 2, 3, 10):
        orm = list(
            Message.objects.filter(
                conversation_id=conversation.pk,
                created_at__lt=before,
                status__in=statuses,
            )
            .order_by("-created_at")
            .values_list("role", "content")[:limit]
        )
        got = history_rows(
            conversation_id=conversation.pk,
            before=before,
            statuses=statuses,
            limit=limit,
        )
        assert got == list(reversed(orm))
    assert [c for _, c in got] == [
        "turn 0 ✓",
        "turn 1 ✓",
        "turn 3 ✓",
        "turn 4 ✓",
        "turn 5 ✓",
    ]


def test_row_insert_stores_what_create_stores() -> None:
    from django.db import IntegrityError, transaction

    from conversations.models import AICall
    from conversations.queries import row_insert

    inbound = _inbound(account=None)
    fields = _reply_fields(inbound)
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


def _calls(inbound: Message) -> list:
    from conversations.models import AICall

    return [
        AICall(
            tenant_id=inbound.conversation.tenant_id,
            message=inbound,
            ref=f"message:{inbound.pk}",
            provider="openai",
            model="gpt-4o-mini",
            attempt=n,
            status=AICall.Status.SUCCEEDED,
            total_tokens=10 + n,
            cost=Decimal("0.25"),
        )
        for n in (1, 2)
    ]


@pytest.mark.parametrize("error", [None, "over budget"])
def test_reply_write_stores_the_reply_its_marks_and_its_usage(error) -> None:
    from conversations.models import AICall
    from conversations.queries import reply_write

    inbound = _inbound(account=None)
    now = timezone.now()
    reply = Message(reply_to=inbound, **_reply_fields(inbound))
    calls = _calls(inbound)
    reply_write(
        reply=reply,
        inbound=inbound,
        status="replied",
        error=error,
        now=now,
        calls=calls,
    )
    other = Message.objects.create(**_reply_fields(inbound))
    stored = Message.objects.get(pk=reply.pk)
    skip = {"id", "reply_to_id", "created_at", "updated_at"}
    assert {k: v for k, v in _fields(stored).items() if k not in skip} == {
        k: v for k, v in _fields(other).items() if k not in skip
    }
    assert stored.reply_to_id == inbound.pk and stored.created_at == reply.created_at
    assert not reply._state.adding
    inbound.refresh_from_db()
    assert inbound.status == "replied"
    assert inbound.error == (error or "")
    conversation = Conversation.objects.get(pk=inbound.conversation_id)
    assert conversation.message_count == 4  # 3 + 1
    assert conversation.last_response == "Réponse ✓"
    assert conversation.last_activity == now
    ledger = AICall.objects.filter(message=inbound).order_by("attempt")
    assert [(c.attempt, c.total_tokens, c.cost) for c in ledger] == [
        (1, 11, Decimal("0.25")),
        (2, 12, Decimal("0.25")),
    ]


def test_reply_write_of_a_second_reply_raises_and_writes_nothing() -> None:
    from django.db import IntegrityError

    from conversations.models import AICall
    from conversations.queries import reply_write

    inbound = _inbound(account=None)
    now = timezone.now()
    first = Message(reply_to=inbound, **_reply_fields(inbound))
    reply_write(reply=first, inbound=inbound, status="replied", error=None, now=now)
    Message.objects.filter(pk=inbound.pk).update(status="processing")
    second = Message(reply_to=inbound, **_reply_fields(inbound))
    with pytest.raises(IntegrityError):
        reply_write(
            reply=second,
            inbound=inbound,
            status="failed",
            error="x",
            now=now,
            calls=_calls(inbound),
        )
    # The caller's transaction (the test's) is still usable: nothing of the
    # second write is there.
    inbound.refresh_from_db()
    assert inbound.status == "processing"
    assert not Message.objects.filter(pk=second.pk).exists()
    assert not AICall.objects.filter(message=inbound).exists()
    assert Conversation.objects.get(pk=inbound.conversation_id).message_count == 4


@pytest.mark.parametrize("channel_length", [None, 2])
def test_the_claim_reads_the_history_the_database_store_reads(
    channel_length,
) -> None:
    """On PostgreSQL the claim brings the history along (one statement); the
    database store then hands it out without a query, the same turns its own
    statement reads. Elsewhere the store reads it as before."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from conversations.queries import history_rows
    from conversations.stores.db import DatabaseStore

    account = None
    if channel_length is not None:
        account = Channel(name="Short memory", kind="whatsapp", phone_number_id="777")
        account.history_length = channel_length
    inbound = _inbound(account=account)
    conversation = inbound.conversation
    start = inbound.created_at - timedelta(minutes=10)
    for n, (role, status) in enumerate(
        [
            (Message.Role.USER, Message.Status.REPLIED),
            (Message.Role.ASSISTANT, Message.Status.DELIVERED),
            (Message.Role.USER, Message.Status.FAILED),  # never reached the model
            (Message.Role.USER, Message.Status.REPLIED),
            (Message.Role.ASSISTANT, Message.Status.READ),
        ]
    ):
        older = Message.objects.create(
            conversation=conversation,
            channel=conversation.channel,
            role=role,
            content=f"turn {n} ✓",
            external_id=f"old-{n}",
            status=status,
        )
        Message.objects.filter(pk=older.pk).update(
            created_at=start + timedelta(minutes=n)
        )
    store = DatabaseStore()
    now = timezone.now()
    claimed = message_claim_read(
        inbound.pk,
        now=now,
        stale_before=now,
        history_statuses=store.history_statuses,
        history_length=20,
    )
    limit = channel_length or 20
    expected = history_rows(
        conversation_id=conversation.pk,
        before=inbound.created_at,
        statuses=store.history_statuses,
        limit=limit,
    )
    assert len(expected) == min(limit, 4)
    with CaptureQueriesContext(connection) as queries:
        turns = store.history(inbound=claimed, limit=limit)
    assert [(t.role, t.content) for t in turns] == expected
    if connection.vendor == "postgresql":
        assert claimed.history_prefetched == (limit, expected)
        assert len(queries) == 0
    else:
        assert not hasattr(claimed, "history_prefetched")
        assert len(queries) == 1
    # Another length than the one read: the store reads it itself.
    assert [(t.role, t.content) for t in store.history(inbound=claimed, limit=1)] == [
        expected[-1]
    ]
