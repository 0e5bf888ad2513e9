"""Record webhook deliveries and hand what they hold to the bus.

Store and forward: a view verifies the request and calls
:func:`delivery_accept`, which does the checks that decide 200 or 400,
records the raw delivery (committed) and answers at once; the web process's
outbox (webhooks.outbox) then publishes a ``webhooks.deliveries_process``
task naming it. The task (:func:`delivery_process_queued`, once per delivery)
parses the delivery and acts on it
in one transaction: inbound messages go to the bus (BUS=direct: stored here
keyed by their id, the reply chains enqueued after commit), status reports
move outbound messages. A delivery whose task was lost (the web process died
before its outbox published it, a worker died for good) stays ``received``;
:func:`deliveries_sweep` (a beat task) enqueues it again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.http.request import HttpHeaders
from django.utils import timezone

from conversations.models import Message
from conversations.services import (
    message_rate_limited,
    message_receive,
    message_status_update,
)
from vocoeng import bus, correlation, pg_bulk
from vocoeng.channels import UnknownChannel, whatsapp_channels_resolve
from vocoeng.models import Channel, Tenant
from vocoeng.routing import PermanentMessageError, decode_json
from vocoeng.services import tenant_get_default
from vocoeng.sql import instance_new, quote

from .handoff import DeliveryFailed as DeliveryFailed  # raised by delivery_accept
from .handoff import delivery_hand_off
from .inbound import (
    REQUEUE_AFTER,
    IngestResult,
    chains_enqueue,
    chains_enqueue_many,
    messages_ingest,
    rows_of,
    rows_store,
)
from .models import WebhookDelivery
from .parsers import (
    InboundItem,
    NotANotification,
    Notification,
    parse_aisensy,
    parse_whatsapp,
    whatsapp_notification_check,
    whatsapp_phone_number_ids,
)

logger = logging.getLogger(__name__)

# Headers worth keeping with a delivery (never Authorization or secrets).
KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "X-Hub-Signature-256",
    "X-Forwarded-For",
    "X-Cloud-Trace-Context",
    "X-VocoEng-Tenant",
    "X-VocoEng-Channel",
    "X-Request-Id",  # the correlation id (vocoeng.correlation middleware)
)
CHANNEL_HEADER = "X-VocoEng-Channel"


def _meta_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in HttpHeaders.UNPREFIXED_HEADERS else f"HTTP_{key}"


# (name, WSGI environ key) of each kept header that ``dict(request.headers)``
# spells as KEPT_HEADERS does (it title-cases: "X-Vocoeng-Tenant").
_KEPT_META = tuple(
    (name, key)
    for name in KEPT_HEADERS
    if HttpHeaders.parse_header_name(key := _meta_key(name)) == name
)


def headers_kept(meta: Mapping[str, Any]) -> dict[str, str]:
    """Return the KEPT_HEADERS of a request's ``META``, as delivery_accept keeps
    them from ``dict(request.headers)``, without building every header (that
    cost a webhook ~25 us)."""
    return {name: meta[key] for name, key in _KEPT_META if key in meta}


DEFAULT_CHAT_ROUTE = "conversations.routes.chat_message"

Processor = Callable[..., dict]
Parser = Callable[[Any], Notification]
# Which channel an inbound item arrived on (None: the environment's default).
ChannelOf = Callable[[InboundItem], Channel | None]


def _default_channel(item: InboundItem) -> Channel | None:
    return None


class DeliveryRejected(Exception):
    """Reject a delivery that can never be processed (answered 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def body_text(body: bytes) -> str:
    """Return a body as storable text: bad UTF-8 and NUL (PostgreSQL refuses
    it in text) become U+FFFD."""
    return body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def delivery_record(
    *,
    source: str,
    body: bytes,
    headers: dict[str, str],
    verdict: str = WebhookDelivery.Verdict.RECEIVED,
    error: str = "",
) -> WebhookDelivery:
    """Store a delivery as received (committed at once, outside any transaction)."""
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    return WebhookDelivery.objects.create(
        source=source,
        headers=kept,
        body=body_text(body),
        verdict=verdict,
        error=error,
    )


def _finish(
    delivery: WebhookDelivery, *, verdict: str, error: str = "", summary: dict
) -> int:
    delivery.verdict, delivery.error, delivery.summary = verdict, error, summary
    delivery.processed_at = timezone.now()
    return WebhookDelivery.objects.filter(pk=delivery.pk).update(
        verdict=verdict,
        error=error[:4000],
        summary=summary,
        processed_at=delivery.processed_at,
    )


def delivery_fail(*, delivery: WebhookDelivery, error: str) -> None:
    """Record that processing failed on our side (the sender will retry).

    A delivery whose row went with the undone transaction is inserted again.
    """
    verdict = WebhookDelivery.Verdict.FAILED
    if not _finish(delivery, verdict=verdict, error=error, summary={}):
        delivery.error = error[:4000]
        delivery.save(force_insert=True)


def inbound_ingest(
    *,
    item: InboundItem,
    source: str,
    tenant: Tenant,
    received_at: str,
    account: Channel | None = None,
) -> str:
    """Hand one inbound message to the bus once; return what happened to it.

    Outcomes: ``queued`` (on the bus), ``duplicate`` (seen before, nothing
    triggered), ``ignored`` (stored, no AI call: reactions, unknown types),
    ``rate_limited`` (stored, over AI_USER_RATE_LIMIT).
    """
    existing = (
        Message.objects.filter(channel=source, external_id=item.message_id)
        .only("pk", "status", "created_at")
        .first()
    )
    if existing is not None and not (
        existing.status == Message.Status.RECEIVED
        and existing.created_at < timezone.now() - REQUEUE_AFTER
    ):
        return "duplicate"
    payload = item.payload(source=source, received_at=received_at)
    status = None
    if not item.replyable:
        status = Message.Status.IGNORED
    elif existing is None and message_rate_limited(
        tenant=tenant, channel=source, user_id=item.user_id, account=account
    ):
        status = Message.Status.RATE_LIMITED
    if status is not None:
        message_receive(
            tenant=tenant,
            channel=source,
            user_id=item.user_id,
            text=item.text,
            external_id=item.message_id,
            metadata=payload["metadata"],
            status=status,
            account=account,
        )
        return str(status)
    bus.publish(
        topic=settings.PUBSUB_TOPIC_MESSAGES,
        payload=payload,
        key=f"{source}:{item.message_id}",
        attributes={
            "tenant": tenant.slug,
            "source": source,
            **({"channel_id": str(account.pk)} if account is not None else {}),
        },
    )
    return "queued"


def _decoded(body: str | bytes) -> Any:
    """Return a delivery's JSON body or raise DeliveryRejected with the reason."""
    try:
        return decode_json(body)  # not UTF-8, not JSON, nested too deeply
    except PermanentMessageError as exc:
        raise DeliveryRejected(exc.reason) from exc


def _parsed(data: Any, parse: Callable[[Any], object]) -> Any:
    try:
        return parse(data)
    except NotANotification as exc:
        raise DeliveryRejected(str(exc)) from exc


def _fast_path() -> bool:
    # BUS=direct with the stock chat route: store here, enqueue the chains.
    return (
        settings.BUS == "direct"
        and settings.BUS_ROUTES.get("chat_message") == DEFAULT_CHAT_ROUTE
    )


def _by_channel(
    items: list[InboundItem], channel_of: ChannelOf
) -> list[tuple[Channel | None, list[InboundItem]]]:
    groups: dict[int | None, tuple[Channel | None, list[InboundItem]]] = {}
    for item in items:
        channel = channel_of(item)
        key = None if channel is None else channel.pk
        groups.setdefault(key, (channel, []))[1].append(item)
    return list(groups.values())


def _act(
    notification: Notification,
    *,
    source: str,
    received_at: str,
    channel_of: ChannelOf = _default_channel,
) -> tuple[str, str, dict, list[str]]:
    """Act on a parsed delivery (inside a transaction).

    Each message goes to the tenant and conversations of its channel
    (``channel_of``). Returns the verdict, the error, the summary and the
    inbound message ids whose reply chains are due after commit.
    """
    problems = list(notification.problems)
    chains: list[str] = []
    outcomes: dict[str, int] = {}
    for channel, items in _by_channel(notification.messages, channel_of):
        if _fast_path():
            result = messages_ingest(
                items=items, source=source, received_at=received_at, account=channel
            )
            for outcome, count in result.outcomes.items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
            chains.extend(result.chains)
            problems.extend(result.problems)
            continue
        tenant = tenant_get_default() if channel is None else channel.tenant
        for item in items:
            try:
                with transaction.atomic():
                    outcome = inbound_ingest(
                        item=item,
                        source=source,
                        tenant=tenant,
                        received_at=received_at,
                        account=channel,
                    )
            except PermanentMessageError as exc:
                outcome = "invalid"
                problems.append(f"{item.message_id}: {exc.reason}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    verdict, error, summary = _verdict(
        notification, source=source, outcomes=outcomes, problems=problems
    )
    return verdict, error, summary, chains


def _verdict(
    notification: Notification,
    *,
    source: str,
    outcomes: dict[str, int],
    problems: list[str],
) -> tuple[str, str, dict]:
    """Apply the delivery's status reports; return its verdict, error and
    summary (its messages' ``outcomes`` counted already)."""
    statuses = 0
    for status in notification.statuses:
        statuses += message_status_update(
            channel=source,
            external_id=status.message_id,
            status=status.status,
            error=status.error,
        )
    summary = {
        "messages": outcomes,
        "statuses": len(notification.statuses),
        "statuses_applied": statuses,
        "ignored": notification.ignored,
    }
    acted = notification.messages or notification.statuses
    verdict = (
        WebhookDelivery.Verdict.PROCESSED if acted else WebhookDelivery.Verdict.IGNORED
    )
    return verdict, "; ".join(problems), summary


def _log(delivery: WebhookDelivery, summary: dict) -> None:
    logger.info(
        "webhook_processed source=%s delivery=%s messages=%s statuses=%s",
        delivery.source,
        delivery.pk,
        summary["messages"],
        summary["statuses_applied"],
    )


def delivery_accept(
    *,
    source: str,
    body: bytes,
    headers: dict[str, str],
    parse: Callable[[Any], object],
    data: Any = None,
) -> WebhookDelivery:
    """Record a verified delivery and hand it to a worker; return the record.

    A body that is not JSON, or not a notification ``parse`` understands, is
    recorded as rejected and DeliveryRejected is raised (400). Otherwise the
    delivery is committed as received (one INSERT shared with the requests
    that reach it at the same time) and its task goes out from the outbox
    right after (webhooks.handoff). When the database refuses (or, inside a
    caller's transaction, the broker), the delivery is recorded as failed if
    it can be and DeliveryFailed is raised (503): the sender retries.
    ``data``: the body already decoded by the view (None: decode it here).
    ``parse``: what raises NotANotification for a body that is not one (a
    parser, or only its checks: the worker parses).
    """
    delivery = instance_new(
        WebhookDelivery,
        source=source,
        headers={name: headers[name] for name in KEPT_HEADERS if name in headers},
        body=body_text(body),
        received_at=timezone.now(),
    )
    try:
        # Only the cheap checks that decide 200 or 400: the worker acts on it.
        _parsed(_decoded(body) if data is None else data, parse)
    except DeliveryRejected as exc:
        delivery.verdict, delivery.error = WebhookDelivery.Verdict.REJECTED, exc.reason
        delivery.processed_at = timezone.now()
        delivery.save(force_insert=True)
        raise
    # Committed and queued (with other requests' deliveries): nothing is lost.
    delivery_hand_off(delivery=delivery)
    logger.info("webhook_accepted source=%s delivery=%s", source, delivery.pk)
    return delivery


def delivery_enqueue(*, delivery_id: Any) -> None:
    """Enqueue the task that processes a recorded delivery."""
    from .tasks import delivery_process

    delivery_process.apply_async((str(delivery_id),))


def _whatsapp_channel_of(channels: dict[str, Channel | None]) -> ChannelOf:
    def channel_of(item: InboundItem) -> Channel | None:
        return channels.get(item.metadata.get("phone_number_id", ""))

    return channel_of


def whatsapp_accept(
    *, body: bytes, headers: dict[str, str], data: Any = None
) -> WebhookDelivery:
    """Record a verified WhatsApp delivery and enqueue it (see delivery_accept).

    The worker finds each phone number id's channel again (the view resolved
    them only to check the signature).
    """
    return delivery_accept(
        source="whatsapp",
        body=body,
        headers=headers,
        parse=whatsapp_notification_check,
        data=data,
    )


def aisensy_accept(
    *, body: bytes, headers: dict[str, str], channel: Channel | None = None
) -> WebhookDelivery:
    """Record a verified AiSensy delivery and enqueue it (see delivery_accept).

    ``channel`` is the account whose webhook secret the delivery carried; its
    id is kept with the delivery so the worker (and a replay) goes to the same
    tenant.
    """
    if channel is not None:
        headers = {**headers, CHANNEL_HEADER: str(channel.pk)}
    return delivery_accept(
        source="aisensy", body=body, headers=headers, parse=parse_aisensy
    )


def _recorded_channel_of(delivery: WebhookDelivery, data: Any) -> ChannelOf:
    """Return the channels of a recorded delivery, found again from the record."""
    if delivery.source == WebhookDelivery.Source.WHATSAPP:
        try:
            channels = whatsapp_channels_resolve(
                phone_number_ids=whatsapp_phone_number_ids(data)
            )
        except UnknownChannel as exc:
            raise DeliveryRejected(exc.reason) from exc
        return _whatsapp_channel_of(channels)
    channel_id = delivery.headers.get(CHANNEL_HEADER)
    if not channel_id:
        return _default_channel
    channel = Channel.objects.select_related("tenant").filter(pk=channel_id).first()
    if channel is None:
        raise DeliveryRejected(f"channel {channel_id} no longer exists")
    return lambda item: channel


def _process(delivery: WebhookDelivery, *, parse: Parser, source: str) -> dict:
    """Process a recorded delivery (the worker's task, and a replay)."""
    try:
        data = _decoded(delivery.body)
        notification = _parsed(data, parse)
        channel_of = _recorded_channel_of(delivery, data)
    except DeliveryRejected as exc:
        _finish(
            delivery,
            verdict=WebhookDelivery.Verdict.REJECTED,
            error=exc.reason,
            summary={},
        )
        raise
    with transaction.atomic():
        verdict, error, summary, chains = _act(
            notification,
            source=source,
            received_at=delivery.received_at.isoformat(),
            channel_of=channel_of,
        )
        _finish(delivery, verdict=verdict, error=error, summary=summary)
        if chains:
            transaction.on_commit(partial(chains_enqueue, message_ids=chains))
    _log(delivery, summary)
    return summary


def whatsapp_delivery_process(*, delivery: WebhookDelivery) -> dict:
    """Process a recorded WhatsApp delivery; raise DeliveryRejected if malformed."""
    return _process(delivery, parse=parse_whatsapp, source="whatsapp")


def aisensy_delivery_process(*, delivery: WebhookDelivery) -> dict:
    """Process a recorded AiSensy delivery; raise DeliveryRejected if malformed."""
    return _process(delivery, parse=parse_aisensy, source="aisensy")


def delivery_replay(*, delivery: WebhookDelivery) -> dict:
    """Process a stored delivery again (admin); duplicates change nothing."""
    process = {
        WebhookDelivery.Source.WHATSAPP: whatsapp_delivery_process,
        WebhookDelivery.Source.AISENSY: aisensy_delivery_process,
    }.get(delivery.source)
    if process is None:
        from .ingress import api_delivery_replay, pubsub_delivery_replay

        process = {
            WebhookDelivery.Source.API: api_delivery_replay,
            WebhookDelivery.Source.PUBSUB: pubsub_delivery_replay,
        }[delivery.source]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(replays=delivery.replays + 1)
    return process(delivery=delivery)


PARSERS: dict[str, Parser] = {
    WebhookDelivery.Source.WHATSAPP: parse_whatsapp,
    WebhookDelivery.Source.AISENSY: parse_aisensy,
}


class ChainsNotEnqueued(Exception):
    """A delivery was processed but its reply chains did not reach the broker.

    The delivery is put back to ``received`` so :func:`deliveries_sweep`
    processes it again once its messages are older than REQUEUE_AFTER (they
    are then enqueued again); retrying sooner would count them as duplicates.
    """


def delivery_process_queued(*, delivery_id: Any) -> dict | None:
    """Process a delivery the view recorded (the worker's half of a webhook).

    Runs once per delivery: the row is locked and only a ``received`` one is
    processed, so a redelivered task, or the sweep's copy of a task still
    queued, changes nothing and returns None. A malformed delivery is
    recorded as rejected (None). An error rolls everything back and
    propagates (the task retries); when only the reply chains failed after
    commit, ChainsNotEnqueued is raised with the delivery back to received.
    """
    committed: list[bool] = []
    try:
        with transaction.atomic():
            delivery = (
                WebhookDelivery.objects.select_for_update()
                .filter(pk=delivery_id, verdict=WebhookDelivery.Verdict.RECEIVED)
                .first()
            )
            if delivery is None:
                return None
            parse = PARSERS[delivery.source]
            # Runs first of the commit hooks: the reply chains are enqueued after.
            transaction.on_commit(partial(committed.append, True))
            try:
                return _process(delivery, parse=parse, source=delivery.source)
            except DeliveryRejected:
                return None  # recorded as rejected, with the reason
    except Exception as exc:
        if not committed:
            raise
        logger.exception("webhook_chains_failed delivery=%s", delivery_id)
        raise ChainsNotEnqueued(_chains_lost([delivery_id], exc)) from exc


def deliveries_process_many(*, items: list[tuple[str, str | None]]) -> bool:
    """Process recorded deliveries together, as delivery_process_queued does
    each; say whether it did (False: the caller processes them one by one).

    ``items``: ``(delivery id, correlation id)`` pairs, what the outbox
    publishes. With BUS=direct and the stock chat route (the fast path), the
    deliveries still ``received`` are locked, parsed and acted on in one
    transaction: their messages stored in a few statements for all of them
    (webhooks.inbound.rows_store), their verdicts written in one, and their
    reply chains enqueued after commit in one batch, each under its
    delivery's correlation id. Per delivery as before: a malformed one is
    rejected with its reason, its summary and verdict are its own, and its
    log line carries its correlation id. Any error undoes the whole
    transaction and propagates: the caller then processes them one by one.
    One delivery at a time cost ~3.5 ms of a worker's CPU (a dozen queries
    and a transaction each; bench/webhooks.py's drain).
    """
    if not _fast_path():
        return False
    wanted: dict[uuid.UUID, str | None] = {}
    for delivery_id, correlation_id in items:
        try:
            wanted.setdefault(uuid.UUID(str(delivery_id)), correlation_id)
        except ValueError:
            return False  # not a delivery id: one by one says so
    # (delivery, its correlation id, its summary, its chains' message ids)
    done: list[tuple[WebhookDelivery, str | None, dict, list[str]]] = []
    with transaction.atomic():
        locked = {
            d.pk: d
            for d in WebhookDelivery.objects.select_for_update()
            .filter(pk__in=wanted, verdict=WebhookDelivery.Verdict.RECEIVED)
            .order_by("pk")  # one lock order for every worker: no deadlock
        }
        acting: list[tuple[WebhookDelivery, str | None, Notification, IngestResult]]
        acting = []
        groups: dict[tuple[str, int | None], tuple[Channel | None, list]] = {}
        for pk, cid in wanted.items():
            delivery = locked.get(pk)
            if delivery is None:
                continue  # processed already (a redelivered task)
            try:
                with correlation.active(cid):
                    data = _decoded(delivery.body)
                    notification = _parsed(data, PARSERS[delivery.source])
                    channel_of = _recorded_channel_of(delivery, data)
            except DeliveryRejected as exc:
                delivery.verdict = WebhookDelivery.Verdict.REJECTED
                delivery.error, delivery.summary = exc.reason, {}
                done.append((delivery, cid, {}, []))
                continue
            result = IngestResult()
            received_at = delivery.received_at.isoformat()
            for channel, its in _by_channel(notification.messages, channel_of):
                key = (delivery.source, None if channel is None else channel.pk)
                groups.setdefault(key, (channel, []))[1].extend(
                    rows_of(
                        its,
                        source=delivery.source,
                        received_at=received_at,
                        result=result,
                    )
                )
            acting.append((delivery, cid, notification, result))
        for (source, _), (channel, rows) in groups.items():
            rows_store(rows, source=source, account=channel)
        for delivery, cid, notification, result in acting:
            with correlation.active(cid):
                verdict, error, summary = _verdict(
                    notification,
                    source=delivery.source,
                    outcomes=result.outcomes,
                    problems=[*notification.problems, *result.problems],
                )
            delivery.verdict, delivery.error, delivery.summary = verdict, error, summary
            done.append((delivery, cid, summary, result.chains))
        _finish_many([d for d, *_ in done])
        if due := [(d, cid, ids) for d, cid, _, ids in done if ids]:
            transaction.on_commit(partial(_chains_enqueue_or_return, due))
    for delivery, cid, summary, _ in done:
        if delivery.verdict != WebhookDelivery.Verdict.REJECTED:
            with correlation.active(cid):
                _log(delivery, summary)
    return True


def _finish_many(deliveries: list[WebhookDelivery]) -> None:
    """Write each delivery's verdict, error and summary, and the time, in one
    statement (``bulk_update``'s CASE expressions cost ~1 ms a delivery of
    the worker's CPU, measured)."""
    if not deliveries:
        return
    now = timezone.now()
    for delivery in deliveries:
        delivery.error, delivery.processed_at = delivery.error[:4000], now
    if not pg_bulk.is_postgres():
        WebhookDelivery.objects.bulk_update(
            deliveries, ["verdict", "error", "summary", "processed_at"]
        )
        return
    pg_bulk.execute(
        f"UPDATE {quote(WebhookDelivery._meta.db_table)} AS d SET "  # noqa: S608
        "verdict = v.verdict, error = v.error, summary = v.summary, "
        "processed_at = %s FROM (SELECT (r->>0)::uuid AS id, r->>1 AS verdict, "
        f"r->>2 AS error, r->3 AS summary FROM {pg_bulk.ROWS}) AS v "
        "WHERE d.id = v.id",
        [
            now,
            pg_bulk.json_rows(
                (str(d.pk), d.verdict, d.error, d.summary) for d in deliveries
            ),
        ],
    )


def _chains_enqueue_or_return(
    due: list[tuple[WebhookDelivery, str | None, list[str]]],
) -> None:
    """Enqueue the committed deliveries' chains, each under its delivery's
    correlation id; should the broker refuse, put those deliveries back to
    ``received``, saying why (the sweep takes them again, as after
    ChainsNotEnqueued)."""
    try:
        chains_enqueue_many(chains=[(pk, cid) for _, cid, ids in due for pk in ids])
    except Exception as exc:
        logger.exception("webhook_chains_failed deliveries=%d", len(due))
        _chains_lost([d.pk for d, _, _ in due], exc)


def _chains_lost(delivery_ids: list[Any], exc: Exception) -> str:
    """Put committed deliveries whose reply chains the broker refused back to
    ``received``, saying why (the sweep takes them again); return the reason."""
    error = f"reply chains not enqueued: {type(exc).__name__}: {exc}"
    WebhookDelivery.objects.filter(pk__in=delivery_ids).update(
        verdict=WebhookDelivery.Verdict.RECEIVED, error=error[:4000]
    )
    return error


def delivery_defer_by_id(*, delivery_id: Any, error: str) -> None:
    """Leave a queued delivery ``received`` with ``error``: a dependency is down.

    :func:`deliveries_sweep` queues it again (every
    WEBHOOK_SWEEP_INTERVAL_SECONDS) until it goes through; the admin shows
    the error meanwhile. With the database down too, only the log says so.
    """
    logger.warning(
        "webhook_delivery_deferred delivery=%s error=%s", delivery_id, error[:200]
    )
    try:
        WebhookDelivery.objects.filter(
            pk=delivery_id, verdict=WebhookDelivery.Verdict.RECEIVED
        ).update(error=error[:4000])
    except DatabaseError:
        logger.warning("webhook_delivery_deferred_unrecorded delivery=%s", delivery_id)


def delivery_fail_by_id(*, delivery_id: Any, error: str) -> None:
    """Record that a queued delivery failed for good (the admin can replay it)."""
    WebhookDelivery.objects.filter(
        pk=delivery_id, verdict=WebhookDelivery.Verdict.RECEIVED
    ).update(
        verdict=WebhookDelivery.Verdict.FAILED,
        error=error[:4000],
        processed_at=timezone.now(),
    )


def deliveries_sweep(*, older_than: float | None = None, limit: int = 500) -> int:
    """Enqueue again the deliveries still ``received`` after ``older_than`` s.

    Their task was lost (the web process died between the row and the
    publish, the broker lost it) or their reply chains failed after commit.
    Each is processed once whatever the number of copies (see
    :func:`delivery_process_queued`). Returns how many were enqueued.
    """
    if older_than is None:
        older_than = settings.WEBHOOK_SWEEP_AFTER_SECONDS
    # Younger than REQUEUE_AFTER, the stored messages of a delivery whose
    # chains failed would be counted as duplicates rather than enqueued.
    older_than = max(older_than, REQUEUE_AFTER.total_seconds() + 1)
    cutoff = timezone.now() - timedelta(seconds=older_than)
    ids = list(
        WebhookDelivery.objects.filter(
            verdict=WebhookDelivery.Verdict.RECEIVED,
            source__in=list(PARSERS),
            received_at__lt=cutoff,
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    for delivery_id in ids:
        delivery_enqueue(delivery_id=delivery_id)
    if ids:
        logger.warning("webhook_sweep requeued=%d", len(ids))
    return len(ids)
