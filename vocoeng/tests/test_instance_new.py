"""instance_new gives what Model(**values) gives, without its cost."""

from __future__ import annotations

import pytest
from django.db.models.signals import post_init
from django.utils import timezone

from vocoeng.sql import instance_new
from webhooks.models import WebhookDelivery

VALUES = {
    "source": "whatsapp",
    "headers": {"Content-Type": "application/json"},
    "body": "{}",
    "received_at": timezone.now(),
}


def _fields(instance) -> dict:
    return {
        f.attname: getattr(instance, f.attname)
        for f in WebhookDelivery._meta.concrete_fields
        if f.attname != "id"
    }


def test_it_is_what_the_model_gives() -> None:
    ours, theirs = instance_new(WebhookDelivery, **VALUES), WebhookDelivery(**VALUES)
    assert type(ours) is WebhookDelivery
    assert _fields(ours) == _fields(theirs)
    assert ours.verdict == WebhookDelivery.Verdict.RECEIVED and ours.replays == 0
    assert ours.pk is not None and ours.pk != theirs.pk  # a default of its own
    assert ours._state.adding and ours._state.db is None
    # Defaults are new objects each time, as the model's are.
    assert instance_new(WebhookDelivery).summary is not ours.summary


@pytest.mark.django_db
def test_it_saves_and_reads_back_as_the_model_does() -> None:
    ours = instance_new(WebhookDelivery, **VALUES)
    ours.save(force_insert=True)
    stored = WebhookDelivery.objects.get(pk=ours.pk)
    assert _fields(stored) == _fields(ours)


def test_with_an_init_receiver_or_an_unknown_name_it_is_the_model_itself() -> None:
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=WebhookDelivery)
    try:
        made = instance_new(WebhookDelivery, **VALUES)
    finally:
        post_init.disconnect(receiver, sender=WebhookDelivery)
    assert seen == [made]
    with pytest.raises(TypeError, match="unexpected keyword"):
        instance_new(WebhookDelivery, nonsense=1)
