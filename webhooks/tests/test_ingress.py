"""The API source and the Pub/Sub push endpoint (with OIDC verification)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from conversations.models import Message
from vocoeng.models import Tenant
from vocoeng.services import api_key_create
from webhooks.inbound import REQUEUE_AFTER
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True)]

AUDIENCE = "https://vocoeng.example.com/webhooks/pubsub/"


@pytest.fixture
def api_key():
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    _, plaintext = api_key_create(tenant=tenant, name="test")
    return plaintext


def _api(client, body, key):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/webhooks/api/",
        data=raw,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {key}",
    )


def test_api_message_is_accepted_for_the_keys_tenant(client, api_key, queued) -> None:
    body = {"source": "api", "user_id": "u-1", "message": "Hi", "message_id": "m-1"}
    response = _api(client, body, api_key)
    assert response.status_code == 202
    data = response.json()
    inbound = Message.objects.get()
    assert data["id"] == str(inbound.pk)
    assert data["message_id"] == "m-1"
    assert inbound.conversation.tenant.slug == "acme"
    assert queued() == 1
    again = _api(client, body, api_key)  # the same message_id again
    assert again.status_code == 202
    assert again.json()["id"] == str(inbound.pk)
    assert again.json()["outcome"] == "duplicate"
    assert Message.objects.count() == 1
    assert queued() == 1


def test_api_message_without_id_gets_one(client, api_key, queued) -> None:
    response = _api(client, {"user_id": "u-2", "message": "Hello"}, api_key)
    assert response.status_code == 202
    assert response.json()["message_id"].startswith("api-")
    assert Message.objects.get().channel == "api"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{nope", "body is not JSON"),
        ({"message": "no user"}, "user_id"),
        ({"user_id": "u", "message": "   "}, "message is blank"),
        ({"user_id": 5, "message": "x"}, "user_id"),
    ],
)
def test_api_bad_input_is_400_with_reason(client, api_key, body, reason) -> None:
    response = _api(client, body, api_key)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not Message.objects.exists()
    assert WebhookDelivery.objects.get().verdict == "rejected"


def test_api_with_the_broker_down_is_503_and_a_later_retry_enqueues(
    client, api_key, queued, broker_down
) -> None:
    """BUS=direct: the message commits, then its chain's enqueue fails."""
    body = {"user_id": "u-9", "message": "Hi", "message_id": "m-down"}
    with broker_down():
        response = _api(client, body, api_key)
    assert response.status_code == 503
    assert response.json() == {"error": "temporarily unavailable, retry"}
    wait = int(response["Retry-After"])
    assert wait > REQUEUE_AFTER.total_seconds()
    failed = WebhookDelivery.objects.get()
    assert failed.verdict == "failed"
    assert "broker down" in failed.error
    stored = Message.objects.get()
    assert stored.status == Message.Status.RECEIVED
    assert queued() == 0
    # The client retries after Retry-After (the clock moved on that much).
    Message.objects.filter(pk=stored.pk).update(
        created_at=stored.created_at - dt.timedelta(seconds=wait)
    )
    again = _api(client, body, api_key)
    assert again.status_code == 202
    assert again.json()["id"] == str(stored.pk)
    assert again.json()["outcome"] == "queued"
    assert Message.objects.count() == 1
    assert queued() == 1


def test_api_with_pubsub_unreachable_is_503_with_nothing_written(
    client, api_key, settings, pubsub_outage
) -> None:
    """BUS=pubsub: the publish fails inside the transaction; nothing stays."""
    from vocoeng.models import BusMessage

    settings.BUS = "pubsub"
    pubsub_outage.down(publish_timeout=1.0)
    started = time.monotonic()
    response = _api(
        client, {"user_id": "u", "message": "x", "message_id": "ps-1"}, api_key
    )
    took = time.monotonic() - started
    assert response.status_code == 503
    assert "Retry-After" in response
    assert took < 20  # PUBSUB_PUBLISH_TIMEOUT_SECONDS, not the client's minutes
    assert not Message.objects.exists()
    assert not BusMessage.objects.exists()
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "failed"
    assert "publish to" in delivery.error


def test_api_without_or_with_a_bad_key_is_401(client) -> None:
    body = json.dumps({"user_id": "u", "message": "x"})
    assert client.post("/webhooks/api/", body, "application/json").status_code == 401
    bad = client.post(
        "/webhooks/api/", body, "application/json", HTTP_AUTHORIZATION="Token voc_x_y"
    )
    assert bad.status_code == 401
    assert not Message.objects.exists()


def test_api_message_id_of_another_tenant_is_refused(client, api_key) -> None:
    body = {"user_id": "u", "message": "x", "message_id": "shared-1"}
    assert _api(client, body, api_key).status_code == 202
    other = Tenant.objects.create(slug="other", name="Other")
    _, other_key = api_key_create(tenant=other)
    response = _api(client, body, other_key)
    assert response.status_code == 400
    assert "another tenant" in response.json()["error"]


# --- Pub/Sub push -------------------------------------------------------------


def _push(client, data, *, attributes=None, token=None, message_id="1001", sub=None):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    envelope = {
        "message": {
            "data": base64.b64encode(raw).decode(),
            "attributes": attributes or {},
            "messageId": message_id,
            "publishTime": "2024-01-01T12:00:00Z",
        },
        "subscription": sub or "projects/vocoeng-local/subscriptions/push-sub",
    }
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(
        "/webhooks/pubsub/", json.dumps(envelope), "application/json", **headers
    )


CHAT = {
    "source": "api",
    "user_id": "p-1",
    "message": "from pubsub",
    "message_id": "ps-1",
}


def test_push_routes_a_chat_message_and_enqueues_before_2xx(client, queued) -> None:
    response = _push(client, CHAT, attributes={"kind": "chat_message"})
    assert response.status_code == 200
    assert response.json()["outcome"] == "queued"
    assert Message.objects.get().external_id == "ps-1"
    assert queued() == 1


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [({"correlation_id": "order-77"}, "order-77"), ({}, "pubsub-1001")],
)
def test_push_work_carries_the_messages_correlation_id(
    client, queued, attributes, expected
) -> None:
    # As the bridge does: the message's id, not the push request's.
    from vocoeng import correlation
    from vocoeng.celery import app

    response = _push(client, CHAT, attributes={"kind": "chat_message", **attributes})
    assert response.status_code == 200
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("ai")
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers[correlation.HEADER] == expected


def test_push_kind_comes_from_the_subscription_name(client, queued) -> None:
    sub = "projects/p/subscriptions/vocoeng-messages-push"
    assert _push(client, CHAT, sub=sub).status_code == 200
    assert queued() == 1


@pytest.mark.parametrize(
    ("data", "attributes", "reason"),
    [
        (b"not json", {"kind": "chat_message"}, "body is not JSON"),
        ({"user_id": "x"}, {"kind": "chat_message"}, "message"),
        (CHAT, {"kind": "no_such_kind"}, "unknown message kind"),
        (CHAT, {}, "no kind attribute"),
    ],
)
def test_push_permanent_error_is_acked_and_recorded(
    client, queued, data, attributes, reason
) -> None:
    response = _push(client, data, attributes=attributes)
    assert response.status_code == 200  # acked: redelivery cannot help
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == "rejected"
    assert reason in delivery.error
    assert queued() == 0


def test_push_broker_failure_is_503_so_pubsub_redelivers(
    client, monkeypatch, queued
) -> None:
    from celery.canvas import Signature

    def broken(self, *a, **k):
        raise ConnectionError("broker down")

    monkeypatch.setattr(Signature, "apply_async", broken)
    assert _push(client, CHAT, attributes={"kind": "chat_message"}).status_code == 503
    monkeypatch.undo()
    # Redelivery: the stored message still waits, so its chain is enqueued now.
    assert _push(client, CHAT, attributes={"kind": "chat_message"}).status_code == 200
    assert queued() == 1
    assert Message.objects.count() == 1


def test_push_malformed_envelope_is_400(client) -> None:
    response = client.post("/webhooks/pubsub/", "{}", "application/json")
    assert response.status_code == 400
    assert "envelope" in response.json()["error"]


# --- OIDC ---------------------------------------------------------------------


def _key_and_cert(kid: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def google_keys():
    return {kid: _key_and_cert(kid) for kid in ("google-kid", "rogue-kid")}


@pytest.fixture
def oidc(settings, tmp_path, google_keys):
    certs = tmp_path / "certs.json"
    certs.write_text(json.dumps({"google-kid": google_keys["google-kid"][1]}))
    settings.PUBSUB_PUSH_AUDIENCE = AUDIENCE
    settings.PUBSUB_PUSH_CERTS_FILE = str(certs)
    settings.PUBSUB_PUSH_SERVICE_ACCOUNT = "push@vocoeng.iam.gserviceaccount.com"

    def token(kid="google-kid", **overrides) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "sub": "1234567890",
            "email": "push@vocoeng.iam.gserviceaccount.com",
            "email_verified": True,
            **overrides,
        }
        signer = crypt.RSASigner.from_string(google_keys[kid][0], key_id=kid)
        return jwt.encode(signer, claims).decode()

    return token


def test_push_with_a_valid_oidc_token_is_accepted(client, oidc, queued) -> None:
    response = _push(client, CHAT, attributes={"kind": "chat_message"}, token=oidc())
    assert response.status_code == 200
    assert queued() == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"aud": "https://elsewhere.example.com/"},
        {"iss": "https://evil.example.com"},
        {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        {"email": "someone@else.iam.gserviceaccount.com"},
        {"kid": "rogue-kid"},
    ],
)
def test_push_with_an_invalid_oidc_token_is_401_and_nothing_routed(
    client, oidc, queued, bad
) -> None:
    kid = bad.pop("kid", "google-kid")
    token = oidc(kid=kid, **bad)
    response = _push(client, CHAT, attributes={"kind": "chat_message"}, token=token)
    assert response.status_code == 401
    assert not Message.objects.exists()
    assert queued() == 0
    assert WebhookDelivery.objects.get().verdict == "unauthorized"


def test_push_without_a_token_is_401_when_an_audience_is_set(client, oidc) -> None:
    assert _push(client, CHAT, attributes={"kind": "chat_message"}).status_code == 401
