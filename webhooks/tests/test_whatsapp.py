"""The WhatsApp webhook: handshake, signatures, recording, parsing, storing."""

from __future__ import annotations

import io

import pytest

from conversations.models import Message
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_handshake_echoes_the_challenge(client) -> None:
    ok = client.get(
        "/webhooks/whatsapp/",
        {
            "hub.mode": "subscribe",
            "hub.verify_token": "verify-me",
            "hub.challenge": "42",
        },
    )
    assert ok.status_code == 200
    assert ok.content == b"42"
    assert ok["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {
            "hub.mode": "unsubscribe",
            "hub.verify_token": "verify-me",
            "hub.challenge": "1",
        },
        {"hub.challenge": "1"},
    ],
)
def test_handshake_with_wrong_token_or_mode_is_403(client, params) -> None:
    assert client.get("/webhooks/whatsapp/", params).status_code == 403


def test_missing_signature_is_401_and_nothing_processed(post_whatsapp, queued) -> None:
    response = post_whatsapp(p.notification([p.text("15551230001", "hi")]), sign=False)
    assert response.status_code == 401
    assert not Message.objects.exists()
    assert queued() == 0
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "unauthorized"
    assert delivery.body == ""


def test_wrong_signature_is_403_and_nothing_processed(post_whatsapp, queued) -> None:
    body = p.notification([p.text("15551230001", "hi")])
    _, other = p.signed(body, secret="not-the-secret")
    assert post_whatsapp(body, signature=other).status_code == 403
    assert post_whatsapp(body, signature="sha256=zz").status_code == 403
    assert not Message.objects.exists()
    assert queued() == 0


def test_text_message_is_stored_once_and_one_chain_enqueued(
    post_whatsapp, queued
) -> None:
    body = p.notification([p.text("15551230001", "Hello there")])
    first = post_whatsapp(body)
    assert first.status_code == 200
    for _ in range(3):  # Meta retries the same delivery
        assert post_whatsapp(body).status_code == 200
    inbound = Message.objects.get()
    assert inbound.content == "Hello there"
    assert inbound.channel == "whatsapp"
    assert inbound.status == "received"
    assert inbound.conversation.external_user_id == "15551230001"
    assert inbound.metadata["phone_number_id"] == p.PHONE_NUMBER_ID
    assert inbound.metadata["profile_name"] == "User 0001"
    assert queued() == 1
    deliveries = WebhookDelivery.objects.order_by("received_at")
    assert [d.verdict for d in deliveries] == ["processed"] * 4
    assert deliveries[0].summary["messages"] == {"queued": 1}
    assert deliveries[3].summary["messages"] == {"duplicate": 1}
    assert deliveries[0].headers["X-Hub-Signature-256"].startswith("sha256=")


def test_batch_from_several_users_with_every_type(post_whatsapp, queued) -> None:
    a, b, c = "15551230001", "15551230002", "919800000003"
    target = p.wamid()
    messages = [
        p.text(a, "first", id=target),
        p.image(a, "my receipt"),
        p.image(b),
        p.media(b, "audio", voice=True),
        p.media(b, "video", caption="clip"),
        p.media(c, "document", filename="invoice.pdf", caption="see attached"),
        p.media(c, "sticker", animated=False),
        p.location(a, 12.9716, 77.5946, name="Cubbon Park", address="Bengaluru"),
        p.contacts(b, "Asha Rao", "+919812345678"),
        p.button_reply(c, "Yes, confirm"),
        p.list_reply(a, "Premium plan", "Rs 999/month"),
        p.reaction(b, "👍", target),
        p.unsupported(c),
    ]
    response = post_whatsapp(p.notification(messages))
    assert response.status_code == 200
    stored = {m.external_id: m for m in Message.objects.all()}
    assert len(stored) == len(messages)
    content = [stored[m["id"]].content for m in messages]
    assert content == [
        "first",
        "[image: my receipt]",
        "[image]",
        "[audio]",
        "[video: clip]",
        "[document: see attached]",
        "[sticker]",
        "[location: 12.9716, 77.5946] Cubbon Park, Bengaluru",
        "[contacts: Asha Rao +919812345678]",
        "Yes, confirm",
        "Premium plan (Rs 999/month)",
        "[reaction: 👍]",
        "[unsupported]",
    ]
    image = stored[messages[1]["id"]]
    assert image.metadata["media_id"] == "1479537139650973"
    assert image.metadata["mime_type"] == "image/jpeg"
    assert stored[messages[5]["id"]].metadata["filename"] == "invoice.pdf"
    assert stored[messages[9]["id"]].metadata["reply_id"] == "btn-1"
    reaction = stored[messages[11]["id"]]
    assert reaction.status == "ignored"
    assert reaction.metadata["reacted_to"] == target
    assert stored[messages[12]["id"]].status == "ignored"
    assert queued() == len(messages) - 2  # no AI for the reaction and unknown
    users = {m.conversation.external_user_id for m in stored.values()}
    assert users == {a, b, c}


def _reply(user: str, wamid: str, status: str = "sent") -> Message:
    from conversations.services import message_receive
    from vocoeng.services import tenant_get_default

    inbound, _ = message_receive(
        tenant=tenant_get_default(),
        channel="whatsapp",
        user_id=user,
        text="hi",
        external_id=p.wamid(),
        status="replied",
    )
    return Message.objects.create(
        conversation=inbound.conversation,
        channel="whatsapp",
        role="assistant",
        content="hello",
        status=status,
        reply_to=inbound,
        external_id=wamid,
    )


def test_statuses_move_the_outbound_message_forward_only(post_whatsapp, queued) -> None:
    user, out = "15551230009", p.wamid()
    reply = _reply(user, out)
    for value, expected in [
        ("delivered", "delivered"),
        ("read", "read"),
        ("delivered", "read"),  # late and out of order: no step back
    ]:
        assert (
            post_whatsapp(
                p.notification(statuses=[p.status(out, value, user)])
            ).status_code
            == 200
        )
        reply.refresh_from_db()
        assert reply.status == expected
    assert queued() == 0
    assert Message.objects.filter(role="user").count() == 1  # nothing new stored


def test_failed_status_records_the_error(post_whatsapp, queued) -> None:
    user, out = "15551230010", p.wamid()
    reply = _reply(user, out)
    failed = p.status(out, "failed", user, error=(131026, "Message undeliverable"))
    assert post_whatsapp(p.notification(statuses=[failed])).status_code == 200
    reply.refresh_from_db()
    assert reply.status == "failed"
    assert reply.error.startswith("131026 Message undeliverable")
    assert queued() == 0


def test_status_for_an_unknown_message_is_recorded_and_ignored(post_whatsapp) -> None:
    body = p.notification(statuses=[p.status(p.wamid(), "read", "15551230011")])
    assert post_whatsapp(body).status_code == 200
    delivery = WebhookDelivery.objects.get()
    assert delivery.summary["statuses"] == 1
    assert delivery.summary["statuses_applied"] == 0


@pytest.mark.parametrize(
    "body",
    [
        p.template_status_update(),
        p.account_update(),
        p.envelope([{"field": "calls", "value": {"calls": [{"id": "c1"}]}}]),
        p.envelope([{"field": "some_future_field", "value": {"x": 1}}]),
        p.envelope([{"field": "messages", "value": {"message_echoes": []}}]),
        {"object": "whatsapp_business_account", "entry": []},
    ],
)
def test_fields_vocoeng_does_not_act_on_are_200_recorded_ignored(
    post_whatsapp, queued, body
) -> None:
    assert post_whatsapp(body).status_code == 200
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "ignored"
    assert not Message.objects.exists()
    assert queued() == 0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe", "body is not UTF-8"),
        (b'["a", "list"]', "not a JSON object"),
        (b'{"object": "page", "entry": []}', "not 'whatsapp_business_account'"),
        (b'{"object": "whatsapp_business_account"}', "entry is missing"),
    ],
)
def test_malformed_body_is_400_with_reason_and_recorded(
    post_whatsapp, queued, raw, reason
) -> None:
    response = post_whatsapp(raw)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "rejected"
    assert reason in delivery.error
    assert queued() == 0


def test_message_without_id_is_skipped_with_reason_others_kept(
    post_whatsapp, queued
) -> None:
    bad = {"from": "15551230012", "type": "text", "text": {"body": "x"}}
    good = p.text("15551230012", "kept")
    assert post_whatsapp(p.notification([bad, good])).status_code == 200
    assert Message.objects.get().content == "kept"
    assert "without id" in WebhookDelivery.objects.get().error


def test_the_view_records_and_queues_and_the_worker_acts(post_whatsapp, queued) -> None:
    from webhooks.tests.conftest import deliveries_process

    body = p.notification([p.text("15551230016", "store and forward")])
    response = post_whatsapp(body, process=False)
    assert response.status_code == 200
    delivery = WebhookDelivery.objects.get()
    assert response.json() == {"status": "ok", "delivery": str(delivery.pk)}
    # Answered with the delivery recorded and one task queued, nothing else.
    assert delivery.verdict == "received"
    assert queued("default") == 1
    assert not Message.objects.exists()
    assert queued() == 0
    assert deliveries_process() == 1
    delivery.refresh_from_db()
    assert delivery.verdict == "processed"
    assert delivery.summary["messages"] == {"queued": 1}
    assert Message.objects.get().content == "store and forward"
    assert queued() == 1
    # A redelivered task (or the sweep's copy) changes nothing.
    from webhooks.tasks import delivery_process

    delivery_process.apply(args=[str(delivery.pk)])
    assert Message.objects.count() == 1
    assert queued() == 1
    assert queued("default") == 0


def test_a_broker_outage_is_answered_200_and_the_task_queued_once_it_is_back(
    post_whatsapp, queued, broker_down, monkeypatch
) -> None:
    from webhooks import handoff
    from webhooks.tests.conftest import deliveries_process

    monkeypatch.setattr(handoff._outbox, "BACKOFF", (0.05, 0.2))
    body = p.notification([p.text("15551230013", "are you there")])
    with broker_down():  # the broker refuses every message
        response = post_whatsapp(body, process=False)
        # Stored, so answered 200: Meta has nothing to retry (nor a failing
        # webhook to disable); the outbox keeps the task and tries again.
        assert response.status_code == 200
        assert WebhookDelivery.objects.get().verdict == "received"
        assert not handoff.published(timeout=0.3)
    assert handoff.published()  # the broker back: queued, once
    assert queued("default") == 1
    assert not Message.objects.exists()
    assert deliveries_process() == 1
    assert WebhookDelivery.objects.get().verdict == "processed"
    assert Message.objects.get().content == "are you there"
    assert queued() == 1
    # Meta's retry of the same delivery (had it not seen the 200) changes nothing.
    assert post_whatsapp(body).status_code == 200
    assert Message.objects.count() == 1
    assert queued() == 1


def test_chains_lost_after_commit_are_enqueued_by_the_sweep(
    post_whatsapp, monkeypatch, queued
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from vocoeng.celery import app
    from webhooks.services import deliveries_sweep
    from webhooks.tests.conftest import deliveries_process

    def broken(*a, **k):
        raise ConnectionError("broker down")

    # No producer to publish the chains with (the outbox keeps its own).
    monkeypatch.setattr(app, "producer_or_acquire", broken)
    body = p.notification([p.text("15551230017", "still there?")])
    assert post_whatsapp(body).status_code == 200
    # The worker stored the message, then the broker refused its chain: the
    # delivery goes back to received, saying why.
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "received"
    assert "reply chains not enqueued" in delivery.error
    assert Message.objects.get().status == "received"
    assert queued() == 0
    monkeypatch.undo()
    assert deliveries_sweep() == 0  # too young: its task may still be queued
    past = timezone.now() - timedelta(minutes=5)
    WebhookDelivery.objects.update(received_at=past)
    Message.objects.update(created_at=past)
    assert deliveries_sweep() == 1
    assert deliveries_process() == 1
    delivery.refresh_from_db()
    assert delivery.verdict == "processed"
    assert delivery.summary["messages"] == {"queued": 1}
    assert queued() == 1
    assert Message.objects.count() == 1
    assert deliveries_sweep() == 0


def test_sweep_enqueues_a_delivery_whose_task_was_lost(post_whatsapp, queued) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from webhooks.services import deliveries_sweep
    from webhooks.tests.conftest import deliveries_process

    body = p.notification([p.text("15551230018", "lost task")])
    assert post_whatsapp(body, process=False).status_code == 200
    assert queued("default") == 1
    from conftest import purge_queues

    purge_queues()  # the broker lost the task
    WebhookDelivery.objects.update(received_at=timezone.now() - timedelta(minutes=5))
    assert deliveries_sweep() == 1
    assert deliveries_process() == 1
    assert WebhookDelivery.objects.get().verdict == "processed"
    assert Message.objects.get().content == "lost task"
    assert queued() == 1


def test_rate_limited_sender_is_stored_without_ai(
    post_whatsapp, queued, settings
) -> None:
    settings.AI_USER_RATE_LIMIT = "2/min"
    user = "15551230014"
    for i in range(3):
        assert (
            post_whatsapp(p.notification([p.text(user, f"msg {i}")])).status_code == 200
        )
    statuses = list(
        Message.objects.order_by("created_at").values_list("status", flat=True)
    )
    assert statuses == ["received", "received", "rate_limited"]
    assert queued() == 2
    # Another sender is not affected.
    post_whatsapp(p.notification([p.text("15551230015", "hello")]))
    assert queued() == 3


def test_a_long_outage_leaves_the_delivery_to_the_sweep_until_it_goes_through(
    post_whatsapp, settings, pubsub_outage, queued, monkeypatch
) -> None:
    """BUS=pubsub and Pub/Sub down for the whole retry budget: the delivery
    stays received with the reason; once Pub/Sub is back the sweep queues it
    again and it is acted on once, with no replay by hand."""
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from vocoeng.models import BusMessage
    from webhooks import services
    from webhooks.services import deliveries_sweep
    from webhooks.tasks import delivery_process

    settings.BUS = "pubsub"
    call_command("pubsub_setup", stdout=io.StringIO())
    body = p.notification([p.text("15551230021", "still there?")])
    assert post_whatsapp(body, process=False).status_code == 200
    assert queued("default") == 1  # its task, run here instead of by a worker
    delivery = WebhookDelivery.objects.get()
    pubsub_outage.down(publish_timeout=0.2)
    tries = []
    real = services.delivery_process_queued
    monkeypatch.setattr(
        services, "delivery_process_queued", lambda **kw: tries.append(1) or real(**kw)
    )
    # Eager: Celery runs each retry at once (no countdown), as many as allowed.
    result = delivery_process.apply(args=[str(delivery.pk)])
    assert result.successful()  # deferred, not failed
    assert len(tries) == delivery_process.max_retries + 1  # the whole budget
    delivery.refresh_from_db()
    assert delivery.verdict == "received"
    assert "publish to" in delivery.error
    assert not BusMessage.objects.exists()  # each try undone whole

    # The sweep takes deliveries older than WEBHOOK_SWEEP_AFTER_SECONDS.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        received_at=timezone.now() - timedelta(minutes=10)
    )
    assert deliveries_sweep() == 1
    assert queued("default") == 2  # the sweep's copy of the task
    pubsub_outage.up()
    assert delivery_process.apply(args=[str(delivery.pk)]).successful()
    delivery.refresh_from_db()
    assert (delivery.verdict, delivery.error) == ("processed", "")
    assert BusMessage.objects.get().pubsub_message_id
    delivery_process.apply(args=[str(delivery.pk)])  # another copy: nothing new
    assert BusMessage.objects.count() == 1
    assert deliveries_sweep() == 0


def test_a_delivery_failing_otherwise_is_recorded_failed_for_a_replay(
    post_whatsapp, queued, monkeypatch
) -> None:
    """Not a dependency down (a bug, say): after the budget, failed with the
    reason; replayed from the admin once mended, it is acted on once."""
    from webhooks import services
    from webhooks.services import delivery_replay
    from webhooks.tasks import delivery_process

    body = p.notification([p.text("15551230022", "hello?")])
    assert post_whatsapp(body, process=False).status_code == 200
    delivery = WebhookDelivery.objects.get()
    real = services.delivery_process_queued

    def broken(**kw):
        raise ValueError("a bug")

    monkeypatch.setattr(services, "delivery_process_queued", broken)
    assert delivery_process.apply(args=[str(delivery.pk)]).failed()
    delivery.refresh_from_db()
    assert (delivery.verdict, delivery.error) == ("failed", "ValueError: a bug")

    monkeypatch.setattr(services, "delivery_process_queued", real)
    delivery_replay(delivery=delivery)
    delivery.refresh_from_db()
    assert delivery.verdict == "processed"
    assert Message.objects.filter(content="hello?").count() == 1


_ODD_SHAPES = [
    None,
    [],
    "text",
    {},
    {"object": "page", "entry": []},
    {"object": "whatsapp_business_account"},
    {"object": "whatsapp_business_account", "entry": {}},
    {"object": "whatsapp_business_account", "entry": [1, None, "x", {}]},
    {
        "object": "whatsapp_business_account",
        "entry": [
            {"changes": "junk"},
            {"changes": [None, 5, {"field": None}, {"field": "messages"}]},
            {
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "contacts": [None, {"wa_id": 1, "profile": "x"}],
                            "messages": [1, None, {}, {"type": None, "from": 5}],
                            "statuses": [None, {"status": 7}, "x"],
                        },
                    }
                ]
            },
        ],
    },
    p.notification(
        [p.text("15550001", "hi")], [p.status("wamid.x", "read", "15550001")]
    ),
]


@pytest.mark.parametrize("body", _ODD_SHAPES)
def test_the_webhooks_check_refuses_exactly_what_the_parser_refuses(body) -> None:
    """The webhook answers 200 or 400 on whatsapp_notification_check alone
    (the worker parses): whatever it lets through, parse_whatsapp takes."""
    from webhooks.parsers import (
        NotANotification,
        parse_whatsapp,
        whatsapp_notification_check,
    )

    try:
        parse_whatsapp(body)
    except NotANotification as exc:
        with pytest.raises(NotANotification) as checked:
            whatsapp_notification_check(body)
        assert str(checked.value) == str(exc)
    else:
        whatsapp_notification_check(body)
