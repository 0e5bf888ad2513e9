"""Handle a micro-batch of deliveries with a few round trips instead of many.

Same decisions as :func:`handling.message_handle`, per message, but the dedup
claims of the batch are one INSERT, the route writes of each kind one
transaction (when the route has a ``batch`` variant), the enqueues share one
broker connection, and the claims are marked done in one UPDATE. A message
that fails alone (bad JSON, failed validation) is dead-lettered alone; a batch
whose route call fails as a whole is retried one message at a time, so one
poison message cannot fail its neighbours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from celery.canvas import Signature
from django.db import DatabaseError, connection
from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as BrokerError

from vocoeng.celery import app
from vocoeng.celery_batch import publish_batch
from vocoeng.claims_redis import ClaimStoreUnavailable
from vocoeng.correlation import headers_for
from vocoeng.routing import PermanentMessageError, decode_json, route_messages

from .dedup import (
    Claim,
    dedup_claim_many,
    dedup_finish_many,
    dedup_release,
    dedup_release_many,
)
from .handling import (
    RETRY_PAUSE_SECONDS,
    BrokerUnavailable,
    Delivery,
    Outcome,
    _dead_letter,
    _handle_claimed,
    _log,
    backoff_retry,
    claim_retrying,
    log_batch,
    log_flush,
)

logger = logging.getLogger("webhooks.bridge")

# (what became of the message, seconds the caller waits before a nack)
Result = tuple[Outcome, float]
BUSY_PAUSE_SECONDS = 0.5


def batch_handle(
    deliveries: list[Delivery], *, retry_seconds: float, stop: threading.Event
) -> list[Result]:
    """Handle ``deliveries``; return one result per delivery, in order.

    The per-message log lines are written together: the batch's ``received``
    lines before it is handled, the outcome lines after.
    """
    with log_batch():
        for d in deliveries:
            _log("received", d)
        log_flush()
        return _batch_handle(deliveries, retry_seconds=retry_seconds, stop=stop)


def _batch_handle(
    deliveries: list[Delivery], *, retry_seconds: float, stop: threading.Event
) -> list[Result]:
    try:
        claims = claim_retrying(
            lambda: dedup_claim_many(
                items=[(d.kind or "-", d.key, d.message_id) for d in deliveries]
            ),
            retry_seconds=retry_seconds,
            stop=stop,
        )
    except ClaimStoreUnavailable as exc:  # waited the broker's retry window
        for d in deliveries:
            _log("nacked", d, " reason=%s", str(exc))
        return [(Outcome.RETRY, 0.0)] * len(deliveries)
    except DatabaseError as exc:
        connection.close()
        for d in deliveries:
            _log("nacked", d, " reason=%s", f"database: {exc}")
        return [(Outcome.RETRY, RETRY_PAUSE_SECONDS)] * len(deliveries)

    results: list[Result | None] = [None] * len(deliveries)
    owner: dict[tuple[str, str], int] = {}  # key → the delivery that claimed it
    twins: list[tuple[int, int]] = []  # (a second delivery of a key, its owner)
    claimed: list[int] = []
    for i, d in enumerate(deliveries):
        key = (d.kind or "-", d.key)
        if key in owner:
            twins.append((i, owner[key]))
            continue
        owner[key] = i
        claim = claims[key]
        if claim is Claim.DONE:
            _log("duplicate", d)
            results[i] = (Outcome.DUPLICATE, 0.0)
        elif claim is Claim.BUSY:
            _log("nacked", d, " reason=%s", "same key in flight")
            results[i] = (Outcome.RETRY, BUSY_PAUSE_SECONDS)
        else:
            claimed.append(i)
    if claimed:
        try:
            for i, result in zip(
                claimed,
                _handle_claimed_many(
                    [deliveries[i] for i in claimed],
                    retry_seconds=retry_seconds,
                    stop=stop,
                    claim_ids=claims.ids,
                ),
                strict=True,
            ):
                results[i] = result
        except BaseException:
            _release_quietly([deliveries[i] for i in claimed if results[i] is None])
            raise
    for i, j in twins:
        # The twin rides on its owner: acked as a duplicate unless the owner is
        # nacked, in which case both come back.
        owner_result = results[j]
        assert owner_result is not None
        if owner_result[0] is Outcome.RETRY:
            results[i] = owner_result
        else:
            _log("duplicate", deliveries[i], " reason=%s", "same key in batch")
            results[i] = (Outcome.DUPLICATE, 0.0)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _release_quietly(deliveries: list[Delivery]) -> None:
    try:
        dedup_release_many(keys=[(d.kind or "-", d.key) for d in deliveries])
    except DatabaseError:
        connection.close()


def _one_by_one(
    deliveries: list[Delivery], *, retry_seconds: float, stop: threading.Event
) -> list[Result]:
    results: list[Result] = []
    for d in deliveries:
        try:
            outcome = _handle_claimed(d, retry_seconds=retry_seconds, stop=stop)
        except BaseException:
            dedup_release(kind=d.kind or "-", key=d.key)
            raise
        results.append((outcome, 0.0))
    return results


_shared = threading.local()
_install_lock = threading.Lock()


def _share_producer_with_chains() -> None:
    """Make ``app.producer_or_acquire()`` return this thread's batch producer.

    ``chain.apply_async(producer=...)`` drops the producer before sending the
    chain's first task (celery 5.x ``_chain.run``), so that send would take
    another producer from the pool, outside the batch. While a thread batches
    (:func:`enqueue_many`), the app hands that thread its batch producer
    instead; other threads and other times are unaffected.
    """
    with _install_lock:
        if getattr(app, "_bridge_shares_producer", False):
            return
        acquire = app.producer_or_acquire

        def producer_or_acquire(producer: Any = None) -> Any:
            return acquire(producer or getattr(_shared, "producer", None))

        app.producer_or_acquire = producer_or_acquire  # type: ignore[method-assign]
        app._bridge_shares_producer = True  # type: ignore[attr-defined]


def enqueue_many(
    signatures: list[tuple[Signature, str]],
    *,
    retry_seconds: float,
    stop: threading.Event,
) -> list[str]:
    """Send ``(signature, correlation id)`` pairs to the broker in one batch.

    On Redis the messages go out in one pipeline (kombu's ``Producer.batch``);
    other transports publish them one by one on one connection. Returns the
    task ids once the broker accepted all of them. A failure retries the whole
    batch with backoff for up to ``retry_seconds`` (or until ``stop``), then
    raises BrokerUnavailable. A pipeline that failed half way may have queued
    some chains already: the retry queues them again, which the idempotent
    chains absorb (as they do a redelivery after a crash).
    """
    items = [(signature, headers_for(cid)) for signature, cid in signatures]
    errors = (BrokerError, BatchPublishError, OSError)

    def send() -> list[str]:
        _share_producer_with_chains()
        with app.producer_or_acquire() as producer:
            _shared.producer = producer
            try:
                return publish_batch(items, producer=producer)
            finally:
                _shared.producer = None

    try:
        return backoff_retry(
            send,
            errors=errors,
            retry_seconds=retry_seconds,
            stop=stop,
            on_retry=lambda exc, delay: logger.warning(
                "bridge_broker_unavailable error=%s batch=%s retry_in=%.2fs",
                exc,
                len(signatures),
                delay,
            ),
        )
    except errors as exc:
        raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc


def _handle_claimed_many(
    deliveries: list[Delivery],
    *,
    retry_seconds: float,
    stop: threading.Event,
    claim_ids: Mapping[tuple[str, str], int],
) -> list[Result]:
    """Route, enqueue and finish claimed deliveries (distinct keys)."""
    results: list[Result | None] = [None] * len(deliveries)
    by_kind: dict[str, list[tuple[int, Any]]] = {}
    for i, d in enumerate(deliveries):
        try:
            if not d.kind:
                raise PermanentMessageError(
                    f"no kind attribute, and subscription {d.subscription} has no kind"
                )
            by_kind.setdefault(d.kind, []).append((i, decode_json(d.data)))
        except PermanentMessageError as exc:
            results[i] = (_dead_letter(d, exc.reason), 0.0)

    signatures: list[tuple[int, Signature]] = []
    nothing_to_do: list[int] = []
    for kind, entries in by_kind.items():
        try:
            routed = route_messages(
                kind=kind,
                items=[(data, deliveries[i].attributes) for i, data in entries],
            )
        except Exception as exc:
            if isinstance(exc, DatabaseError):
                connection.close()
            logger.warning(
                "bridge_batch_route_failed kind=%s size=%s error=%s: one by one",
                kind,
                len(entries),
                type(exc).__name__,
            )
            for (i, _), result in zip(
                entries,
                _one_by_one(
                    [deliveries[i] for i, _ in entries],
                    retry_seconds=retry_seconds,
                    stop=stop,
                ),
                strict=True,
            ):
                results[i] = result
            continue
        for (i, _), value in zip(entries, routed, strict=True):
            if isinstance(value, PermanentMessageError):
                results[i] = (_dead_letter(deliveries[i], value.reason), 0.0)
            elif value is None:
                nothing_to_do.append(i)
            else:
                signatures.append((i, value))

    enqueued: list[tuple[int, str]] = []
    if signatures:
        try:
            task_ids = enqueue_many(
                [(sig, deliveries[i].correlation_id) for i, sig in signatures],
                retry_seconds=retry_seconds,
                stop=stop,
            )
        except BrokerUnavailable as exc:
            left = [deliveries[i] for i, _ in signatures]
            dedup_release_many(keys=[(d.kind or "-", d.key) for d in left])
            for d in left:
                _log("nacked", d, " reason=%s", f"broker unavailable: {exc}")
            for i, _ in signatures:
                results[i] = (Outcome.RETRY, 0.0)
        else:
            enqueued = [(i, t) for (i, _), t in zip(signatures, task_ids, strict=True)]

    # The broker has these chains: a crash from here on re-enqueues them after
    # the claims go stale, which the idempotent chains absorb (see dedup).
    done = [i for i, _ in enqueued] + nothing_to_do
    if done:
        dedup_finish_many(
            keys=[(deliveries[i].kind, deliveries[i].key) for i in done], ids=claim_ids
        )
    for i, task_id in enqueued:
        _log("enqueued", deliveries[i], " task_id=%s", task_id)
        results[i] = (Outcome.ENQUEUED, 0.0)
    for i in nothing_to_do:
        _log("duplicate", deliveries[i], " reason=%s", "route has nothing to enqueue")
        results[i] = (Outcome.DUPLICATE, 0.0)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
