from __future__ import annotations

import pytest

from webhooks.tests import payloads


@pytest.fixture(autouse=True)
def _whatsapp_settings(settings) -> None:
    settings.WHATSAPP_APP_SECRET = payloads.APP_SECRET
    settings.WHATSAPP_VERIFY_TOKEN = "verify-me"
    settings.AISENSY_WEBHOOK_SECRET = "aisensy-secret"
    settings.WHATSAPP_ACCESS_TOKEN = ""
    settings.WHATSAPP_PHONE_NUMBER_ID = ""
    settings.WHATSAPP_FALLBACK_TEMPLATE = ""
    settings.AI_USER_RATE_LIMIT = "20/min"
    settings.BUS = "direct"


@pytest.fixture
def post_whatsapp(client):
    """POST a signed (or deliberately mis-signed) body to the WhatsApp webhook."""

    def post(body, *, signature: str | None = None, sign: bool = True):
        raw, sig = payloads.signed(body)
        headers = {}
        if sign:
            headers["HTTP_X_HUB_SIGNATURE_256"] = signature or sig
        return client.post(
            "/webhooks/whatsapp/", data=raw, content_type="application/json", **headers
        )

    return post


def broker_queue_size(queue: str = "ai") -> int:
    """Return how many tasks wait in ``queue`` of the real broker."""
    from vocoeng.celery import app

    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue).message_count


@pytest.fixture
def queued():
    """Empty the broker and return a function counting reply chains enqueued.

    Each chain starts with one ``reply_generate`` task on the ``ai`` queue.
    """
    from conftest import purge_queues

    purge_queues()
    yield broker_queue_size
    purge_queues()
