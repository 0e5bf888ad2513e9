from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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

    def post(
        body, *, signature: str | None = None, sign: bool = True, process: bool = True
    ):
        """``process=False``: leave the delivery's task queued (no worker step):
        returns once the outbox has published it (a few ms after the answer)."""
        from webhooks import handoff

        raw, sig = payloads.signed(body)
        headers = {}
        if sign:
            headers["HTTP_X_HUB_SIGNATURE_256"] = signature or sig
        send = client.post if process else client.post_only
        response = send(
            "/webhooks/whatsapp/", data=raw, content_type="application/json", **headers
        )
        if not process:
            handoff.published()
        return response

    return post


def _refuse(*args, **kwargs):
    raise ConnectionError("broker down")


@pytest.fixture
def broker_down():
    """Return ``down()``, a context manager: inside it the broker refuses everything.

    Both ways a message leaves this process are refused: kombu's
    ``Producer.publish`` (under Celery's apply_async) and, on our Redis
    transport, the LPUSH of templated messages (``vocoeng.celery_batch``: the
    webhook hand-off keeps its message template across requests). The outage
    has a monkeypatch of its own, so leaving the block brings the broker back
    and leaves whatever else the test patched in place.
    """
    from kombu import Producer

    from vocoeng.kombu_redis import Channel

    @contextmanager
    def down() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as outage:
            outage.setattr(Producer, "publish", _refuse)
            outage.setattr(Channel, "push_many", _refuse)
            yield

    return down


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


# The webhooks a worker finishes: the view records and enqueues, a
# `webhooks.deliveries_process` task on the default queue acts on the delivery.
WORKER_PATHS = ("/webhooks/whatsapp/", "/webhooks/aisensy/")


def deliveries_process() -> int:
    """Run the queued delivery tasks, as a worker does.

    The hand-off's outbox is flushed first. Each ``webhooks.delivery_process``
    or ``webhooks.deliveries_process`` message is taken off the real broker's
    ``default`` queue, run in this process (on the test database) and acked;
    any other task is put back. Returns how many deliveries they named.
    """
    from vocoeng.celery import app
    from webhooks import handoff
    from webhooks.tasks import deliveries_process, delivery_process

    assert handoff.published(), "the hand-off's outbox did not publish"
    tasks = {t.name: t for t in (delivery_process, deliveries_process)}
    ran, others = 0, []
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get("default", no_ack=False)) is not None:
            task = tasks.get(message.headers.get("task"))
            if task is None:
                others.append(message)
                continue
            args, kwargs, _ = message.decode()
            task.apply(args=args, kwargs=kwargs, task_id=message.headers["id"])
            message.ack()
            ran += len(args[0]) if task is deliveries_process else 1
        for message in others:
            message.reject(requeue=True)
    return ran


def deliveries_taken(
    expected: int | None = None, timeout: float = 30
) -> list[list[str | None]]:
    """Take the queued ``webhooks.deliveries_process`` messages off the broker
    (the outbox published, without running them); return their items, the
    ``[delivery id, correlation id]`` pairs, in one list (for one task).

    ``expected``: the deliveries come from another process's outbox (a web
    process under test), which publishes when it does: take messages until
    they name that many, or ``timeout`` passes.
    """
    from vocoeng.celery import app
    from webhooks import handoff

    if expected is None:
        assert handoff.published(), "the hand-off's outbox did not publish"
    deadline = time.monotonic() + timeout
    items: list[list[str | None]] = []
    with app.connection_for_write() as conn:
        while expected is None or len(items) < expected:
            message = conn.default_channel.basic_get("default")
            if message is None:
                if expected is None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
                continue
            assert message.headers["task"] == "webhooks.deliveries_process"
            items += message.decode()[0][0]
            message.ack()
    return items


@pytest.fixture
def client(client, request):
    """Django's test client; a WhatsApp/AiSensy POST is followed by its task.

    The view answers once the delivery is recorded and queued; the task that
    acts on it is then run here (see deliveries_process), so a test sees what
    the sender's delivery became. With a real worker in the test
    (celery_worker_factory) the worker runs it instead.
    """
    post = client.post_only = client.post
    if "celery_worker_factory" in request.fixturenames:
        return client

    def post_then_process(path, *args, **kwargs):
        response = post(path, *args, **kwargs)
        if path in WORKER_PATHS:
            deliveries_process()
        return response

    client.post = post_then_process
    return client
