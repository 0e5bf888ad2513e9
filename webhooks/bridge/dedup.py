"""Claim bus messages by dedup key in the database, across bridge replicas.

A claim is taken (``pending``) before the route runs and finished (``done`` or
``dead``) after the chain is in the broker, so two deliveries of one key never
both enqueue. A bridge that dies between claim and finish leaves a pending
claim; after PUBSUB_BRIDGE_CLAIM_SECONDS the next delivery takes it over, and
if the chain had in fact reached the broker it is enqueued a second time. That
is harmless because every chain is idempotent itself (the routes store inbound
rows keyed on their ids and the tasks claim their work), and it is far rarer
than the redeliveries the claim absorbs.

With PUBSUB_BRIDGE_DEDUP=redis (the default when the broker is Redis) the
claims are Redis keys instead of rows (vocoeng.claims_redis), with the same
decisions; each function here hands its work to that store then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from vocoeng import pg_bulk
from vocoeng.claims_redis import redis_store
from vocoeng.models import ProcessedMessage


class Claim(StrEnum):
    """Say what a claim attempt found."""

    CLAIMED = "claimed"  # ours: route and enqueue it
    DONE = "done"  # handled before: a duplicate
    BUSY = "busy"  # another delivery is enqueueing it right now


def dedup_claim(*, kind: str, key: str, message_id: str) -> Claim:
    """Claim ``key`` of ``kind`` for this delivery."""
    if (store := redis_store()) is not None:
        return _CLAIM_OF[store.claim_many([(kind, key)])[0]]
    now = timezone.now()
    try:
        with transaction.atomic():
            ProcessedMessage.objects.create(
                kind=kind,
                key=key,
                message_id=message_id,
                state=ProcessedMessage.State.PENDING,
                claimed_at=now,
            )
        return Claim.CLAIMED
    except IntegrityError:
        pass
    row = ProcessedMessage.objects.filter(kind=kind, key=key).first()
    if row is None:  # released between our insert and read: try once more
        return dedup_claim(kind=kind, key=key, message_id=message_id)
    if row.state != ProcessedMessage.State.PENDING:
        return Claim.DONE
    stale = now - timedelta(seconds=settings.PUBSUB_BRIDGE_CLAIM_SECONDS)
    if row.claimed_at < stale:
        taken = ProcessedMessage.objects.filter(
            pk=row.pk, state=ProcessedMessage.State.PENDING, claimed_at=row.claimed_at
        ).update(claimed_at=now, message_id=message_id)
        if taken:
            return Claim.CLAIMED
    return Claim.BUSY


# What the Redis store's states mean here.
_CLAIM_OF = {
    "claimed": Claim.CLAIMED,
    "done": Claim.DONE,
    "dead": Claim.DONE,
    "pending": Claim.BUSY,
}


# Rows per INSERT statement (6 parameters each; SQLite allows 32766).
_CHUNK = 1000


class Claims(dict):
    """Map each ``(kind, key)`` to its :class:`Claim`; ``ids`` holds the row id
    of each claim the batch INSERT took (for :func:`dedup_finish_many`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[tuple[str, str], int] = {}


def dedup_claim_many(*, items: Sequence[tuple[str, str, str]]) -> Claims:
    """Claim many ``(kind, key, message_id)`` at once; return each key's claim.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` takes every free key;
    the keys already present are read in one query and judged as
    :func:`dedup_claim` does (a stale pending claim is taken over one by one).
    A key listed twice is claimed once.
    """
    first: dict[tuple[str, str], str] = {}
    for kind, key, message_id in items:
        first.setdefault((kind, key), message_id)
    if (store := redis_store()) is not None:
        claims = Claims()
        for pair, state in zip(first, store.claim_many(list(first)), strict=True):
            claims[pair] = _CLAIM_OF[state]
        return claims
    now = timezone.now()
    rows = list(first.items())
    claim = _claim_pg if pg_bulk.is_postgres() else _claim_values
    claims = Claims()
    for pk, kind, key in claim(rows, now):
        claims[(kind, key)] = Claim.CLAIMED
        claims.ids[(kind, key)] = pk
    _judge_taken(first, claims, now)
    return claims


def _claim_values(
    rows: list[tuple[tuple[str, str], str]], now: datetime
) -> list[tuple[int, str, str]]:
    """Insert the free claims, ``_CHUNK`` rows a statement; return those taken
    as ``(id, kind, key)``."""
    table = connection.ops.quote_name(ProcessedMessage._meta.db_table)
    stamp = connection.ops.adapt_datetimefield_value(now)
    q = connection.ops.quote_name
    columns = pg_bulk.quoted(
        "kind", "key", "message_id", "state", "claimed_at", "created_at"
    )
    taken: list[tuple[int, str, str]] = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
                params: list[object] = []
                for (kind, key), message_id in chunk:
                    params += [kind, key, message_id, "pending", stamp, stamp]
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) "  # noqa: S608 - our names
                    f"VALUES {values} ON CONFLICT ({q('kind')}, {q('key')}) "
                    f"DO NOTHING RETURNING {q('id')}, {q('kind')}, {q('key')}",
                    params,
                )
                taken.extend(cursor.fetchall())
    return taken


def _claim_pg(
    rows: list[tuple[tuple[str, str], str]], now: datetime
) -> list[tuple[int, str, str]]:
    """Insert the free claims in one fixed statement; return those taken as
    ``(id, kind, key)``."""
    table = connection.ops.quote_name(ProcessedMessage._meta.db_table)
    columns = pg_bulk.quoted(
        "kind", "key", "message_id", "state", "claimed_at", "created_at"
    )
    conflict = pg_bulk.quoted("kind", "key")
    return pg_bulk.execute(
        f"INSERT INTO {table} ({columns}) "  # noqa: S608 - our names
        "SELECT r->>0, r->>1, r->>2, %s, %s, %s "
        f"FROM {pg_bulk.ROWS} "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING id, {conflict}",
        [
            ProcessedMessage.State.PENDING.value,
            now,
            now,
            pg_bulk.json_rows((kind, key, mid) for (kind, key), mid in rows),
        ],
    )


def _judge_taken(
    first: dict[tuple[str, str], str],
    claims: dict[tuple[str, str], Claim],
    now: datetime,
) -> dict[tuple[str, str], Claim]:
    """Judge the keys the INSERT did not take, as :func:`dedup_claim` does."""
    taken = [k for k in first if k not in claims]
    if not taken:
        return claims
    stale = now - timedelta(seconds=settings.PUBSUB_BRIDGE_CLAIM_SECONDS)
    found = {}
    for kind in {kind for kind, _ in taken}:
        keys = [key for k, key in taken if k == kind]
        for row in ProcessedMessage.objects.filter(kind=kind, key__in=keys):
            found[(row.kind, row.key)] = row
    for kind, key in taken:
        row = found.get((kind, key))
        if row is None or (
            row.state == ProcessedMessage.State.PENDING and row.claimed_at < stale
        ):  # released meanwhile, or stale: the careful one-by-one path
            claims[(kind, key)] = dedup_claim(
                kind=kind, key=key, message_id=first[(kind, key)]
            )
        elif row.state != ProcessedMessage.State.PENDING:
            claims[(kind, key)] = Claim.DONE
        else:
            claims[(kind, key)] = Claim.BUSY
    return claims


def _by_kind(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for kind, key in keys:
        grouped.setdefault(kind, []).append(key)
    return grouped


def dedup_finish_many(
    *,
    keys: Iterable[tuple[str, str]],
    dead: bool = False,
    ids: Mapping[tuple[str, str], int] | None = None,
) -> None:
    """Mark many ``(kind, key)`` claims done (or dead).

    The claims whose row id is in ``ids`` (:attr:`Claims.ids`) are updated by
    id in one statement: by primary key, whatever the table's statistics say
    (by kind and key, a planner with stale statistics scanned every row of the
    kind). The others by kind and key, one UPDATE per kind.
    """
    if (store := redis_store()) is not None:
        store.finish_many(keys, dead=dead)
        return
    state = ProcessedMessage.State.DEAD if dead else ProcessedMessage.State.DONE
    ids = ids or {}
    by_id = []
    rest = []
    for k in keys:
        if (pk := ids.get(k)) is not None:
            by_id.append(pk)
        else:
            rest.append(k)
    if by_id:
        if pg_bulk.is_postgres():
            table = connection.ops.quote_name(ProcessedMessage._meta.db_table)
            pg_bulk.execute(
                f"UPDATE {table} SET state = %s "  # noqa: S608 - our names
                "WHERE id = ANY(%s::bigint[])",
                [state.value, by_id],
            )
        else:
            ProcessedMessage.objects.filter(pk__in=by_id).update(state=state)
    for kind, group in _by_kind(rest).items():
        if pg_bulk.is_postgres():
            table = connection.ops.quote_name(ProcessedMessage._meta.db_table)
            q = connection.ops.quote_name
            pg_bulk.execute(
                f"UPDATE {table} SET {q('state')} = %s "  # noqa: S608 - our names
                f"WHERE {q('kind')} = %s AND {q('key')} = ANY(%s::text[])",
                [state.value, kind, group],
            )
            continue
        ProcessedMessage.objects.filter(kind=kind, key__in=group).update(state=state)


def dedup_release_many(*, keys: Iterable[tuple[str, str]]) -> None:
    """Drop many pending claims so redeliveries can try again."""
    if (store := redis_store()) is not None:
        store.release_many(keys)
        return
    for kind, group in _by_kind(keys).items():
        ProcessedMessage.objects.filter(
            kind=kind, key__in=group, state=ProcessedMessage.State.PENDING
        ).delete()


def dedup_prune(*, older_than: datetime, chunk: int = 10_000) -> int:
    """Delete the claims taken before ``older_than``; return how many.

    A claim only matters while its message can still come back: Pub/Sub keeps
    an unacked message for the subscription's retention (7 days), and a
    publisher's retry comes sooner. Older claims are dead weight in the
    table and its unique index. Deleted ``chunk`` rows a statement, oldest
    first, each its own transaction: no long lock, no huge WAL record.
    Claims kept in Redis expire by themselves; the rows pruned here are the
    database's (also those left from before a switch to Redis).
    """
    deleted = 0
    while True:
        ids = list(
            ProcessedMessage.objects.filter(created_at__lt=older_than)
            .order_by("created_at")
            .values_list("pk", flat=True)[:chunk]
        )
        if not ids:
            return deleted
        deleted += ProcessedMessage.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < chunk:
            return deleted


def dedup_finish(*, kind: str, key: str, dead: bool = False) -> None:
    """Mark the claim done (or dead-lettered): later deliveries are duplicates."""
    if (store := redis_store()) is not None:
        store.finish_many([(kind, key)], dead=dead)
        return
    state = ProcessedMessage.State.DEAD if dead else ProcessedMessage.State.DONE
    ProcessedMessage.objects.filter(kind=kind, key=key).update(state=state)


def dedup_release(*, kind: str, key: str) -> None:
    """Drop a pending claim so a redelivery can try again (enqueue failed)."""
    if (store := redis_store()) is not None:
        store.release_many([(kind, key)])
        return
    ProcessedMessage.objects.filter(
        kind=kind, key=key, state=ProcessedMessage.State.PENDING
    ).delete()
