"""Claim bus messages by dedup key in the database, across bridge replicas.

A claim is taken (``pending``) before the route runs and finished (``done`` or
``dead``) after the chain is in the broker, so two deliveries of one key never
both enqueue. A bridge that dies between claim and finish leaves a pending
claim; after PUBSUB_BRIDGE_CLAIM_SECONDS the next delivery takes it over, and
if the chain had in fact reached the broker it is enqueued a second time. That
is harmless because every chain is idempotent itself (the routes store inbound
rows keyed on their ids and the tasks claim their work), and it is far rarer
than the redeliveries the claim absorbs.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from vocoeng.models import ProcessedMessage


class Claim(StrEnum):
    """Say what a claim attempt found."""

    CLAIMED = "claimed"  # ours: route and enqueue it
    DONE = "done"  # handled before: a duplicate
    BUSY = "busy"  # another delivery is enqueueing it right now


def dedup_claim(*, kind: str, key: str, message_id: str) -> Claim:
    """Claim ``key`` of ``kind`` for this delivery."""
    now = timezone.now()
    try:
        with transaction.atomic():
            ProcessedMessage.objects.create(
                kind=kind,
                key=key,
                message_id=message_id,
                state=ProcessedMessage.State.PENDING,
                claimed_at=now,
            )
        return Claim.CLAIMED
    except IntegrityError:
        pass
    row = ProcessedMessage.objects.filter(kind=kind, key=key).first()
    if row is None:  # released between our insert and read: try once more
        return dedup_claim(kind=kind, key=key, message_id=message_id)
    if row.state != ProcessedMessage.State.PENDING:
        return Claim.DONE
    stale = now - timedelta(seconds=settings.PUBSUB_BRIDGE_CLAIM_SECONDS)
    if row.claimed_at < stale:
        taken = ProcessedMessage.objects.filter(
            pk=row.pk, state=ProcessedMessage.State.PENDING, claimed_at=row.claimed_at
        ).update(claimed_at=now, message_id=message_id)
        if taken:
            return Claim.CLAIMED
    return Claim.BUSY


def dedup_finish(*, kind: str, key: str, dead: bool = False) -> None:
    """Mark the claim done (or dead-lettered): later deliveries are duplicates."""
    state = ProcessedMessage.State.DEAD if dead else ProcessedMessage.State.DONE
    ProcessedMessage.objects.filter(kind=kind, key=key).update(state=state)


def dedup_release(*, kind: str, key: str) -> None:
    """Drop a pending claim so a redelivery can try again (enqueue failed)."""
    ProcessedMessage.objects.filter(
        kind=kind, key=key, state=ProcessedMessage.State.PENDING
    ).delete()
