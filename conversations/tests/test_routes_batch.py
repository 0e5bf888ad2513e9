"""inbound_store_many stores what message_receive stores, on every database."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.routes import (
    _MESSAGE_COLUMNS,
    _conversations_bump_pg,
    _conversations_create,
    inbound_store_many,
)
from conversations.services import message_receive
from vocoeng.services import tenant_get_default
from vocoeng.testing.overlap import transactions_at_once

pytestmark = pytest.mark.django_db

# Fields whose values differ between two stores of the same message.
_OWN = {"id", "conversation_id", "external_id", "created_at", "updated_at"}


def test_the_array_insert_writes_every_column_of_message():
    columns = {f.column for f in Message._meta.concrete_fields}
    assert set(_MESSAGE_COLUMNS) == columns


# Text and metadata that any encoding of the batch's rows must carry intact.
_TRICKY = ' ü \ufffd "quoted" \\ back\\slash\n{"a": [1]} \\u0041 😀 \t,'
_META = {"nested": {"list": [1, "two", None, 1.5, True]}, 'q"k\\': "é😀"}


def _entry(tenant, n: int, user: str) -> dict:
    return {
        "tenant": tenant,
        "channel": "api",
        "user_id": user,
        "text": f"hello {n}{_TRICKY}",
        "external_id": f"batch-{n}",
        "metadata": {"n": n, **_META},
    }


def test_a_batch_stores_the_rows_message_receive_stores():
    tenant = tenant_get_default()
    one, _ = message_receive(
        tenant=tenant,
        channel="api",
        user_id="alone",
        text=f"hello 0{_TRICKY}",
        external_id="single-0",
        metadata={"n": 0, **_META},
    )
    stored = inbound_store_many(
        entries=[_entry(tenant, 0, "batch-user"), _entry(tenant, 1, "batch-user")]
    )

    def values(message: Message) -> dict:
        return {
            f.attname: getattr(message, f.attname)
            for f in Message._meta.concrete_fields
            if f.attname not in _OWN
        }

    fresh_single = Message.objects.get(pk=one.pk)
    fresh_batch = Message.objects.get(pk=stored[0].pk)
    assert values(fresh_batch) == values(fresh_single)
    # what the batch returns is what it stored
    assert values(stored[0]) == values(fresh_batch)
    assert stored[0].pk == fresh_batch.pk
    assert not stored[0]._state.adding
    conversation = Conversation.objects.get(external_user_id="batch-user")
    assert conversation.message_count == 2
    assert conversation.last_message == f"hello 1{_TRICKY}"
    assert conversation.last_activity is not None
    assert fresh_batch.conversation_id == conversation.pk

    # Again: the stored rows come back, nothing is written twice.
    again = inbound_store_many(entries=[_entry(tenant, 1, "batch-user")])
    assert again[0].pk == stored[1].pk
    assert Message.objects.filter(external_id__startswith="batch-").count() == 2
    assert Conversation.objects.get(pk=conversation.pk).message_count == 2


def test_a_message_stored_elsewhere_comes_back_without_a_new_conversation():
    from vocoeng.models import Tenant

    other = Tenant.objects.create(slug="other", name="Other")
    stored, _ = message_receive(
        tenant=other, channel="api", user_id="u-9", text="x", external_id="dup-1"
    )
    tenant = tenant_get_default()
    dup = {**_entry(tenant, 1, "u-9"), "external_id": "dup-1"}
    new = {**_entry(tenant, 2, "u-9"), "user_id": "u-10"}

    got = inbound_store_many(entries=[dup, new])

    # the stored message as it is, nothing written for it; the new one stored
    assert got[0].pk == stored.pk and got[0].conversation.tenant == other
    assert not Conversation.objects.filter(tenant=tenant, external_user_id="u-9")
    created = Conversation.objects.get(tenant=tenant, external_user_id="u-10")
    assert got[1].conversation_id == created.pk and created.message_count == 1
    assert Conversation.objects.get(pk=stored.conversation_id).message_count == 1
    assert Message.objects.count() == 2


def _row_values() -> dict:
    from decimal import Decimal

    from django.utils import timezone

    from conversations.routes import _MESSAGE_FIXED

    now = timezone.now()
    return {
        **_MESSAGE_FIXED,
        "status": Message.Status.RECEIVED.value,
        "id": uuid.uuid4(),
        "conversation_id": 7,
        "channel": "api",
        "content": "hi",
        "external_id": "x-1",
        "metadata": {"a": [1]},
        "created_at": now,
        "updated_at": now,
        "cost": Decimal(0),
    }


def _instance_state(message: Message) -> tuple[dict, bool, str]:
    values = {k: v for k, v in vars(message).items() if k != "_state"}
    return values, message._state.adding, message._state.db


@pytest.mark.parametrize("receiver", [False, True])
def test_a_stored_row_is_the_message_from_db_makes(receiver):
    from django.db.models.signals import post_init

    from conversations.routes import _stored_maker

    values = _row_values()
    expected = Message.from_db(
        "default", list(_MESSAGE_COLUMNS), [values[c] for c in _MESSAGE_COLUMNS]
    )
    seen = []

    def on_init(sender, instance, **kwargs):
        seen.append(instance)

    if receiver:  # something listens: from_db itself, signals and all
        post_init.connect(on_init, sender=Message)
    try:
        made = _stored_maker("default")(dict(values))
    finally:
        post_init.disconnect(on_init, sender=Message)
    assert _instance_state(made) == _instance_state(expected)
    assert type(made) is Message and made.pk == values["id"]
    assert seen == ([made] if receiver else [])


def test_the_reply_chain_is_the_canvas_chain():
    from celery import chain

    from conversations.routes import reply_chain
    from conversations.tasks import reply_deliver, reply_generate, reply_publish

    built = reply_chain(Message(pk="pk-1"))
    canvas = chain(reply_generate.si("pk-1"), reply_publish.s(), reply_deliver.s())
    assert type(built) is type(canvas)
    # chain() folds the steps into a list; built by hand they stay a tuple
    assert {**built, "kwargs": {}} == {**canvas, "kwargs": {}}
    assert list(built.tasks) == list(canvas.tasks)
    assert [type(s) for s in built.tasks] == [type(s) for s in canvas.tasks]
    assert [s.immutable for s in built.tasks] == [True, False, False]
    assert (built._use_link, built._frozen) == (None, None)


PLAIN = {"source": "api", "user_id": "u-1", "message": "hi", "message_id": "m-1"}


@pytest.mark.parametrize(
    "data",
    [
        PLAIN,
        {k: v for k, v in PLAIN.items() if k != "message_id"},
        {k: v for k, v in PLAIN.items() if k != "source"},
        {**PLAIN, "source": "whatsapp"},
        {**PLAIN, "source": "fax"},
        {**PLAIN, "source": 1},
        {**PLAIN, "user_id": " padded "},
        {**PLAIN, "user_id": ""},
        {**PLAIN, "user_id": "x" * 128},
        {**PLAIN, "user_id": "x" * 129},
        {**PLAIN, "user_id": 7},
        {**PLAIN, "message": "  spaces kept  "},
        {**PLAIN, "message": "   "},
        {**PLAIN, "message": "x" * 8192},
        {**PLAIN, "message": "x" * 8193},
        {**PLAIN, "message": "nul \x00 inside"},
        {**PLAIN, "message": "lone \ud800 surrogate"},
        {**PLAIN, "message": "ünïcödé ✓"},
        {**PLAIN, "message": None},
        {**PLAIN, "message_id": None},
        {**PLAIN, "message_id": ""},
        {**PLAIN, "message_id": ["m"]},
        {**PLAIN, "metadata": {"a": 1}},
        {**PLAIN, "timestamp": "2026-01-01T00:00:00Z"},
        {**PLAIN, "unknown": "ignored"},
        {"user_id": "u"},
    ],
)
def test_the_plain_check_agrees_with_the_serializer(data):
    from conversations.routes import _valid_plain
    from conversations.serializers import InboundMessageSerializer

    serializer = InboundMessageSerializer(data=data)
    ok = serializer.is_valid()
    fast = _valid_plain(data)
    if fast is not None:  # judged without the serializer: exactly its answer
        assert ok, serializer.errors
        assert fast == dict(serializer.validated_data)
    # (None: the serializer judges it, whatever it is)


def test_the_usual_bus_message_is_judged_without_the_serializer():
    from conversations.routes import _valid_plain

    assert _valid_plain(PLAIN) is not None
    assert _valid_plain({"user_id": "u", "message": "m"}) is not None


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite locks the whole database per write: no row-lock order there",
)
@pytest.mark.django_db(transaction=True)
def test_two_bridges_creating_the_same_conversations_do_not_deadlock():
    """Each process sees its own order of a set; the rows are locked in key order.

    One batch creates the conversations in one order, the other in the
    reverse order, both at once: unsorted, each held index entries the other
    waited on, and PostgreSQL ended one with "deadlock detected".
    """
    tenant = tenant_get_default()
    keys = [(tenant.pk, "api", f"u-{n:05d}") for n in range(8000)]
    assert transactions_at_once(_conversations_create, [keys, keys[::-1]]) == []
    assert Conversation.objects.filter(tenant=tenant).count() == 8000


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite locks the whole database per write: no row-lock order there",
)
@pytest.mark.django_db(transaction=True)
def test_two_bridges_bumping_the_same_conversations_do_not_deadlock():
    """Whatever order an UPDATE's plan reads the rows in, they are locked by id.

    The rows are written in descending id order (the table's physical
    order the reverse of the ids), then two batches bump every conversation
    at once, one planned as a nested loop over the sorted rows (id order),
    the other as a hash join (physical order). Locked by the UPDATE alone,
    they locked crosswise and PostgreSQL ended one with "deadlock detected".
    """
    tenant = tenant_get_default()
    Conversation.objects.bulk_create(
        Conversation(
            id=10_000 + n, tenant=tenant, channel="api", external_user_id=f"u-{n}"
        )
        for n in reversed(range(3000))
    )
    ids = sorted(Conversation.objects.values_list("pk", flat=True))
    counts = dict.fromkeys(ids, 1)
    last = dict.fromkeys(ids, "hi")
    plans = {
        "nested loop": "SET LOCAL enable_hashjoin = off;"
        "SET LOCAL enable_mergejoin = off",
        "hash join": "SET LOCAL enable_nestloop = off;SET LOCAL enable_mergejoin = off",
    }

    def bump(plan: str) -> None:
        with connection.cursor() as cursor:
            for statement in plans[plan].split(";"):
                cursor.execute(statement)
        _conversations_bump_pg(counts=counts, last=last, now=timezone.now())

    assert transactions_at_once(bump, list(plans)) == []
    assert set(Conversation.objects.values_list("message_count", flat=True)) == {2}


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="HOT updates and their statistics are PostgreSQL's",
)
def test_a_conversation_bump_touches_no_index():
    """Each message moves its conversation's count, last message and last
    activity: an index on any of them would make every bump a new row
    version in each of the table's indexes (not a HOT update)."""
    tenant = tenant_get_default()
    conversations = Conversation.objects.bulk_create(
        Conversation(tenant=tenant, channel="api", external_user_id=f"hot-{n}")
        for n in range(3)
    )
    ids = [c.pk for c in conversations]
    table = Conversation._meta.db_table

    def updated() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_stat_get_xact_tuples_updated(%s::regclass),"
                " pg_stat_get_xact_tuples_hot_updated(%s::regclass)",
                [table, table],
            )
            return cursor.fetchone()

    before = updated()
    _conversations_bump_pg(
        counts=dict.fromkeys(ids, 2), last=dict.fromkeys(ids, "hi"), now=timezone.now()
    )
    after = updated()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)
    assert set(Conversation.objects.values_list("message_count", flat=True)) == {2}
