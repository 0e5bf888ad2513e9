"""Decide what one Pub/Sub message becomes: a chain in the broker, or not.

decode → route → enqueue → record, with a durable dedup claim around it. The
caller acks every outcome except RETRY, which it nacks for redelivery.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from celery.canvas import Signature
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from kombu.exceptions import OperationalError as BrokerError

from vocoeng import pubsub
from vocoeng.claims_redis import ClaimStoreUnavailable
from vocoeng.correlation import headers_for, well_formed
from vocoeng.deadletters import dead_letter_publish, dead_letter_record
from vocoeng.routing import PermanentMessageError, decode_json, route_message

from .dedup import Claim, dedup_claim, dedup_finish, dedup_release

logger = logging.getLogger("webhooks.bridge")
T = TypeVar("T")

# After this many deliveries an unexpected error is treated as permanent, so the
# message is recorded here (with its reason) rather than silently forwarded by
# the subscription's own dead-letter policy.
MAX_ATTEMPTS = pubsub.MAX_DELIVERY_ATTEMPTS
RETRY_PAUSE_SECONDS = 2.0
KIND_MAX = 64  # ProcessedMessage.kind, DeadLetter.kind
KEY_MAX = 255  # ProcessedMessage.key


class Outcome(StrEnum):
    """Say what became of a message; every outcome but RETRY is acked."""

    ENQUEUED = "enqueued"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    RETRY = "retry"


class BrokerUnavailable(Exception):
    """Report that the broker did not accept the chain within the retry window."""


@dataclass
class Delivery:
    """Hold what the bridge needs of one delivered Pub/Sub message."""

    subscription: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int | None = None
    default_kind: str = ""
    kind: str = field(init=False)
    key: str = field(init=False)
    correlation_id: str = field(init=False)

    def __post_init__(self) -> None:
        # Attribute values may be 1024 bytes; the dedup and dead-letter columns
        # are shorter, and a value that does not fit would fail every retry.
        # A kind that long is unknown anyway (the full one stays in the
        # attributes); a long key is hashed, so it still deduplicates.
        # PostgreSQL stores no NUL (text or jsonb): U+FFFD, as in the data.
        self.attributes = {
            k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd")
            for k, v in self.attributes.items()
        }
        self.kind = (self.attributes.get("kind") or self.default_kind)[:KIND_MAX]
        self.key = self.attributes.get("idempotency_key") or self.message_id
        if len(self.key) > KEY_MAX:
            self.key = "sha256:" + hashlib.sha256(self.key.encode()).hexdigest()
        # As the push endpoint does: a malformed id (spaces, newlines, too
        # long) would break log lines and task headers; the message's own
        # id stands in for it.
        given = self.attributes.get("correlation_id")
        self.correlation_id = (
            given if well_formed(given) else f"pubsub-{self.message_id}"
        )


_LINE = (
    "bridge_message event=%s subscription=%s message_id=%s kind=%s key=%s "
    "correlation_id=%s attempt=%s"
)


_local = threading.local()


def _log(event: str, d: Delivery, extra: str = "", *args: object) -> None:
    """Log the per-message line of ``event``; inside :func:`log_batch`, later."""
    if not logger.isEnabledFor(logging.INFO):
        return
    line = _LINE + extra  # extra is a constant format suffix
    fields = (
        event,
        d.subscription,
        d.message_id,
        d.kind or "-",
        d.key,
        d.correlation_id,
        d.delivery_attempt,
        *args,
    )
    cid = {"correlation_id": d.correlation_id}  # a JSON field too
    pending = getattr(_local, "records", None)
    if pending is None:
        logger.info(line, *fields, extra=cid)
    else:
        pending.append(_record(line, fields, cid))


def _record(line: str, fields: tuple, cid: dict[str, str]) -> logging.LogRecord:
    """Return ``logger.makeRecord(...)`` of a per-message line, made cheaply.

    LogRecord.__init__ works out the same caller, thread and process for
    every line of a batch (~4 µs a record, two records a message). Here the
    first record of each thread is made so, and the others are copies of it
    with their own message, arguments, time and correlation id (~1 µs).
    A custom record factory gets every record made by makeRecord.
    """
    proto = getattr(_local, "proto", None)
    if proto is None or logging.getLogRecordFactory() is not logging.LogRecord:
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, line, fields, None, "_log", cid
        )
        _local.proto = vars(record).copy()
        return record
    record = logging.LogRecord.__new__(logging.LogRecord)
    values = vars(record)
    values.update(proto)
    # as LogRecord.__init__ sets them
    created = time.time()
    values["created"] = created
    values["msecs"] = int((created - int(created)) * 1000) + 0.0
    values["relativeCreated"] = (created - logging._startTime) * 1000
    values["msg"] = line
    values["args"] = fields
    values.update(cid)
    return record


def log_flush() -> None:
    """Write the lines held by :func:`log_batch` so far."""
    records = getattr(_local, "records", None)
    if records:
        _local.records = []
        handle_many(logger, records)


@contextmanager
def log_batch() -> Iterator[None]:
    """Hold this thread's per-message lines; write them together on exit.

    Each line stays one record (same format, filters and handlers); a stream
    handler writes the lines of a batch in one write and one flush instead of
    one of each per line (each a system call, and a GIL hand-over).
    """
    _local.records = []
    try:
        yield
    finally:
        try:
            log_flush()
        finally:
            _local.records = None


def handle_many(log: logging.Logger, records: list[logging.LogRecord]) -> None:
    """Do what ``log.handle(record)`` does for each record, a handler at a time.

    A plain StreamHandler formats every record it accepts and writes them in
    one ``write`` and one ``flush``; any other handler handles them one by
    one. Logger and handler filters and levels apply as usual.
    """
    records = [r for r in records if not log.disabled and log.filter(r)]
    if not records:
        return
    current: logging.Logger | None = log
    found = False
    while current is not None:
        for handler in current.handlers:
            found = True
            accepted = [r for r in records if r.levelno >= handler.level]
            if type(handler).emit is not logging.StreamHandler.emit:
                for record in accepted:
                    handler.handle(record)
                continue
            assert isinstance(handler, logging.StreamHandler)
            lines = []
            for record in accepted:
                if not handler.filter(record):
                    continue
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:
                    handler.handleError(record)
            if not lines:
                continue
            with handler.lock:
                try:
                    handler.stream.write("".join(lines))
                    handler.flush()
                except Exception:
                    handler.handleError(accepted[0])
        current = current.parent if current.propagate else None
    if not found and logging.lastResort is not None:
        for record in records:
            if record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)


def backoff_retry(
    call: Callable[[], T],
    *,
    errors: tuple[type[BaseException], ...],
    retry_seconds: float,
    stop: threading.Event,
    on_retry: Callable[[BaseException, float], object],
) -> T:
    """Return ``call()``; on one of ``errors``, call ``on_retry(error, delay)``
    and try again after ``delay`` (0.25 s, doubling up to 5 s), for up to
    ``retry_seconds`` in all (or until ``stop``); then raise the last error."""
    started = time.monotonic()
    delay = 0.25
    while True:
        try:
            return call()
        except errors as exc:
            waited = time.monotonic() - started
            if stop.is_set() or waited + delay > retry_seconds:
                raise
            on_retry(exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 5.0)


def claim_retrying(
    claim: Callable[[], T], *, retry_seconds: float, stop: threading.Event
) -> T:
    """Return ``claim()``; while the claim store is unreachable (Redis, or the
    database's connection), retry it with backoff for up to ``retry_seconds``
    (or until ``stop``), as an enqueue is retried, then raise the last error.

    Each nack spends one of the 5 delivery attempts Pub/Sub allows before it
    dead-letters a message itself (to the topic, without the bridge's record
    and its replay). Nacked within RETRY_PAUSE_SECONDS, a minute's outage of
    the claim store would do that; the broker's retry window paces them as
    a broker outage is paced. With the claims beside a Redis broker, a broker
    outage fails the claim first. A statement's own error (not the
    connection's) is raised at once.
    """

    def unavailable(exc: BaseException, delay: float) -> None:
        if not isinstance(exc, ClaimStoreUnavailable):
            connection.close()  # the next try connects again
        logger.warning(
            "bridge_claim_store_unavailable error=%s retry_in=%.2fs",
            str(exc).strip().replace("\n", " ")[:500],
            delay,
        )

    return backoff_retry(
        claim,
        errors=(ClaimStoreUnavailable, OperationalError, InterfaceError),
        retry_seconds=retry_seconds,
        stop=stop,
        on_retry=unavailable,
    )


def enqueue(
    signature: Signature,
    *,
    correlation_id: str,
    retry_seconds: float,
    stop: threading.Event,
    producer: Any = None,
) -> str:
    """Send ``signature`` to the broker and return the task id once accepted.

    ``retry=False`` makes a broker outage raise at once instead of kombu's
    long connection retries; this retries with backoff for up to
    ``retry_seconds`` (or until ``stop``), then raises BrokerUnavailable.
    """

    def send() -> str:
        return signature.apply_async(
            headers=headers_for(correlation_id), retry=False, producer=producer
        ).id

    try:
        return backoff_retry(
            send,
            errors=(BrokerError, OSError),
            retry_seconds=retry_seconds,
            stop=stop,
            on_retry=lambda exc, delay: logger.warning(
                "bridge_broker_unavailable error=%s retry_in=%.2fs", exc, delay
            ),
        )
    except (BrokerError, OSError) as exc:
        raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc


def message_handle(
    delivery: Delivery, *, retry_seconds: float, stop: threading.Event
) -> Outcome:
    """Handle one delivery: enqueue its chain once, or say why not."""
    d = delivery
    _log("received", d)
    try:
        claim = claim_retrying(
            lambda: dedup_claim(kind=d.kind or "-", key=d.key, message_id=d.message_id),
            retry_seconds=retry_seconds,
            stop=stop,
        )
    except ClaimStoreUnavailable as exc:  # waited the broker's retry window
        _log("nacked", d, " reason=%s", str(exc))
        return Outcome.RETRY
    except DatabaseError as exc:
        connection.close()
        _log("nacked", d, " reason=%s", f"database: {exc}")
        # Each nack is a delivery attempt (5 before Pub/Sub dead-letters it):
        # pace them while the database is away.
        stop.wait(RETRY_PAUSE_SECONDS)
        return Outcome.RETRY
    if claim is Claim.DONE:
        _log("duplicate", d)
        return Outcome.DUPLICATE
    if claim is Claim.BUSY:
        # Another delivery of the same key is being enqueued right now; come
        # back once it is done (then this one is a duplicate).
        _log("nacked", d, " reason=%s", "same key in flight")
        stop.wait(0.5)
        return Outcome.RETRY
    try:
        return _handle_claimed(d, retry_seconds=retry_seconds, stop=stop)
    except BaseException:
        dedup_release(kind=d.kind or "-", key=d.key)
        raise


def _handle_claimed(d: Delivery, *, retry_seconds: float, stop: threading.Event):
    kind = d.kind or "-"
    try:
        if not d.kind:
            raise PermanentMessageError(
                f"no kind attribute, and subscription {d.subscription} has no kind"
            )
        signature = route_message(
            kind=d.kind, data=decode_json(d.data), attributes=d.attributes
        )
    except PermanentMessageError as exc:
        return _dead_letter(d, exc.reason)
    except DatabaseError as exc:
        connection.close()
        stop.wait(RETRY_PAUSE_SECONDS)
        return _retry_or_dead_letter(d, f"database: {exc}")
    except Exception as exc:  # a bug in a route: retry, then dead-letter
        logger.exception("bridge_route_failed message_id=%s", d.message_id)
        return _retry_or_dead_letter(d, f"{type(exc).__name__}: {exc}")

    if signature is None:  # the route stored it before and has nothing to do
        dedup_finish(kind=kind, key=d.key)
        _log("duplicate", d, " reason=%s", "route has nothing to enqueue")
        return Outcome.DUPLICATE
    try:
        task_id = enqueue(
            signature,
            correlation_id=d.correlation_id,
            retry_seconds=retry_seconds,
            stop=stop,
        )
    except BrokerUnavailable as exc:
        dedup_release(kind=kind, key=d.key)
        _log("nacked", d, " reason=%s", f"broker unavailable: {exc}")
        return Outcome.RETRY
    # The broker has the chain: a crash from here on re-enqueues it after the
    # claim goes stale, which the idempotent chain absorbs (see dedup).
    dedup_finish(kind=kind, key=d.key)
    _log("enqueued", d, " task_id=%s", task_id)
    return Outcome.ENQUEUED


def _retry_or_dead_letter(d: Delivery, reason: str) -> Outcome:
    if (d.delivery_attempt or 0) >= MAX_ATTEMPTS:
        return _dead_letter(d, f"failed {d.delivery_attempt} times: {reason}")
    dedup_release(kind=d.kind or "-", key=d.key)
    _log("nacked", d, " reason=%s", reason)
    return Outcome.RETRY


def _dead_letter(d: Delivery, reason: str) -> Outcome:
    """Record the message with its reason, publish it to the dead-letter topic."""
    kind = d.kind or "-"
    try:
        letter = dead_letter_record(
            source="bridge",
            subscription=d.subscription,
            message_id=d.message_id,
            kind=d.kind,
            data=d.data,
            attributes=d.attributes,
            reason=reason,
        )
        dead_letter_publish(letter=letter)
    except (pubsub.PubSubError, DatabaseError) as exc:
        if isinstance(exc, DatabaseError):
            connection.close()
        dedup_release(kind=kind, key=d.key)
        _log("nacked", d, " reason=%s", f"dead letter not recorded: {exc}")
        return Outcome.RETRY
    dedup_finish(kind=kind, key=d.key, dead=True)
    _log("dead_lettered", d, " reason=%s", reason)
    return Outcome.DEAD_LETTERED
