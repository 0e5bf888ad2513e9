"""The worker processes the deliveries of one task together, as one by one."""

from __future__ import annotations

from typing import Any

import pytest

from conversations.models import Conversation, Message
from vocoeng import correlation
from vocoeng.celery import app
from vocoeng.models import Channel, Tenant
from webhooks import services, tasks
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p
from webhooks.tests.conftest import deliveries_taken

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

U1, U2, U3 = "15550001001", "15550001002", "15550001003"
OTHER_NUMBER = "300000000000003"


def _bodies() -> list[tuple[dict[str, Any], str]]:
    """What Meta sends, in order (with the secret it is signed with)."""
    secret = p.APP_SECRET
    return [
        (p.notification([p.text(U1, "one", id="wamid.B1")]), secret),
        (
            p.notification(
                [p.text(U2, "two", id="wamid.B2"), p.text(U1, "three", id="wamid.B3")]
            ),
            secret,
        ),
        # Meta's retry of the first delivery: stored once, queued once
        (p.notification([p.text(U1, "one", id="wamid.B1")]), secret),
        (p.notification([p.reaction(U3, "👍", "wamid.B2")]), secret),  # no AI call
        (p.notification([], [p.status("wamid.unknown", "delivered", U2)]), secret),
        (p.template_status_update(), secret),  # a field VocoEng ignores
        # a number deactivated between the answer and the worker: rejected
        (
            p.notification(
                [p.text(U3, "gone", id="wamid.B4")], phone_number_id=OTHER_NUMBER
            ),
            "secret-other",
        ),
        (p.notification([p.text(U1, "four", id="wamid.B5")]), secret),
        (p.notification([p.image(U2, "a cat", id="wamid.B6")]), secret),
    ]


BODIES = _bodies()  # the same wamids (a reaction's is random) in every run


def _record(client) -> list[list[str | None]]:
    """POST every body (recorded and queued, not processed); return the
    deliveries' task items in order, each with its request's correlation id."""
    acme = Tenant.objects.get_or_create(slug="acme", defaults={"name": "Acme"})[0]
    other = Channel.objects.create(
        tenant=acme,
        name="Other",
        kind=Channel.Kind.WHATSAPP,
        phone_number_id=OTHER_NUMBER,
        app_secret="secret-other",
    )
    for n, (body, secret) in enumerate(BODIES):
        raw, sig = p.signed(body, secret=secret)
        response = client.post_only(
            "/webhooks/whatsapp/",
            data=raw,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=sig,
            HTTP_X_REQUEST_ID=f"req-{n}",
        )
        assert response.status_code == 200, response.content
    Channel.objects.filter(pk=other.pk).update(is_active=False)
    items = deliveries_taken()
    order = {f"req-{n}": n for n in range(len(BODIES))}
    return sorted(items, key=lambda item: order[item[1]])


def _chains() -> dict[str, str]:
    """Return the correlation id of each queued reply chain, by inbound wamid."""
    wamids = dict(Message.objects.values_list("pk", "external_id"))
    found = {}
    with app.connection_for_write() as conn:
        while (message := conn.default_channel.basic_get("ai")) is not None:
            (pk,), _, _ = message.decode()
            found[wamids[type(next(iter(wamids)))(pk)]] = message.headers.get(
                correlation.HEADER
            )
            message.ack()
    return found


def _outcome(items: list[list[str | None]]) -> dict[str, Any]:
    by_id = {str(d.pk): d for d in WebhookDelivery.objects.all()}
    conversations = {
        c.external_user_id: (c.message_count, c.last_message)
        for c in Conversation.objects.all()
    }
    return {
        "deliveries": [
            (by_id[i].verdict, by_id[i].error, by_id[i].summary) for i, _ in items
        ],
        "messages": sorted(
            Message.objects.values_list("external_id", "status", "content")
        ),
        "conversations": conversations,
        "chains": _chains(),
    }


def _forget() -> None:
    Message.objects.all().delete()
    Conversation.objects.all().delete()
    WebhookDelivery.objects.all().delete()
    Channel.objects.all().delete()


@pytest.mark.parametrize("limit", ["", "2/min"])
def test_a_batch_ends_as_one_by_one_does(client, queued, settings, limit) -> None:
    settings.AI_USER_RATE_LIMIT = limit
    settings.WHATSAPP_PHONE_NUMBER_ID = p.PHONE_NUMBER_ID  # takes only its own
    items = _record(client)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(services, "deliveries_process_many", lambda **_: False)
        tasks.deliveries_process.apply(args=[items])
    one_by_one = _outcome(items)
    _forget()

    items = _record(client)
    calls = []
    many = services.deliveries_process_many

    def spy(**kwargs):
        calls.append(len(kwargs["items"]))
        return many(**kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(services, "deliveries_process_many", spy)
        tasks.deliveries_process.apply(args=[items])
    together = _outcome(items)
    assert calls == [len(BODIES)]  # all of them in one go

    assert together == one_by_one
    verdicts = [verdict for verdict, _, _ in together["deliveries"]]
    assert verdicts == [
        *("processed", "processed", "processed", "processed", "processed"),
        *("ignored", "rejected", "processed", "processed"),
    ]
    assert "unknown phone_number_id" in together["deliveries"][6][1]
    # each chain carries the correlation id of the request that brought it
    expected = {"wamid.B1": "req-0", "wamid.B2": "req-1", "wamid.B3": "req-1"}
    expected |= {"wamid.B6": "req-8"}
    if not limit:
        expected["wamid.B5"] = "req-7"
    assert together["chains"] == expected
    statuses = {wamid: status for wamid, status, _ in together["messages"]}
    assert statuses["wamid.B5"] == ("rate_limited" if limit else "received")


def test_a_batch_that_fails_is_undone_and_processed_one_by_one(
    client, queued, monkeypatch, caplog
) -> None:

    items = _record(client)[:2]
    monkeypatch.setattr(services, "rows_store", _refused)
    tasks.deliveries_process.apply(args=[items])
    assert "webhook_deliveries_one_by_one deliveries=2" in caplog.text
    verdicts = WebhookDelivery.objects.filter(pk__in=[i for i, _ in items])
    assert set(verdicts.values_list("verdict", flat=True)) == {"processed"}
    assert queued() == 3


def _refused(*args: Any, **kwargs: Any) -> None:
    from django.db import DatabaseError

    raise DatabaseError("refused")


def test_chains_the_broker_refuses_put_the_deliveries_back(
    client, queued, monkeypatch
) -> None:
    items = _record(client)[:2]

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "producer_or_acquire", broker_down)
    tasks.deliveries_process.apply(args=[items])
    monkeypatch.undo()
    for delivery in WebhookDelivery.objects.filter(pk__in=[i for i, _ in items]):
        assert delivery.verdict == "received"  # the sweep takes them again
        assert delivery.error.startswith("reply chains not enqueued: ConnectionError")
    assert Message.objects.filter(status="received").count() == 3  # stored
    assert queued() == 0


def test_a_redelivered_task_changes_nothing(client, queued) -> None:
    items = _record(client)[:3]
    tasks.deliveries_process.apply(args=[items])
    before = _outcome(items)
    tasks.deliveries_process.apply(args=[items])
    assert _outcome(items) == {**before, "chains": {}}
