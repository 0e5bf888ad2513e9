"""Two tenants' WhatsApp numbers and AiSensy accounts on one deployment."""

from __future__ import annotations

import pytest

from conversations.models import Conversation, Message
from conversations.services import reply_process_sync
from vocoeng.models import Channel, Tenant
from vocoeng.testing.fake_graph import FakeGraphServer
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

NUMBER_A, NUMBER_B = "100000000000001", "200000000000002"


@pytest.fixture
def channels(db):
    acme = Tenant.objects.create(slug="acme", name="Acme")
    globex = Tenant.objects.create(slug="globex", name="Globex")
    a = Channel.objects.create(
        tenant=acme,
        name="Acme support",
        kind=Channel.Kind.WHATSAPP,
        phone_number_id=NUMBER_A,
        app_secret="secret-a",
        access_token="token-a",
        verify_token="verify-a",
        system_prompt="You are Acme's assistant.",
    )
    b = Channel.objects.create(
        tenant=globex,
        name="Globex sales",
        kind=Channel.Kind.WHATSAPP,
        phone_number_id=NUMBER_B,
        app_secret="secret-b",
        access_token="token-b",
        system_prompt="You are Globex's assistant.",
    )
    return a, b


@pytest.fixture
def graph(settings):
    with FakeGraphServer(valid_tokens={"token-a", "token-b"}) as server:
        settings.WHATSAPP_API_BASE = server.base_url + "/v21.0"
        settings.WHATSAPP_ACCESS_TOKEN = "env-token-not-valid-there"
        yield server


def _post(client, number: str, user: str, text: str, secret: str):
    raw, sig = p.signed(
        p.notification([p.text(user, text)], phone_number_id=number), secret=secret
    )
    return client.post(
        "/webhooks/whatsapp/",
        data=raw,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=sig,
    )


def test_each_number_is_verified_with_its_own_secret(client, channels, queued):
    a, b = channels
    assert _post(client, NUMBER_A, "15550000001", "hi A", "secret-a").status_code == 200
    assert _post(client, NUMBER_B, "15550000002", "hi B", "secret-b").status_code == 200
    conv_a = Conversation.objects.get(external_user_id="15550000001")
    conv_b = Conversation.objects.get(external_user_id="15550000002")
    assert (conv_a.tenant.slug, conv_a.account_id) == ("acme", a.pk)
    assert (conv_b.tenant.slug, conv_b.account_id) == ("globex", b.pk)
    assert queued() == 2


def test_a_secret_rotated_by_another_process_is_taken_at_once(client, channels, queued):
    a, _ = channels
    assert _post(client, NUMBER_A, "15550000001", "one", "secret-a").status_code == 200
    # Another web process (or the admin elsewhere) rotates the secret: no
    # signal reaches this process, whose kept secret no longer matches.
    Channel.objects.filter(pk=a.pk).update(app_secret="secret-a2")
    assert _post(client, NUMBER_A, "15550000001", "two", "secret-a2").status_code == 200
    assert (
        _post(client, NUMBER_A, "15550000001", "three", "secret-a").status_code == 403
    )
    assert queued() == 2


def test_the_secrets_read_are_kept_between_requests(client, channels, queued):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert _post(client, NUMBER_A, "15550000001", "one", "secret-a").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = _post(client, NUMBER_A, "15550000001", "two", "secret-a")
    assert response.status_code == 200
    assert queued() == 2
    # The webhook's own statement (the worker finds the channel again).
    quote = connection.ops.quote_name
    lookup = f"SELECT {quote('phone_number_id')}, {quote('app_secret')} FROM"
    assert not [q for q in queries if q["sql"].startswith(lookup)]


def test_a_channel_deactivated_here_is_refused_at_once(client, channels, queued):
    a, _ = channels
    assert _post(client, NUMBER_A, "15550000001", "one", "secret-a").status_code == 200
    a.is_active = False
    a.save()
    # The environment's number (any id, its own secret) is all that is left.
    response = _post(client, NUMBER_A, "15550000001", "two", "secret-a")
    assert response.status_code == 403
    assert queued() == 1


@pytest.mark.parametrize("secret", ["secret-b", p.APP_SECRET])
def test_signature_made_with_another_channels_secret_is_refused(
    client, channels, queued, secret
):
    response = _post(client, NUMBER_A, "15550000001", "hi", secret)
    assert response.status_code == 403
    assert not Message.objects.exists()
    assert queued() == 0
    refused = WebhookDelivery.objects.get()
    assert refused.verdict == WebhookDelivery.Verdict.UNAUTHORIZED


def test_unknown_number_is_recorded_and_refused(client, channels, settings, queued):
    settings.WHATSAPP_PHONE_NUMBER_ID = p.PHONE_NUMBER_ID  # the default's own
    response = _post(client, "999999", "15550000003", "hi", p.APP_SECRET)
    assert response.status_code == 403
    assert "unknown phone_number_id 999999" in response.json()["error"]
    refused = WebhookDelivery.objects.get()
    assert refused.verdict == WebhookDelivery.Verdict.UNAUTHORIZED
    assert "999999" in refused.error
    assert not Message.objects.exists()


def test_default_channel_from_the_environment_needs_no_row(client, queued):
    # No Channel rows: WHATSAPP_APP_SECRET signs, the default tenant owns it.
    assert (
        _post(client, p.PHONE_NUMBER_ID, "1555", "hi", p.APP_SECRET).status_code == 200
    )
    conversation = Conversation.objects.get()
    assert conversation.tenant.slug == "default"
    assert conversation.account_id is None


def test_each_channel_answers_with_its_own_token_and_prompt(
    client, channels, graph, fake_ai, queued
):
    _post(client, NUMBER_A, "15550000001", "hello", "secret-a")
    _post(client, NUMBER_B, "15550000002", "hello", "secret-b")
    for user in ("15550000001", "15550000002"):
        reply = reply_process_sync(
            message=Message.objects.get(conversation__external_user_id=user)
        )
        assert reply is not None and reply.status == Message.Status.SENT, reply.error
    prompts = [
        call.body["messages"][0]["content"]
        for call in fake_ai.calls("/v1/chat/completions")
    ]
    assert prompts == ["You are Acme's assistant.", "You are Globex's assistant."]
    paths = [r.path for r in graph.requests if r.status == 200]
    assert paths == [f"/v21.0/{NUMBER_A}/messages", f"/v21.0/{NUMBER_B}/messages"]
    # Only Acme's token is good now: Globex's next reply must fail, so it was
    # sent with Globex's own token above, not Acme's or the environment's.
    graph.valid_tokens = {"token-a"}
    _post(client, NUMBER_B, "15550000002", "again", "secret-b")
    again = Message.objects.get(content="again", role="user")
    reply = reply_process_sync(message=again)
    assert reply is not None and reply.status == Message.Status.FAILED


def test_handshake_accepts_a_channels_verify_token(client, channels):
    ok = client.get(
        "/webhooks/whatsapp/",
        {"hub.mode": "subscribe", "hub.verify_token": "verify-a", "hub.challenge": "7"},
    )
    assert ok.status_code == 200 and ok.content == b"7"


def test_aisensy_account_is_found_by_its_secret(client, queued):
    tenant = Tenant.objects.create(slug="initech", name="Initech")
    account = Channel.objects.create(
        tenant=tenant,
        name="Initech AiSensy",
        kind=Channel.Kind.AISENSY,
        aisensy_webhook_secret="initech-secret",
        aisensy_api_key="initech-key",
    )
    body = {
        "topic": "message.sender.user",
        "data": {
            "message": {
                "messageId": "ais-1",
                "phone_number": "+15550001111",
                "message_type": "TEXT",
                "message_content": {"text": "hello"},
                "sender": "USER",
            }
        },
    }
    for secret, status in (("wrong", 403), ("initech-secret", 200)):
        response = client.post(
            "/webhooks/aisensy/",
            data=body,
            content_type="application/json",
            HTTP_X_AISENSY_SECRET=secret,
        )
        assert response.status_code == status, response.content
    conversation = Conversation.objects.get()
    assert (conversation.tenant, conversation.account) == (tenant, account)
    # A replay goes to the same account (the secret is not kept; its id is).
    delivery = WebhookDelivery.objects.get(verdict="processed")
    assert delivery.headers["X-VocoEng-Channel"] == str(account.pk)


def test_secrets_are_encrypted_at_rest(channels):
    from django.db import connection

    a, _ = channels
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT app_secret, access_token FROM vocoeng_channel WHERE id = %s",
            [a.pk],
        )
        stored = cursor.fetchone()
    assert "secret-a" not in stored[0] and "token-a" not in stored[1]
    assert stored[0].startswith("gAAAAA")  # a Fernet token
    assert Channel.objects.get(pk=a.pk).app_secret == "secret-a"


def test_bus_messages_name_their_channel_by_id(channels) -> None:
    from conversations.routes import chat_message
    from vocoeng.routing import PermanentMessageError

    a, _ = channels
    data = {
        "source": "whatsapp",
        "user_id": "1555",
        "message": "hi",
        "message_id": "m1",
    }
    assert chat_message(data=data, attributes={"channel_id": str(a.pk)}) is not None
    conversation = Conversation.objects.get()
    assert (conversation.account, conversation.tenant.slug) == (a, "acme")
    for bad in ("999999", "abc"):
        with pytest.raises(PermanentMessageError, match="channel_id"):
            chat_message(
                data={**data, "message_id": bad}, attributes={"channel_id": bad}
            )
    # A channel of another tenant than the one named is refused.
    with pytest.raises(PermanentMessageError, match="unknown channel_id"):
        chat_message(
            data={**data, "message_id": "m2"},
            attributes={"channel_id": str(a.pk), "tenant": "globex"},
        )


def test_a_channels_own_rate_limit_applies(client, channels, queued) -> None:
    a, _ = channels
    a.rate_limit = "1/min"
    a.save()
    for text in ("one", "two"):
        assert (
            _post(client, NUMBER_A, "15550000009", text, "secret-a").status_code == 200
        )
    statuses = dict(Message.objects.values_list("content", "status"))
    assert statuses == {"one": "received", "two": "rate_limited"}


def test_database_down_during_the_channel_lookup_is_503(client, monkeypatch) -> None:
    from django.db import OperationalError

    from vocoeng import channels as lookup

    def down(**_):
        raise OperationalError("connection refused")

    monkeypatch.setattr(lookup, "whatsapp_app_secrets", down)
    monkeypatch.setattr(lookup, "aisensy_channel_for_secret", down)
    response = _post(client, NUMBER_A, "1555", "hi", "secret-a")
    assert response.status_code == 503  # Meta retries; nothing was half-done
    response = client.post(
        "/webhooks/aisensy/",
        data={},
        content_type="application/json",
        HTTP_X_AISENSY_SECRET="x",
    )
    assert response.status_code == 503
    assert not Message.objects.exists()


def _channel_queries(queries) -> int:
    from django.db import connection

    table = connection.ops.quote_name(Channel._meta.db_table)
    return sum(
        1 for q in queries if q["sql"].startswith("SELECT") and table in q["sql"]
    )


def test_within_a_task_each_number_is_read_once(channels, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from vocoeng.channels import (
        UnknownChannel,
        channels_remembered,
        whatsapp_channels_resolve,
    )

    a, b = channels
    settings.WHATSAPP_PHONE_NUMBER_ID = p.PHONE_NUMBER_ID  # the default's own
    with CaptureQueriesContext(connection) as queries, channels_remembered():
        assert whatsapp_channels_resolve(phone_number_ids={NUMBER_A}) == {NUMBER_A: a}
        assert whatsapp_channels_resolve(phone_number_ids={NUMBER_A, NUMBER_B}) == {
            NUMBER_A: a,
            NUMBER_B: b,
        }
        for _ in range(2):  # an unknown number stays unknown, read once
            with pytest.raises(UnknownChannel, match="999999"):
                whatsapp_channels_resolve(phone_number_ids={NUMBER_B, "999999"})
        assert whatsapp_channels_resolve(phone_number_ids={p.PHONE_NUMBER_ID}) == {
            p.PHONE_NUMBER_ID: None  # the environment's number
        }
    assert _channel_queries(queries) == 4  # A; B; 999999; the default's id
    # Outside the block every call reads again: a number deactivated since.
    Channel.objects.filter(pk=a.pk).update(is_active=False)
    with pytest.raises(UnknownChannel, match=NUMBER_A):
        whatsapp_channels_resolve(phone_number_ids={NUMBER_A})


def test_the_batch_task_reads_each_number_once_and_routes_each_delivery(
    client, channels, queued
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from webhooks import tasks
    from webhooks.tests.conftest import deliveries_taken

    client.post = client.post_only  # recorded and queued, not yet processed
    sent = [(NUMBER_A, "secret-a"), (NUMBER_B, "secret-b")] * 3
    for n, (number, secret) in enumerate(sent):
        response = _post(client, number, f"1555000000{n}", f"hi {n}", secret)
        assert response.status_code == 200
    items = deliveries_taken()  # what the outbox published: one task for all
    assert len(items) == 6
    with CaptureQueriesContext(connection) as queries:
        tasks.deliveries_process.apply(args=[items])
    assert _channel_queries(queries) == 2  # one per number
    routed = Conversation.objects.values_list("external_user_id", "account_id")
    assert sorted(routed) == [(f"1555000000{n}", channels[n % 2].pk) for n in range(6)]
    assert queued() == 6
