"""The reply chain through a real ``celery worker`` process and the broker."""

from __future__ import annotations

import pytest

from conftest import wait_for
from conversations.models import AICall, Message
from conversations.routes import chat_message
from vocoeng.models import BusMessage

pytestmark = [pytest.mark.timeout(120)]


def _send(message_id: str, text: str = "Hello worker", user: str = "w1") -> None:
    signature = chat_message(
        data={
            "source": "api",
            "user_id": user,
            "message": text,
            "message_id": message_id,
        },
        attributes={},
    )
    if signature is not None:
        signature.apply_async()


def test_one_message_yields_one_stored_reply_with_usage(celery_worker_factory) -> None:
    celery_worker_factory()
    _send("wk-1")
    reply = wait_for(
        lambda: Message.objects.filter(
            role="assistant", status=Message.Status.DELIVERED
        ).first()
    )
    assert reply.reply_to.external_id == "wk-1"
    assert reply.total_tokens > 0
    assert reply.provider == "echo"
    assert BusMessage.objects.filter(key=str(reply.reply_to_id)).count() == 1
    assert (
        AICall.objects.filter(message=reply.reply_to, status="succeeded").count() == 1
    )


def test_the_same_message_again_yields_no_second_reply(celery_worker_factory) -> None:
    worker = celery_worker_factory()
    _send("wk-2")
    wait_for(lambda: Message.objects.filter(role="assistant").exists())
    _send("wk-2")  # a duplicate delivery after the reply exists: nothing to do
    # A duplicate that arrives while the first is still queued enqueues a second
    # chain; the claim makes it a no-op. Force that case by hand:
    inbound = Message.objects.get(external_id="wk-2")
    from conversations.routes import reply_chain

    reply_chain(inbound).apply_async()
    wait_for(lambda: worker.output().count("idempotent_skip") >= 1)
    assert Message.objects.filter(role="assistant").count() == 1
    assert AICall.objects.count() == 1


def test_a_redis_worker_leaves_no_unacked_entries_behind(
    celery_worker_factory, settings
) -> None:
    """Batched receives and acks (vocoeng/kombu_redis.py) keep Redis clean."""
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("the unacked entries are the Redis transport's")
    import json

    from vocoeng.celery import app

    celery_worker_factory()
    for i in range(12):
        _send(f"wk-unacked-{i}", user=f"u-unacked-{i}")
    replies = wait_for(
        lambda: (
            (
                found := list(
                    Message.objects.filter(
                        role="assistant",
                        status=Message.Status.DELIVERED,
                        reply_to__external_id__startswith="wk-unacked-",
                    )
                )
            )
            and len(found) == 12
            and found
        )
    )
    ids = {str(r.pk) for r in replies} | {str(r.reply_to_id) for r in replies}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        key = channel.global_keyprefix + channel.unacked_key

        def ours_unacked() -> list:
            # Other tests may leave entries (a killed worker's); count ours.
            with channel.conn_or_acquire() as client:
                entries = client.hvals(key)
            return [
                e
                for e in entries
                if any(i in json.loads(e)[0]["headers"]["argsrepr"] for i in ids)
            ]

        # The last acks of the chains are removed on the loop's next turn.
        wait_for(lambda: ours_unacked() == [])
