"""The bridge's micro-batches: same decisions per message as one by one."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connection

from conversations.models import Conversation, Message
from vocoeng.models import DeadLetter, ProcessedMessage
from webhooks.bridge.batching import batch_handle
from webhooks.bridge.handling import Delivery, Outcome

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def no_dead_letter_topic(monkeypatch):
    """Record dead letters in the database only (no emulator in these tests)."""
    monkeypatch.setattr(
        "webhooks.bridge.handling.dead_letter_publish", lambda *, letter: None
    )


def delivery(
    n: int, *, body: object = None, key: str | None = None, **attrs: str
) -> Delivery:
    data = (
        body
        if isinstance(body, bytes)
        else json.dumps(
            body
            if body is not None
            else {
                "source": "api",
                "user_id": f"user-{n % 3}",
                "message": f"hello {n}",
                "message_id": f"ext-{n}",
            }
        ).encode()
    )
    attributes = {"kind": "chat_message", **attrs}
    if key:
        attributes["idempotency_key"] = key
    return Delivery(
        subscription="bridge-test",
        message_id=f"pm-{n}",
        data=data,
        attributes=attributes,
        delivery_attempt=1,
    )


def handle(deliveries: list[Delivery]) -> list[Outcome]:
    results = batch_handle(deliveries, retry_seconds=1, stop=threading.Event())
    return [outcome for outcome, _pause in results]


def test_batch_stores_each_message_once_and_counts_conversations(queued):
    outcomes = handle([delivery(n) for n in range(7)])

    assert outcomes == [Outcome.ENQUEUED] * 7
    assert queued() == 7
    assert Message.objects.count() == 7
    by_user = {
        c.external_user_id: (c.message_count, c.last_message)
        for c in Conversation.objects.all()
    }
    # user-0 got messages 0, 3, 6; user-1 got 1, 4; user-2 got 2, 5
    assert by_user == {
        "user-0": (3, "hello 6"),
        "user-1": (2, "hello 4"),
        "user-2": (2, "hello 5"),
    }
    assert set(ProcessedMessage.objects.values_list("state", flat=True)) == {"done"}

    # The same deliveries again (a redelivery): duplicates, nothing new.
    assert handle([delivery(n) for n in range(7)]) == [Outcome.DUPLICATE] * 7
    assert queued() == 7
    assert Conversation.objects.get(external_user_id="user-0").message_count == 3


def test_poison_messages_in_a_batch_do_not_fail_the_others(queued):
    batch = [
        delivery(1),
        delivery(2, body=b"{not json"),
        delivery(3, body={"source": "api", "user_id": "u"}),  # no message text
        delivery(4, tenant="no-such-tenant"),
        delivery(5),
    ]

    outcomes = handle(batch)

    assert outcomes == [
        Outcome.ENQUEUED,
        Outcome.DEAD_LETTERED,
        Outcome.DEAD_LETTERED,
        Outcome.DEAD_LETTERED,
        Outcome.ENQUEUED,
    ]
    assert queued() == 2
    reasons = dict(DeadLetter.objects.values_list("message_id", "reason"))
    assert "not JSON" in reasons["pm-2"]
    assert "message" in reasons["pm-3"]
    assert "unknown tenant" in reasons["pm-4"]
    assert set(Message.objects.values_list("external_id", flat=True)) == {
        "ext-1",
        "ext-5",
    }


def test_a_key_twice_in_one_batch_enqueues_one_chain(queued):
    outcomes = handle([delivery(1, key="same"), delivery(2, key="same"), delivery(3)])

    assert outcomes == [Outcome.ENQUEUED, Outcome.DUPLICATE, Outcome.ENQUEUED]
    assert queued() == 2


def test_claims_left_pending_are_taken_over_when_stale_and_busy_when_fresh(
    queued, settings
):
    """A bridge died mid-message (stale claim), another holds one (fresh)."""
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    stale = now - timedelta(seconds=settings.PUBSUB_BRIDGE_CLAIM_SECONDS + 5)
    for n, claimed_at in ((1, stale), (2, now)):
        ProcessedMessage.objects.create(
            kind="chat_message",
            key=f"pm-{n}",
            message_id=f"pm-{n}",
            state=ProcessedMessage.State.PENDING,
            claimed_at=claimed_at,
        )

    outcomes = handle([delivery(1), delivery(2), delivery(3)])

    assert outcomes == [Outcome.ENQUEUED, Outcome.RETRY, Outcome.ENQUEUED]
    assert queued() == 2
    states = dict(ProcessedMessage.objects.values_list("key", "state"))
    # the taken-over claim and the new one are done; the busy one untouched
    assert states == {"pm-1": "done", "pm-2": "pending", "pm-3": "done"}


def test_a_failing_batch_route_falls_back_to_one_by_one(queued, monkeypatch):
    from conversations import routes

    def broken(*, items):
        raise RuntimeError("batch variant bug")

    monkeypatch.setattr(routes.chat_message, "batch", broken)

    outcomes = handle([delivery(1), delivery(2, body=b"[]"), delivery(3)])

    assert outcomes == [Outcome.ENQUEUED, Outcome.DEAD_LETTERED, Outcome.ENQUEUED]
    assert queued() == 2
    assert Message.objects.count() == 2


def test_broker_down_nacks_the_batch_and_releases_its_claims(queued, monkeypatch):
    from kombu.exceptions import OperationalError

    from vocoeng.celery import app

    def refuse(*args, **kwargs):
        raise OperationalError("broker is down")

    # The outage's own scope: leaving it brings the broker back and keeps
    # the autouse fixture's patch.
    with monkeypatch.context() as outage:
        outage.setattr(app, "producer_or_acquire", refuse)
        outcomes = handle([delivery(1), delivery(2)])

    assert outcomes == [Outcome.RETRY, Outcome.RETRY]
    assert not ProcessedMessage.objects.exists()  # a redelivery can claim again
    assert handle([delivery(1), delivery(2)]) == [Outcome.ENQUEUED] * 2
    assert queued() == 2


def test_a_broker_outage_in_the_middle_of_a_batch_nacks_it_and_loses_nothing(
    queued, monkeypatch
):
    """The broker goes away part-way through the batch: every message comes back.

    The third publish fails; on Redis, where the batch's messages are pushed
    together at its end (templated, by ``Channel.push_many``, or in kombu's
    pipeline), so do the pushes.
    """
    import redis
    from kombu.exceptions import OperationalError
    from kombu.messaging import Producer

    from vocoeng.kombu_redis import Channel

    publish = Producer.publish
    calls = []

    def fail_from_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:
            raise OperationalError("connection lost")
        return publish(self, *args, **kwargs)

    def connection_lost(self, *args, **kwargs):
        raise redis.ConnectionError("connection lost")

    with monkeypatch.context() as outage:  # left, the broker is back
        outage.setattr(Producer, "publish", fail_from_the_third)
        outage.setattr(redis.client.Pipeline, "execute", connection_lost)
        outage.setattr(Channel, "push_many", connection_lost)
        outcomes = handle([delivery(n) for n in range(5)])

    assert outcomes == [Outcome.RETRY] * 5
    assert len(calls) >= 3  # it failed part-way, not before the first publish
    assert not ProcessedMessage.objects.exists()  # redeliveries can claim again

    # The redelivery: every message is enqueued (a chain that reached the
    # broker before the failure, where publishing is not batched, may be
    # there twice; the chain's own claim makes the second a no-op).
    assert handle([delivery(n) for n in range(5)]) == [Outcome.ENQUEUED] * 5
    assert queued() >= 5
    assert Message.objects.count() == 5
    assert set(ProcessedMessage.objects.values_list("state", flat=True)) == {"done"}


def test_the_per_message_lines_of_a_batch_are_each_one_record(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="webhooks.bridge"):
        handle([delivery(1), delivery(2, body=b"{not json")])

    lines = [r.getMessage() for r in caplog.records if r.name == "webhooks.bridge"]
    events = [line.split()[1] for line in lines if line.startswith("bridge_message")]
    assert events == [
        "event=received",
        "event=received",
        "event=dead_lettered",
        "event=enqueued",
    ]
    for record in caplog.records:
        if record.getMessage().startswith("bridge_message"):
            assert record.correlation_id in record.getMessage()


def test_a_batched_line_is_the_record_make_record_makes():
    import logging
    import time

    from webhooks.bridge import handling

    before = time.time()
    handling._local.proto = None  # this thread's first record: makeRecord's
    lines = ["event=%s n=%s", "event=%s other=%s"]
    made = []
    for n, line in enumerate(lines * 2):
        fields = ("received", n)
        cid = {"correlation_id": f"c-{n}"}
        made.append(
            (
                handling._record(line, fields, cid),
                handling.logger.makeRecord(
                    handling.logger.name,
                    logging.INFO,
                    handling.__file__,
                    0,
                    line,
                    fields,
                    None,
                    "_log",
                    cid,
                ),
            )
        )
    after = time.time()
    timing = {"created", "msecs", "relativeCreated"}
    for ours, theirs in made:
        assert type(ours) is logging.LogRecord
        assert {k: v for k, v in vars(ours).items() if k not in timing} == {
            k: v for k, v in vars(theirs).items() if k not in timing
        }
        assert before <= ours.created <= after  # its own time, as made
        assert ours.msecs == int((ours.created - int(ours.created)) * 1000)
        assert ours.getMessage() == theirs.getMessage()


def test_a_database_outage_at_the_claim_is_waited_out_within_the_retry_window(
    queued, monkeypatch, caplog
):
    """Each nack is one of Pub/Sub's 5 attempts: the claim is retried first."""
    import logging
    import time

    from django.db import OperationalError, ProgrammingError

    from webhooks.bridge import batching

    claim = batching.dedup_claim_many
    failures = []

    def down_twice(**kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("connection refused")
        return claim(**kwargs)

    monkeypatch.setattr(batching, "dedup_claim_many", down_twice)
    with caplog.at_level(logging.WARNING, logger="webhooks.bridge"):
        outcomes = handle([delivery(1), delivery(2)])
    assert outcomes == [Outcome.ENQUEUED] * 2
    assert queued() == 2
    assert sum("claim_store_unavailable" in r.msg for r in caplog.records) == 2

    # Down for longer than the window (1 s here): nacked once it has passed.
    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(batching, "dedup_claim_many", down)
    started = time.monotonic()
    assert handle([delivery(3)]) == [Outcome.RETRY]
    assert 0.5 < time.monotonic() - started < 3

    # A statement's own error is not an outage: nacked at once.
    def broken(**kwargs):
        raise ProgrammingError("column does not exist")

    monkeypatch.setattr(batching, "dedup_claim_many", broken)
    started = time.monotonic()
    assert handle([delivery(4)]) == [Outcome.RETRY]
    assert time.monotonic() - started < 0.2


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="terminates a PostgreSQL session"
)
def test_a_lost_database_session_at_the_claim_is_replaced_not_nacked(queued):
    """The server ended the bridge's session (a restart, a failover)."""
    import psycopg

    from conftest import database_url

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    assert handle([delivery(1), delivery(2)]) == [Outcome.ENQUEUED] * 2
    assert queued() == 2
