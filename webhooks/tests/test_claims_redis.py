"""The bus's dedup claims kept in Redis (PUBSUB_BRIDGE_DEDUP=redis): the same
decisions as the database's, on a real Redis."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.db import DatabaseError

from vocoeng.claims_redis import ClaimStoreUnavailable, RedisClaims, redis_store
from vocoeng.models import DeadLetter, ProcessedMessage
from vocoeng.testing.process import free_port
from vocoeng.testing.redis import URL, needs_redis
from webhooks.bridge.batching import batch_handle
from webhooks.bridge.dedup import (
    Claim,
    dedup_claim,
    dedup_claim_many,
    dedup_finish,
    dedup_finish_many,
    dedup_release,
    dedup_release_many,
)
from webhooks.bridge.handling import Outcome, message_handle
from webhooks.tests.test_bridge_batch import delivery

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def claims(settings):
    """Keep the claims in the local Redis, under a prefix of this test's own."""
    prefix = f"test-claims-{uuid.uuid4().hex[:8]}-"
    settings.PUBSUB_BRIDGE_DEDUP = "redis"
    settings.PUBSUB_BRIDGE_DEDUP_REDIS_URL = URL
    settings.PUBSUB_BRIDGE_DEDUP_KEY_PREFIX = prefix
    store = redis_store()
    assert store is not None
    yield store
    store.clear()


def _settings_of(**env: str) -> str:
    """Return PUBSUB_BRIDGE_DEDUP and its URL as a new process's settings see them."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUBSUB_BRIDGE_DEDUP", "CELERY_BROKER_URL"))
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
            " 'vocoeng.settings'); from django.conf import settings as s;"
            " print(s.PUBSUB_BRIDGE_DEDUP, s.PUBSUB_BRIDGE_DEDUP_REDIS_URL or '-')",
        ],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (done.stdout.strip() or done.stderr.strip().splitlines()[-1]).strip()


def test_auto_keeps_claims_beside_a_redis_broker_and_in_the_database_otherwise():
    assert _settings_of(CELERY_BROKER_URL="redis://127.0.0.1:6379/3") == (
        "redis redis://127.0.0.1:6379/3"
    )
    assert _settings_of() == "database -"  # the embedded broker
    assert _settings_of(
        CELERY_BROKER_URL="redis://127.0.0.1:6379/3", PUBSUB_BRIDGE_DEDUP="database"
    ) == ("database redis://127.0.0.1:6379/3")
    assert "needs PUBSUB_BRIDGE_DEDUP_REDIS_URL" in _settings_of(
        PUBSUB_BRIDGE_DEDUP="redis"
    )
    assert "must be auto, database or redis" in _settings_of(
        PUBSUB_BRIDGE_DEDUP="memory"
    )


@needs_redis
@pytest.mark.django_db
def test_a_key_is_claimed_once_then_busy_then_done(claims) -> None:
    items = [("chat_message", f"k-{n}", f"pm-{n}") for n in range(3)]
    first = dedup_claim_many(items=[*items, items[0]])  # a key listed twice
    assert dict(first) == {(k, key): Claim.CLAIMED for k, key, _ in items}
    assert set(dedup_claim_many(items=items).values()) == {Claim.BUSY}

    dedup_finish_many(keys=[("chat_message", "k-0"), ("chat_message", "k-1")])
    dedup_finish(kind="chat_message", key="k-2", dead=True)
    assert set(dedup_claim_many(items=items).values()) == {Claim.DONE}
    assert dedup_claim(kind="chat_message", key="k-2", message_id="x") is Claim.DONE
    assert claims.state("chat_message", "k-2") == "dead"
    # kept PUBSUB_CLAIM_KEEP_DAYS (8 days), then Redis drops them itself
    assert 7.9 * 86_400 < claims.ttl("chat_message", "k-0") <= 8 * 86_400
    # another kind's key of the same name is its own claim
    assert dedup_claim(kind="voc_event", key="k-0", message_id="y") is Claim.CLAIMED
    assert not ProcessedMessage.objects.exists()  # nothing in the database
    other = RedisClaims(URL, prefix="test-claims-other-")
    other.claim_many([("chat_message", "k-0")])
    assert claims.clear() == 4  # its own prefix's claims, not another's
    assert claims.state("chat_message", "k-0") is None
    assert other.state("chat_message", "k-0") == "pending"
    assert other.clear() == 1


@needs_redis
@pytest.mark.django_db
def test_a_pending_claim_left_by_a_dead_bridge_is_taken_over_once_it_expires(
    claims, settings
) -> None:
    settings.PUBSUB_BRIDGE_CLAIM_SECONDS = 0.3
    assert dedup_claim(kind="k", key="a", message_id="1") is Claim.CLAIMED
    # The bridge dies here. Until the claim expires, redeliveries wait...
    assert dedup_claim(kind="k", key="a", message_id="2") is Claim.BUSY
    assert 0 < claims.ttl("k", "a") <= 0.3
    time.sleep(0.4)
    # ...then the next one takes it over and finishes it.
    assert dedup_claim(kind="k", key="a", message_id="3") is Claim.CLAIMED
    dedup_finish(kind="k", key="a")
    assert claims.ttl("k", "a") > 86_400  # done: no longer the short lease


@needs_redis
@pytest.mark.django_db
def test_a_release_drops_only_this_process_s_own_pending_claims(claims) -> None:
    other = RedisClaims(URL, prefix=claims.prefix.removesuffix("vocoeng:claim:"))
    other._pid = -1  # another process: its own pending value
    assert other.claim_many([("k", "theirs")]) == ["claimed"]
    assert dedup_claim(kind="k", key="mine", message_id="1") is Claim.CLAIMED
    dedup_finish(kind="k", key="done")

    dedup_release_many(keys=[("k", "theirs"), ("k", "mine"), ("k", "done")])
    dedup_release(kind="k", key="never-claimed")

    assert claims.state("k", "theirs") == "pending"  # another bridge holds it
    assert claims.state("k", "mine") is None  # a redelivery can claim again
    assert claims.state("k", "done") == "done"


@needs_redis
@pytest.mark.django_db
def test_concurrent_bridges_claim_each_key_exactly_once(claims) -> None:
    """Four replicas (each its own client and pending value) race for 500 keys."""
    keys = [("chat_message", f"race-{n}") for n in range(500)]
    prefix = claims.prefix.removesuffix("vocoeng:claim:")
    won: list[list[str]] = []
    start = threading.Barrier(4)

    def replica(n: int) -> None:
        store = RedisClaims(URL, prefix=prefix)
        store._pid, store._pending = -1, f"pending:replica-{n}"
        start.wait()
        won.append(
            [
                k
                for k, s in zip(keys, store.claim_many(keys), strict=True)
                if s == "claimed"
            ]
        )

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [k for w in won for k in w]
    assert len(won) == 4
    assert sorted(claimed) == sorted(keys)  # each key once, by one replica


@pytest.mark.django_db
def test_an_unreachable_redis_is_a_store_error_and_the_batch_is_nacked(
    settings, caplog
) -> None:
    settings.PUBSUB_BRIDGE_DEDUP = "redis"  # on a port nothing listens on
    settings.PUBSUB_BRIDGE_DEDUP_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ClaimStoreUnavailable) as raised:
        dedup_claim(kind="k", key="a", message_id="1")
    assert isinstance(raised.value, DatabaseError)
    assert "claim store (Redis) unavailable" in str(raised.value)

    # The bridge retries the claim within the broker's retry window (a Redis
    # broker is down too, most likely), then nacks: Pub/Sub allows 5 attempts.
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="webhooks.bridge"):
        results = batch_handle([delivery(1)], retry_seconds=1.5, stop=threading.Event())
    assert [outcome for outcome, _ in results] == [Outcome.RETRY]
    assert 0.7 < time.monotonic() - started < 3
    retries = [r for r in caplog.records if "claim_store_unavailable" in r.msg]
    assert len(retries) >= 2
    stopping = threading.Event()
    stopping.set()  # shutting down: no waiting
    started = time.monotonic()
    outcome = message_handle(delivery(2), retry_seconds=30, stop=stopping)
    assert outcome is Outcome.RETRY
    assert time.monotonic() - started < 1


@pytest.fixture
def no_dead_letter_topic(monkeypatch):
    monkeypatch.setattr(
        "webhooks.bridge.handling.dead_letter_publish", lambda *, letter: None
    )


@needs_redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_the_bridge_s_batches_decide_on_redis_claims_as_on_rows(
    claims, queued, monkeypatch, no_dead_letter_topic
) -> None:
    from kombu.exceptions import OperationalError

    from vocoeng.celery import app

    def handle(deliveries):
        results = batch_handle(deliveries, retry_seconds=1, stop=threading.Event())
        return [outcome for outcome, _ in results]

    def refuse(*args, **kwargs):
        raise OperationalError("broker is down")

    # The broker refuses: the batch is nacked and its claims released.
    with monkeypatch.context() as outage:
        outage.setattr(app, "producer_or_acquire", refuse)
        assert handle([delivery(1), delivery(2)]) == [Outcome.RETRY] * 2
    assert claims.state("chat_message", "pm-1") is None
    # Redelivered with a twin and a poison message: one chain each.
    outcomes = handle([delivery(1), delivery(1), delivery(2), delivery(3, body=b"{")])
    assert outcomes == [
        Outcome.ENQUEUED,
        Outcome.DUPLICATE,
        Outcome.ENQUEUED,
        Outcome.DEAD_LETTERED,
    ]
    assert handle([delivery(1), delivery(2)]) == [Outcome.DUPLICATE] * 2
    assert queued() == 2
    assert claims.state("chat_message", "pm-1") == "done"
    assert claims.state("chat_message", "pm-3") == "dead"
    assert not ProcessedMessage.objects.exists()

    # Replaying the dead letter (after a fix) marks its Redis claim done.
    from vocoeng.deadletters import dead_letter_replay

    letter = DeadLetter.objects.get(message_id="pm-3")
    letter.data = delivery(3).data
    letter.save(update_fields=["data"])
    assert dead_letter_replay(letter=letter) is True
    assert claims.state("chat_message", "pm-3") == "done"
    assert handle([delivery(3)]) == [Outcome.DUPLICATE]


@needs_redis
@pytest.mark.django_db
def test_the_admin_says_where_the_claims_are_when_redis_keeps_them(
    claims, admin_client, settings
) -> None:
    url = "/admin/vocoeng/processedmessage/"
    page = admin_client.get(url).content.decode()
    assert "kept in Redis now" in page
    assert f"{claims.prefix}&lt;kind&gt;:&lt;key&gt;" in page
    settings.PUBSUB_BRIDGE_DEDUP = "database"
    assert "kept in Redis" not in admin_client.get(url).content.decode()
