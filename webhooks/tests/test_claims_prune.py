"""The bridge's dedup claims are deleted once no redelivery can need them."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from conversations.models import Message
from vocoeng.models import ProcessedMessage
from webhooks.bridge.batching import batch_handle
from webhooks.bridge.dedup import Claim, dedup_claim, dedup_prune
from webhooks.bridge.handling import Delivery, Outcome
from webhooks.tasks import claims_prune

pytestmark = pytest.mark.django_db


def _claims(n: int, *, days_old: float, kind: str = "chat_message") -> list[str]:
    keys = [f"{kind}-{days_old}-{i}" for i in range(n)]
    for key in keys:
        assert dedup_claim(kind=kind, key=key, message_id=key) is Claim.CLAIMED
    ProcessedMessage.objects.filter(key__in=keys).update(
        created_at=timezone.now() - timedelta(days=days_old),
        state=ProcessedMessage.State.DONE,
    )
    return keys


def test_the_beat_task_deletes_claims_older_than_the_keep_days_only() -> None:
    old = _claims(3, days_old=settings.PUBSUB_CLAIM_KEEP_DAYS + 1)
    young = _claims(2, days_old=settings.PUBSUB_CLAIM_KEEP_DAYS - 1)

    assert claims_prune() == 3

    left = set(ProcessedMessage.objects.values_list("key", flat=True))
    assert left == set(young)
    assert not left & set(old)
    assert claims_prune() == 0  # nothing more to do


def test_prune_deletes_in_chunks_until_none_is_left() -> None:
    _claims(7, days_old=30)
    young = _claims(1, days_old=0)

    assert dedup_prune(older_than=timezone.now() - timedelta(days=1), chunk=3) == 7
    assert list(ProcessedMessage.objects.values_list("key", flat=True)) == young


def test_a_kept_claim_still_makes_a_duplicate_and_a_pruned_one_is_claimed_again(
    queued,
) -> None:
    def deliver(key: str) -> Outcome:
        body = {"source": "api", "user_id": "u1", "message": "hi", "message_id": key}
        delivery = Delivery(
            subscription="bridge-test",
            message_id=key,
            data=json.dumps(body).encode(),
            attributes={"kind": "chat_message"},
            delivery_attempt=1,
        )
        [(outcome, _)] = batch_handle(
            [delivery], retry_seconds=1, stop=threading.Event()
        )
        return outcome

    assert deliver("m-young") is Outcome.ENQUEUED
    assert deliver("m-old") is Outcome.ENQUEUED
    long_ago = timezone.now() - timedelta(days=settings.PUBSUB_CLAIM_KEEP_DAYS + 1)
    ProcessedMessage.objects.filter(key="m-old").update(created_at=long_ago)

    assert claims_prune() == 1
    assert deliver("m-young") is Outcome.DUPLICATE
    # Past the subscriptions' retention Pub/Sub no longer redelivers it; were
    # it published again, the bridge claims it afresh and the route's own key
    # (the chat message's id) still keeps one stored message.
    deliver("m-old")
    claim = ProcessedMessage.objects.get(key="m-old")
    assert claim.created_at > long_ago + timedelta(days=1)
    assert claim.state == ProcessedMessage.State.DONE
    assert Message.objects.filter(external_id="m-old").count() == 1
