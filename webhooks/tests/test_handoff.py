"""Deliveries that reach the hand-off together share one INSERT; their tasks go
out from the outbox, many in one message."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from conftest import wait_for
from vocoeng import correlation
from webhooks import handoff
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def _delivery(pk: uuid.UUID | None = None) -> WebhookDelivery:
    return WebhookDelivery(
        id=pk or uuid.uuid4(),
        source="whatsapp",
        headers={"Content-Type": "application/json"},
        body='{"object": "whatsapp_business_account", "entry": []}',
        received_at=timezone.now(),
    )


def _together(deliveries, monkeypatch) -> tuple[list, list[int]]:
    """Hand each delivery off from a thread of its own (correlation id
    ``cid-<i>``): the first alone, the others while its INSERT is held, so
    they wait for the next batch. Returns each thread's error (or None) and
    the size of each INSERT."""
    sizes: list[int] = []
    insert = handoff._insert

    def held(instances):
        sizes.append(len(instances))
        if len(sizes) == 1:
            wait_for(lambda: len(handoff._handing.pending) == len(deliveries) - 1)
        insert(instances)

    monkeypatch.setattr(handoff, "_insert", held)
    errors: list = [None] * len(deliveries)

    def hand_off(i: int) -> None:
        token = correlation.activate(f"cid-{i}")
        try:
            handoff.delivery_hand_off(delivery=deliveries[i])
        except Exception as exc:
            errors[i] = exc
        finally:
            correlation.deactivate(token)
            connection.close()

    threads = [
        threading.Thread(target=hand_off, args=(i,)) for i in range(len(deliveries))
    ]
    threads[0].start()
    wait_for(lambda: sizes)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors, sizes


def _tasks() -> dict[str, str]:
    """Take the queued delivery tasks, once the outbox has published what it
    holds: delivery id -> correlation id."""
    from vocoeng.celery import app

    assert handoff.published()
    tasks = {}
    with app.connection_for_write() as conn:
        while (message := conn.default_channel.basic_get("default")) is not None:
            assert message.headers["task"] == "webhooks.deliveries_process"
            (items,), _, _ = message.decode()
            for delivery_id, correlation_id in items:
                assert delivery_id not in tasks  # each queued once
                tasks[delivery_id] = correlation_id
            message.ack()
    return tasks


def test_deliveries_arriving_together_are_recorded_and_queued_in_one_batch(
    monkeypatch, queued
) -> None:
    deliveries = [_delivery() for _ in range(6)]
    errors, sizes = _together(deliveries, monkeypatch)
    assert errors == [None] * 6
    assert sizes == [1, 5]
    recorded = WebhookDelivery.objects.filter(verdict="received")
    assert {d.pk for d in recorded} == {d.pk for d in deliveries}
    # One task each, carrying its own request's correlation id (not the
    # leader's, who published it).
    assert _tasks() == {str(d.pk): f"cid-{i}" for i, d in enumerate(deliveries)}


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the hand-off's own connection"
)
def test_a_batch_takes_no_connection_from_djangos_pool(queued) -> None:
    # On PostgreSQL the stage inserts on its own connection: the request
    # thread that led the batch never checked one out of the pool (and has
    # none to give back at the end of its request).
    delivery, opened = _delivery(), []

    def hand_off() -> None:
        handoff.delivery_hand_off(delivery=delivery)
        opened.append(connection.connection is not None)

    thread = threading.Thread(target=hand_off)
    thread.start()
    thread.join(30)
    assert opened == [False]
    assert WebhookDelivery.objects.get().pk == delivery.pk
    assert set(_tasks()) == {str(delivery.pk)}


def test_a_row_the_database_refuses_fails_alone(monkeypatch, queued) -> None:
    twin = uuid.uuid4()
    deliveries = [_delivery(), _delivery(), _delivery(twin), _delivery(twin)]
    errors, sizes = _together(deliveries, monkeypatch)
    # The batch of three failed as one statement, then each row went alone.
    assert sizes[:2] == [1, 3]
    assert errors[:2] == [None, None]
    failed = [e for e in errors[2:] if e is not None]
    assert len(failed) == 1
    assert isinstance(failed[0], handoff.DeliveryFailed)
    assert failed[0].delivery == twin
    assert WebhookDelivery.objects.count() == 3
    assert set(_tasks()) == {str(d.pk) for d in deliveries}


def test_with_the_broker_down_deliveries_are_answered_and_queued_once_it_is_back(
    monkeypatch, queued, broker_down
) -> None:
    monkeypatch.setattr(handoff._outbox, "BACKOFF", (0.05, 0.2))
    deliveries = [_delivery() for _ in range(4)]
    with broker_down():
        errors, _ = _together(deliveries, monkeypatch)
        # Committed, so answered: the sender has nothing to retry.
        assert errors == [None] * 4
        wait_for(lambda: handoff._outbox.failures >= 2)  # it keeps trying
        assert not handoff.published(timeout=0.1)
    rows = WebhookDelivery.objects.all()
    assert {r.verdict for r in rows} == {"received"}
    # The broker back: the outbox's next try queues each delivery once.
    assert _tasks() == {str(d.pk): f"cid-{i}" for i, d in enumerate(deliveries)}
    assert handoff._outbox.failures == 0


def test_inside_a_transaction_a_delivery_goes_alone_in_it(queued) -> None:
    from django.db import transaction

    delivery = _delivery()
    token = correlation.activate("cid-in-tx")
    try:
        with transaction.atomic():
            handoff.delivery_hand_off(delivery=delivery)
            assert WebhookDelivery.objects.filter(pk=delivery.pk).exists()
            assert not handoff._handing.leading
            assert handoff._outbox.pending() == 0  # published in the call
    finally:
        correlation.deactivate(token)
    assert _tasks() == {str(delivery.pk): "cid-in-tx"}


def test_inside_a_transaction_a_broker_refusal_fails_the_delivery(
    queued, broker_down
) -> None:
    from django.db import transaction

    delivery = _delivery()
    with broker_down(), transaction.atomic():
        with pytest.raises(handoff.DeliveryFailed):
            handoff.delivery_hand_off(delivery=delivery)
    stored = WebhookDelivery.objects.get()
    assert stored.verdict == "failed" and "broker down" in stored.error
    assert _tasks() == {}


def test_a_batch_stores_what_create_stores() -> None:
    # On PostgreSQL one statement with the rows as a JSON parameter; on
    # SQLite an INSERT ... VALUES: the same rows as create() in both.
    fields = {
        "source": "whatsapp",
        "headers": {"Content-Type": "application/json", "X-Request-Id": "r-1"},
        "body": '{"entry": ["é", "\\ufffd", "\u2028", "\\"]} \ufffd\t"',
        "received_at": timezone.now(),
        "error": "é",
        "summary": {"n": [1, 2.5, None, True, "x"]},
        "processed_at": timezone.now(),
        "replays": 3,
    }
    created = WebhookDelivery.objects.create(**fields)
    batch = [WebhookDelivery(**fields), WebhookDelivery(**fields)]
    handoff._insert(batch)
    assert not batch[0]._state.adding
    names = [f.attname for f in WebhookDelivery._meta.concrete_fields if f.name != "id"]
    stored = WebhookDelivery.objects.in_bulk([created.pk, *(d.pk for d in batch)])
    first = {n: getattr(stored[created.pk], n) for n in names}
    assert first["body"] == fields["body"] and first["summary"] == fields["summary"]
    for delivery in batch:
        assert {n: getattr(stored[delivery.pk], n) for n in names} == first


def test_a_batch_is_all_or_nothing() -> None:
    from django.db import DatabaseError

    twin = uuid.uuid4()
    with pytest.raises(DatabaseError):
        handoff._insert([_delivery(), _delivery(twin), _delivery(twin)])
    assert not WebhookDelivery.objects.exists()


def test_the_batch_task_processes_each_delivery_under_its_own_correlation_id(
    monkeypatch, queued
) -> None:
    from vocoeng.celery import app
    from webhooks import services, tasks

    seen = []

    def process(*, delivery_id):
        seen.append((delivery_id, correlation.current()))
        if delivery_id == "d-bad":
            raise RuntimeError("boom")

    monkeypatch.setattr(services, "delivery_process_queued", process)
    items = [["d-1", "cid-1"], ["d-bad", "cid-bad"], ["d-3", None]]
    tasks.deliveries_process.apply(args=[items])
    # One failing does not stop the others.
    assert seen == [("d-1", "cid-1"), ("d-bad", "cid-bad"), ("d-3", None)]
    # It goes on alone, as the single-delivery task with its retries.
    with app.connection_for_write() as conn:
        message = conn.default_channel.basic_get("default")
        assert conn.default_channel.basic_get("default") is None
    assert message.headers["task"] == "webhooks.delivery_process"
    assert message.decode()[0] == ["d-bad"]
    assert message.headers[correlation.HEADER] == "cid-bad"
    assert message.headers["eta"] is not None  # after a pause, not at once
    message.ack()
