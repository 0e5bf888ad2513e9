"""inbound_store_many stores what message_receive stores, on every database."""

from __future__ import annotations

import pytest

from conversations.models import Conversation, Message
from conversations.routes import _MESSAGE_COLUMNS, inbound_store_many
from conversations.services import message_receive
from vocoeng.services import tenant_get_default

pytestmark = pytest.mark.django_db

# Fields whose values differ between two stores of the same message.
_OWN = {"id", "conversation_id", "external_id", "created_at", "updated_at"}


def test_the_array_insert_writes_every_column_of_message():
    columns = {f.column for f in Message._meta.concrete_fields}
    assert set(_MESSAGE_COLUMNS) == columns


def _entry(tenant, n: int, user: str) -> dict:
    return {
        "tenant": tenant,
        "channel": "api",
        "user_id": user,
        "text": f"hello {n} ü \ufffd",
        "external_id": f"batch-{n}",
        "metadata": {"n": n, "nested": {"list": [1, "two", None]}},
    }


def test_a_batch_stores_the_rows_message_receive_stores():
    tenant = tenant_get_default()
    one, _ = message_receive(
        tenant=tenant,
        channel="api",
        user_id="alone",
        text="hello 0 ü \ufffd",
        external_id="single-0",
        metadata={"n": 0, "nested": {"list": [1, "two", None]}},
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
    assert conversation.last_message == "hello 1 ü \ufffd"
    assert conversation.last_activity is not None
    assert fresh_batch.conversation_id == conversation.pk

    # Again: the stored rows come back, nothing is written twice.
    again = inbound_store_many(entries=[_entry(tenant, 1, "batch-user")])
    assert again[0].pk == stored[1].pk
    assert Message.objects.filter(external_id__startswith="batch-").count() == 2
    assert Conversation.objects.get(pk=conversation.pk).message_count == 2
