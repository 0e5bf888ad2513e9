"""Find the channel a delivery belongs to, and the agent settings it uses.

A channel row (admin-managed) is a tenant's WhatsApp number, AiSensy account or
API source. The environment's ``WHATSAPP_*`` / ``AISENSY_*`` variables are the
default channel of the default tenant; it is represented by ``None`` here, so
a one-number set-up needs no row at all.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from django.conf import settings
from django.db import connections, router
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import Channel, Tenant

_T = TypeVar("_T")


class UnknownChannel(Exception):
    """No channel (and not the default one) matches what a delivery names."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Agent:
    """The agent settings of a channel, with the environment's as defaults."""

    agent_id: str
    system_prompt: str
    providers: list[str] | None  # None: AI_PROVIDER then AI_FALLBACK
    models: dict[str, str] = field(default_factory=dict)
    history_length: int = 20
    tools: list[str] = field(default_factory=list)
    rate_limit: str = ""


def agent_for(channel: Channel | None) -> Agent:
    """Return the agent settings of ``channel`` (None: the default channel)."""
    if channel is None:
        return Agent(
            agent_id="default",
            system_prompt=settings.AI_SYSTEM_PROMPT,
            providers=None,
            history_length=settings.AI_HISTORY_MESSAGES,
            tools=list(settings.AI_TOOLS),
            rate_limit=settings.AI_USER_RATE_LIMIT,
        )
    return Agent(
        agent_id=f"channel:{channel.pk}",
        system_prompt=channel.system_prompt or settings.AI_SYSTEM_PROMPT,
        providers=list(channel.providers) or None,
        models=dict(channel.provider_models),
        history_length=(
            settings.AI_HISTORY_MESSAGES
            if channel.history_length is None
            else channel.history_length
        ),
        tools=list(channel.tools),
        rate_limit=channel.rate_limit or settings.AI_USER_RATE_LIMIT,
    )


def _default_whatsapp_takes(phone_number_id: str) -> bool:
    # The environment's number answers for any id when none is configured (a
    # one-number set-up), else only for its own id.
    if not settings.WHATSAPP_APP_SECRET:
        return False
    configured = settings.WHATSAPP_PHONE_NUMBER_ID
    return not configured or configured == phone_number_id


def _resolved(phone_number_ids: set[str], rows: dict[str, _T], default: _T) -> dict:
    """Map each id to its row, else to ``default`` if the environment's number
    takes it; raise UnknownChannel naming the others."""
    resolved: dict[str, _T] = {}
    unknown: list[str] = []
    for phone_id in sorted(phone_number_ids):
        if phone_id in rows:
            resolved[phone_id] = rows[phone_id]
        elif _default_whatsapp_takes(phone_id):
            resolved[phone_id] = default
        else:
            unknown.append(phone_id)
    if unknown:
        raise UnknownChannel(f"unknown phone_number_id {', '.join(unknown)}")
    return resolved


# phone number id -> its active channel row (None: no row), inside
# channels_remembered() only
_remembered: ContextVar[dict[str, Channel | None] | None] = ContextVar(
    "vocoeng_channels_remembered", default=None
)


@contextmanager
def channels_remembered() -> Iterator[None]:
    """Read each phone number id's channel once within the block.

    For a worker's task that processes many deliveries together (the same
    number, usually): one query for all of them instead of one each (~0.9 ms
    of the worker's CPU a delivery, measured in bench/webhooks.py's drain).
    What a task reads is as fresh as the task.
    """
    token = _remembered.set({})
    try:
        yield
    finally:
        _remembered.reset(token)


def whatsapp_channels_resolve(
    *, phone_number_ids: set[str]
) -> dict[str, Channel | None]:
    """Return each phone number id's channel (None: the default channel).

    Raises UnknownChannel naming the ids no channel answers for.
    """
    memo = _remembered.get()
    wanted = phone_number_ids if memo is None else phone_number_ids - memo.keys()
    rows: dict[str, Channel] = {}
    if wanted:
        rows = {
            c.phone_number_id: c
            for c in Channel.objects.select_related("tenant").filter(
                kind=Channel.Kind.WHATSAPP,
                is_active=True,
                phone_number_id__in=wanted,
            )
        }
    if memo is not None:
        memo.update({phone_id: rows.get(phone_id) for phone_id in wanted})
        rows = {
            phone_id: row
            for phone_id in phone_number_ids
            if (row := memo[phone_id]) is not None
        }
    return _resolved(phone_number_ids, rows, None)


# How long a web process trusts the app secrets it read (per phone number id):
# the webhook checks a signature on every request, and the query cost as much
# CPU as the rest of the webhook's checks. A change saved in this process
# clears them at once (post_save / post_delete); one saved elsewhere (another
# web process) is seen within this many seconds, or at once when a signature
# fails or a number is unknown: those are looked up again before a refusal.
# So a new or rotated secret is never refused; an old one (or a deactivated
# number) may still be taken for this long, and the worker, which finds the
# channel again, rejects a delivery for a number no longer active.
APP_SECRETS_TTL_SECONDS = 5.0
# phone number id -> (its channel's app secret, None: no active channel row;
# the monotonic time it expires)
_app_secrets: dict[str, tuple[str | None, float]] = {}


def app_secrets_forget() -> None:
    """Forget the app secrets read so far (a channel changed; tests)."""
    _app_secrets.clear()


@receiver(post_save, sender=Channel, dispatch_uid="vocoeng.channels.saved")
@receiver(post_delete, sender=Channel, dispatch_uid="vocoeng.channels.deleted")
def _channel_changed(**_: object) -> None:
    app_secrets_forget()


def _app_secrets_read(ids: list[str]) -> dict[str, str]:
    """Return the app secret of each id's active WhatsApp channel row."""
    meta = Channel._meta
    secret = meta.get_field("app_secret")
    connection = connections[router.db_for_read(Channel)]
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    phone, marks = column("phone_number_id"), ", ".join(["%s"] * len(ids))
    # Names quoted from the model, values as parameters.
    sql = " ".join(
        [
            f"SELECT {phone}, {column('app_secret')}",
            f"FROM {quote(meta.db_table)}",
            f"WHERE {column('kind')} = %s AND {column('is_active')} = %s",
            f"AND {phone} IN ({marks})",
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [Channel.Kind.WHATSAPP, True, *ids])
        return {
            number: secret.from_db_value(value, None, connection)
            for number, value in cursor.fetchall()
        }


def whatsapp_app_secrets(
    *, phone_number_ids: set[str], fresh: bool = False
) -> dict[str, str]:
    """Return the app secret that signs each phone number id's deliveries.

    What :func:`whatsapp_channels_resolve` decides, as :func:`whatsapp_app_secret`
    of each, in one plain query: the webhook checks every signature with it,
    and building the ORM query cost more CPU than the rest of the request.
    The rows read are kept for APP_SECRETS_TTL_SECONDS; ``fresh``: read them
    again (before refusing a delivery). Raises UnknownChannel naming the ids
    no channel answers for (read fresh first).
    """
    ids = sorted(phone_number_ids)
    now = time.monotonic()
    cached = [_app_secrets.get(number) for number in ids]
    if not fresh and all(c is not None and c[1] > now for c in cached):
        rows = {n: c[0] for n, c in zip(ids, cached, strict=True) if c and c[0]}
        try:
            return _resolved(phone_number_ids, rows, settings.WHATSAPP_APP_SECRET)
        except UnknownChannel:
            pass  # perhaps added since: read again before refusing
    rows = _app_secrets_read(ids) if ids else {}
    expires = time.monotonic() + APP_SECRETS_TTL_SECONDS
    for number in ids:
        _app_secrets[number] = (rows.get(number), expires)
    return _resolved(phone_number_ids, rows, settings.WHATSAPP_APP_SECRET)


def whatsapp_app_secret(channel: Channel | None) -> str:
    """Return the app secret that signs ``channel``'s deliveries."""
    return settings.WHATSAPP_APP_SECRET if channel is None else channel.app_secret


def whatsapp_verify_token_valid(*, given: str) -> bool:
    """Return whether ``given`` is the verify token of any WhatsApp channel."""
    tokens = [settings.WHATSAPP_VERIFY_TOKEN]
    tokens += [
        c.verify_token
        for c in Channel.objects.filter(kind=Channel.Kind.WHATSAPP, is_active=True)
    ]
    # Compare with every token (no early exit): timing says nothing about which.
    found = False
    for token in tokens:
        if token and hmac.compare_digest(given.encode(), token.encode()):
            found = True
    return found


def aisensy_channel_for_secret(*, given: str) -> Channel | None:
    """Return the AiSensy channel whose webhook secret is ``given``.

    None is the default channel (AISENSY_WEBHOOK_SECRET); raises UnknownChannel
    when no secret matches.
    """
    match: Channel | None = None
    found = False
    default = settings.AISENSY_WEBHOOK_SECRET
    if default and hmac.compare_digest(given.encode(), default.encode()):
        found = True
    for channel in Channel.objects.select_related("tenant").filter(
        kind=Channel.Kind.AISENSY, is_active=True
    ):
        secret = channel.aisensy_webhook_secret
        if secret and hmac.compare_digest(given.encode(), secret.encode()):
            match, found = (match or channel), True
    if not found:
        raise UnknownChannel("X-AiSensy-Secret does not match")
    return match


def api_channel_for(*, tenant: Tenant) -> Channel | None:
    """Return the tenant's API source channel (its agent settings), if any."""
    return (
        Channel.objects.filter(tenant=tenant, kind=Channel.Kind.API, is_active=True)
        .order_by("pk")
        .first()
    )
