"""Record verified deliveries, many per round trip, and queue their tasks.

A webhook request made two round trips of its own: the INSERT of its delivery
(autocommit) and the publish of its task. Measured under gunicorn
(bench/webhooks.py, 8 threads a process), they and the thread switches around
them were most of the request's CPU. Here the request threads of one process
that reach this point together share the INSERT (group commit): the first to
arrive leads, records every delivery waiting in one statement and wakes their
threads; deliveries that arrive meanwhile go with the next leader, one of
their own threads. (Under gunicorn's gevent worker, the web process's on
PostgreSQL, the requests are greenlets and these locks gevent's: the same
batching, without the OS thread switches.) No thread waits for a timer: a
request alone is a batch of one. The leaders insert on a connection the stage
keeps (pg_bulk.OwnConnection), not on their thread's Django connection: no
pool checkout per batch.

A request returns once its delivery is committed: what the sender sees (200)
means the delivery is stored, which nothing then loses. The tasks are
published after that, by this process's outbox thread (webhooks.outbox): one
``webhooks.deliveries_process`` message for every delivery committed since
its last publish, none of the requests waiting for it. When the broker
refuses, the outbox tries again; a delivery whose task never reached the
broker (the process died first) stays ``received`` and the sweep queues it.

When the database refuses a batch, each delivery is tried alone (one bad row
fails only itself), and one it refuses raises DeliveryFailed (the view
answers 503, the sender retries). Inside a transaction (the caller's), a
delivery is recorded and its task published alone, in that transaction, and
a broker refusal records it failed and raises DeliveryFailed.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, connection
from django.utils import timezone

from vocoeng import correlation, pg_bulk
from vocoeng.celery import app
from vocoeng.celery_batch import PublishCache, publish_batch
from vocoeng.sql import inserted, quote, rows_insert

from .models import WebhookDelivery
from .outbox import Item, outbox

logger = logging.getLogger(__name__)

# Deliveries one leader takes at most (a web process has a handful of
# threads; this bounds the statement's parameters well under SQLite's limit).
MAX_BATCH = 32


class DeliveryFailed(Exception):
    """Say a delivery failed on our side (recorded as failed; answered 503)."""

    def __init__(self, delivery: object) -> None:
        super().__init__(f"delivery {delivery} failed")
        self.delivery = delivery


class _Waiter:
    """One delivery waiting for its batch; ``wake`` is released to let its
    thread go on (its batch has run, or it is to lead the next one).

    A plain lock, held from the start: its thread blocks acquiring it again
    until the leader releases it. An Event did the same through a Condition
    (a new lock, a deque and a dozen Python calls per wait and per set).
    """

    __slots__ = ("correlation_id", "delivery", "error", "lead", "wake")

    def __init__(self, delivery: WebhookDelivery) -> None:
        self.delivery = delivery
        self.correlation_id = correlation.current()
        self.error: BaseException | None = None
        self.lead = False  # woken to lead the next batch, not done
        self.wake = threading.Lock()
        self.wake.acquire()


class _Stage:
    """Run waiting items in batches, one batch at a time, led by a waiter.

    ``run(batch)`` sets the error of each item it could not take.
    """

    def __init__(self, run: Callable[[list[_Waiter]], object]) -> None:
        self.run = run
        self.lock = threading.Lock()
        self.pending: list[_Waiter] = []  # arrival order; empty if none leads
        self.leading = False

    def submit(self, waiter: _Waiter) -> None:
        """Return once ``waiter``'s batch has run (its error set, if any).

        ``waiter`` is new (its ``wake`` held); it is submitted once.
        """
        with self.lock:
            self.pending.append(waiter)
            lead = not self.leading
            self.leading = True
        if not lead:
            waiter.wake.acquire()  # until the leader releases it
            lead = waiter.lead
        if lead:  # the first of those waiting: this waiter is in the batch
            self._lead()

    def _lead(self) -> None:
        with self.lock:
            batch = self.pending[:MAX_BATCH]
            del self.pending[:MAX_BATCH]
        try:
            self.run(batch)
        except Exception as exc:  # neither the database's nor the broker's
            logger.exception("webhook_failed deliveries=%d (hand-off)", len(batch))
            for waiter in batch:
                if waiter.error is None:
                    waiter.error = _failed(waiter.delivery, exc)
        finally:
            with self.lock:
                if self.pending:  # the next leader: the first of those left
                    self.pending[0].lead = True
                    self.pending[0].wake.release()
                else:
                    self.leading = False
            # Each ``wake`` here is held: the leader's (batch[0]: it led at
            # once, or acquired it when woken to lead) and those its thread
            # is blocked on.
            for waiter in batch:
                waiter.wake.release()


def delivery_hand_off(*, delivery: WebhookDelivery) -> None:
    """Record ``delivery`` (committed) and queue its task, then return.

    Raises DeliveryFailed when the database or the broker refused (the
    delivery recorded as failed when the database takes it).
    """
    waiter = _Waiter(delivery)
    if connection.in_atomic_block:  # the caller's transaction: alone, in it
        _record([waiter])
        if waiter.error is None:
            _publish([waiter])
    else:
        _handing.submit(waiter)
    if waiter.error is not None:
        raise waiter.error


def _hand(batch: list[_Waiter]) -> None:
    """Record the batch's deliveries, then hand those recorded to the outbox."""
    if recorded := _record(batch):
        _outbox.put(_items(recorded))


def _items(batch: Sequence[_Waiter]) -> list[Item]:
    return [(str(w.delivery.pk), w.correlation_id) for w in batch]


def _publish(batch: list[_Waiter]) -> None:
    """Queue the tasks of recorded deliveries now; on failure record them failed."""
    try:
        _enqueue(_items(batch))
    except Exception as exc:  # broker down: recorded as failed, senders retry
        logger.exception(
            "webhook_failed deliveries=%s (enqueue)",
            ",".join(str(w.delivery.pk) for w in batch),
        )
        _fail([w.delivery for w in batch], error=f"{type(exc).__name__}: {exc}")
        for waiter in batch:
            waiter.error = _failed(waiter.delivery, exc)


def _failed(delivery: WebhookDelivery, cause: BaseException) -> DeliveryFailed:
    error = DeliveryFailed(delivery.pk)
    error.__cause__ = cause
    return error


def _record(batch: list[_Waiter]) -> list[_Waiter]:
    """Insert the deliveries (one statement); return the waiters recorded
    (the others have their error set)."""
    try:
        _insert([w.delivery for w in batch])
        return batch
    except DatabaseError as exc:
        if len(batch) == 1:
            logger.exception(
                "webhook_failed source=%s (recording)", batch[0].delivery.source
            )
            batch[0].error = _failed(batch[0].delivery, exc)
            return []
    recorded = []
    for waiter in batch:  # one bad row must not fail the others
        recorded.extend(_record([waiter]))
    return recorded


def _insert(deliveries: list[WebhookDelivery]) -> None:
    """Insert the deliveries in one statement: all of them or, on an error, none.

    On PostgreSQL, outside a transaction (the stage's batches), through the
    hand-off's own connection (``_own``): committed when it returns.
    """
    if connection.vendor != "postgresql":
        rows_insert(deliveries)
        return
    sql, fields = _json_insert_plan()
    rows = [[getattr(d, f.attname) for f in fields] for d in deliveries]
    params = [pg_bulk.json_rows(rows, default=_json_value)]
    if connection.in_atomic_block:  # the caller's transaction: in it
        pg_bulk.execute(sql, params, prepare=None)
    else:
        _own.execute(sql, params, prepare=None)
    for delivery in deliveries:
        inserted(delivery)


@functools.cache
def _json_insert_plan() -> tuple[str, list[Any]]:
    """Return the INSERT of deliveries given as one JSON parameter (a list of
    rows, a value per field), and the fields of a row (PostgreSQL).

    One statement whatever the batch's size, so psycopg converts it once and
    PostgreSQL prepares it once (``DB_PREPARED_STATEMENTS``), and the values
    are one ``orjson.dumps`` (UUIDs and datetimes included), read as jsonb
    (``pg_bulk.ROWS``). An ``INSERT ... VALUES`` of one row per
    delivery was a statement per batch size, whose 10 parameters a row psycopg
    dumped one by one and, past 5 rows (50 parameters), parsed again on every
    run (its cache stops there): 0.8-1.3 ms of CPU for 8 rows against 0.5.
    Text goes in uncast (a value too long for its column is refused, as by
    the ORM, not cut); a JSON field's None is SQL NULL, as the ORM stores it.
    """
    meta = WebhookDelivery._meta
    fields = list(meta.concrete_fields)
    values = []
    for i, field in enumerate(fields):
        kind = field.get_internal_type()
        if kind == "JSONField":
            values.append(f"NULLIF(r->{i}, 'null')")
        elif kind in ("CharField", "TextField"):
            values.append(f"r->>{i}")
        elif kind in ("UUIDField", "DateTimeField", "PositiveIntegerField"):
            values.append(f"(r->>{i})::{field.db_type(connection)}")
        else:  # a new kind of field: say how its value travels in JSON first
            raise TypeError(f"{field.name}: no JSON form for a {kind}")
    sql = (
        f"INSERT INTO {quote(meta.db_table)}"  # noqa: S608 - our names
        f" ({', '.join(quote(f.column) for f in fields)})"
        f" SELECT {', '.join(values)} FROM {pg_bulk.ROWS}"
    )
    return sql, fields


def _json_value(value: Any) -> str:
    """Return a UUID or a datetime as PostgreSQL reads it from JSON text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _enqueue(items: Sequence[Item]) -> None:
    """Publish one ``webhooks.deliveries_process`` task for ``items``.

    Its argument lists each delivery id with the correlation id of its own
    request, which the worker makes current while it processes that delivery.
    One message, not one per delivery: a message cost ~60 us of the web
    process's CPU however many went together (the template's slots, its
    argsrepr, the task id), two ids in one message ~3.
    """
    from .tasks import deliveries_process

    # Its repr in the message says how many (saferepr of the list, cut at
    # 1 kB, cost ~25 us a message of the web process's CPU).
    task = deliveries_process.s([list(item) for item in items]).set(
        argsrepr=f"([{len(items)} deliveries],)"
    )
    with _producer() as producer:
        publish_batch([(task, {})], producer=producer, cache=_publish_cache)


def close() -> None:
    """Close the hand-off's own database connection (tests; the next batch
    opens another)."""
    _own.close()


def settle(timeout: float = 5.0) -> None:
    """Publish what the outbox holds now, or drop it if it cannot (tests)."""
    _outbox.settle(timeout)


def published(timeout: float = 10.0) -> bool:
    """Wait until this process's outbox has published what it holds.

    Say whether it has (tests, and a caller that must see the tasks queued).
    """
    return _outbox.flush(timeout)


_held_lock = threading.Lock()
_held: Any = None  # the producer this process's publishing leaders keep
# What publishing on it takes working out (routing, message templates), kept
# across batches: rebuilt per batch, it was half the publishing stage's CPU.
_publish_cache = PublishCache()


@contextmanager
def _producer() -> Iterator[Any]:
    """Lend the producer kept for the hand-off (taken from Celery's pool once).

    Acquiring one from the pool for every batch cost a tenth of the
    publishing stage. One thread at a time uses it (the stage has one
    leader; a caller in a transaction waits for it); after an error it goes
    back to the pool and the next batch takes another.
    """
    global _held
    with _held_lock:
        if _held is None:
            _held = app.producer_pool.acquire(block=True)
        try:
            yield _held
        except BaseException:
            producer, _held = _held, None
            producer.release()
            raise


def _fail(deliveries: list[WebhookDelivery], *, error: str) -> None:
    """Record the deliveries as failed (our side; the senders retry)."""
    now = timezone.now()
    for delivery in deliveries:
        delivery.verdict = WebhookDelivery.Verdict.FAILED
        delivery.error, delivery.processed_at = error[:4000], now
    try:
        WebhookDelivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(
            verdict=WebhookDelivery.Verdict.FAILED,
            error=error[:4000],
            processed_at=now,
        )
    except DatabaseError:
        logger.exception(
            "webhook_fail_unrecorded deliveries=%s",
            ",".join(str(d.pk) for d in deliveries),
        )


# One stage, not two (an INSERT stage and a publish stage, so that one batch's
# INSERT overlapped the previous one's publish): each request then waited and
# was woken twice, and the requests that arrive during a batch's INSERT and
# publish make the next batch bigger instead. Measured under gunicorn
# (bench/webhooks.py's load, 2 processes x 8 threads): 2.0-2.3 -> 1.6-1.7 ms
# of server CPU per request, 17 context switches per request instead of 23.
_handing = _Stage(_hand)
# The connection the stage's leaders insert on, one batch at a time.
_own = pg_bulk.OwnConnection()
_outbox = outbox(_enqueue, linger=0.01)
