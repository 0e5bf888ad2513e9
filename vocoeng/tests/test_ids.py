"""Time-ordered UUIDs (version 7) for the rows inserted all the time."""

from __future__ import annotations

import time
import uuid

import pytest

from vocoeng.ids import uuid7, uuid7_many


def _ms(value: uuid.UUID) -> int:
    return int.from_bytes(value.bytes[:6])  # RFC 9562: unix_ts_ms, 48 bits


def test_an_id_is_a_version_7_uuid_of_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= _ms(value) <= after
    assert uuid.UUID(str(value)) == value


def test_ids_are_distinct_and_sort_by_the_time_they_were_made() -> None:
    first = uuid7_many(1000)
    time.sleep(0.002)
    later = uuid7_many(1000)
    assert len({*first, *later}) == 2000
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in first + later)
    assert max(first) < min(later)  # as the index sees them: the right edge


@pytest.mark.django_db
def test_messages_and_deliveries_get_them() -> None:
    from conversations.models import Conversation, Message
    from vocoeng.services import tenant_get_default
    from webhooks.models import WebhookDelivery

    conversation = Conversation.objects.create(
        tenant=tenant_get_default(), channel="api", external_user_id="u-1"
    )
    message = Message.objects.create(
        conversation=conversation, channel="api", role="user", status="received"
    )
    delivery = WebhookDelivery.objects.create(source="whatsapp")
    assert message.pk.version == 7
    assert delivery.pk.version == 7
