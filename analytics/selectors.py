"""Read VOC events: the tenant summary and the dashboard series.

Every aggregate runs in the database on the (tenant, ts) and
(tenant, event_type, ts) indexes; Python only shapes the grouped rows.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Avg, Count, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from vocoeng.models import Tenant

from .models import EventType, VocEvent

PERCENTILES = (("p50", 0.5), ("p95", 0.95))


def _window(*, days: int, now: datetime | None = None) -> datetime:
    """Return the start of a ``days``-day window ending now (UTC midnight based)."""
    now = now or timezone.now()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)


def _events(*, tenant: Tenant | None, since: datetime) -> QuerySet[VocEvent]:
    qs = VocEvent.objects.filter(ts__gte=since)
    return qs.filter(tenant=tenant) if tenant is not None else qs


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _qos_postgresql(
    *, tenant: Tenant | None, since: datetime
) -> dict[str, dict[str, float]]:
    where = "event_type = %s AND ts >= %s AND value IS NOT NULL"
    params: list[Any] = [EventType.QOS_METRIC.value, since]
    if tenant is not None:
        where = "tenant_id = %s AND " + where
        params.insert(0, tenant.pk)
    sql = (
        # Identifiers are fixed; every value goes as a parameter.
        "SELECT metric,"  # noqa: S608
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY value),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY value)"
        f" FROM {VocEvent._meta.db_table} WHERE {where} GROUP BY metric"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {m: {"p50": p50, "p95": p95} for m, p50, p95 in cursor.fetchall()}


def _qos_portable(
    *, tenant: Tenant | None, since: datetime
) -> dict[str, dict[str, float]]:
    """Compute percentile_cont per metric with ORDER BY value LIMIT 2 OFFSET k.

    One grouped COUNT, then two rows per percentile per metric: the database
    sorts (on SQLite, which has no percentile_cont); Python interpolates.
    """
    qs = _events(tenant=tenant, since=since).filter(
        event_type=EventType.QOS_METRIC, value__isnull=False
    )
    counts = qs.values_list("metric").annotate(n=Count("id")).order_by("metric")
    result: dict[str, dict[str, float]] = {}
    for metric, n in counts:
        ordered = qs.filter(metric=metric).order_by("value")
        result[metric] = {}
        for name, fraction in PERCENTILES:
            position = fraction * (n - 1)
            low = math.floor(position)
            pair = list(ordered.values_list("value", flat=True)[low : low + 2])
            upper = pair[1] if len(pair) > 1 else pair[0]
            result[metric][name] = pair[0] + (upper - pair[0]) * (position - low)
    return result


def qos_percentiles(
    *, tenant: Tenant | None, since: datetime
) -> dict[str, dict[str, float]]:
    """Return ``{metric: {"p50", "p95"}}`` (continuous percentiles) since ``since``."""
    if connection.vendor == "postgresql":
        raw = _qos_postgresql(tenant=tenant, since=since)
    else:
        raw = _qos_portable(tenant=tenant, since=since)
    return {
        metric: {k: _round(v) for k, v in values.items()}
        for metric, values in sorted(raw.items())
    }


def _day(value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat() if isinstance(value, date) else str(value)


def voc_summary(*, tenant: Tenant | None, days: int = 7) -> dict[str, Any]:
    """Return the summary of ARCHITECTURE.md for ``tenant`` (None: all tenants)."""
    since = _window(days=days)
    rows = (
        _events(tenant=tenant, since=since)
        .annotate(date=TruncDate("ts"))
        .values("date", "event_type")
        .annotate(
            count=Count("id"), scored=Count("sentiment"), sentiment_sum=Sum("sentiment")
        )
        .order_by("date", "event_type")
    )
    daily = []
    totals: dict[str, list[float]] = {}
    # One grouped query; the per-type totals add up its (days x types) rows.
    for row in rows:
        scored = row["scored"]
        daily.append(
            {
                "date": _day(row["date"]),
                "event_type": row["event_type"],
                "count": row["count"],
                "avg_sentiment": _round(row["sentiment_sum"] / scored)
                if scored
                else None,
            }
        )
        total = totals.setdefault(row["event_type"], [0, 0, 0.0])
        total[0] += row["count"]
        total[1] += scored
        total[2] += row["sentiment_sum"] or 0.0
    by_type = {
        event_type: {
            "count": count,
            "avg_sentiment": _round(sentiment_sum / scored) if scored else None,
        }
        for event_type, (count, scored, sentiment_sum) in sorted(totals.items())
    }
    return {
        "tenant_id": tenant.slug if tenant is not None else None,
        "days": days,
        "by_type": by_type,
        "daily": daily,
        "qos": qos_percentiles(tenant=tenant, since=since),
    }


def dashboard_series(*, days: int = 14) -> dict[str, Any]:
    """Return all tenants' daily volume per type and daily sentiment per tenant."""
    since = _window(days=days)
    events = VocEvent.objects.filter(ts__gte=since).annotate(date=TruncDate("ts"))
    volume = [
        (_day(r["date"]), r["event_type"], r["count"])
        for r in events.values("date", "event_type")
        .annotate(count=Count("id"))
        .order_by("date", "event_type")
    ]
    sentiment = [
        (_day(r["date"]), r["tenant__slug"], r["avg"])
        for r in events.filter(sentiment__isnull=False)
        .values("date", "tenant__slug")
        .annotate(avg=Avg("sentiment"))
        .order_by("date", "tenant__slug")
    ]
    dates = [(since + timedelta(days=i)).date().isoformat() for i in range(days)]
    return {"dates": dates, "volume": volume, "sentiment": sentiment}


def voc_events_for(*, tenant: Tenant | None) -> QuerySet[VocEvent]:
    """Return the events visible for ``tenant`` (None: all), newest first."""
    qs = VocEvent.objects.select_related("tenant").order_by("-ts", "-id")
    return qs.filter(tenant=tenant) if tenant is not None else qs
