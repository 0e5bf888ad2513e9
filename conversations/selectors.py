"""Read models of the conversations app for the admin and reports."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth

from .models import AICall


def spend_by_tenant_month_model(*, months: int = 12) -> list[dict[str, Any]]:
    """Return AI spend per tenant, calendar month (UTC) and model, newest first.

    Every attempt counts (retries, fallbacks, tool rounds), from the AICall
    ledger; ``calls`` and ``failed`` count attempts.
    """
    rows = (
        AICall.objects.exclude(status=AICall.Status.STARTED)
        .annotate(month=TruncMonth("created_at"))
        .values("tenant__slug", "month", "model")
        .annotate(
            calls=Count("pk"),
            failed=Count("pk", filter=Q(status=AICall.Status.FAILED)),
            tokens=Sum("total_tokens"),
            cost=Sum("cost"),
        )
        .order_by("-month", "tenant__slug", "-cost")
    )
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for row in rows:
        seen.add(row["month"])
        if len(seen) > months:
            break
        out.append(row)
    return out
