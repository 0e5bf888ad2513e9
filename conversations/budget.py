"""Spend control: a tenant's monthly AI budget and a per-conversation token cap.

Both are checked before every model attempt (retries, fallbacks and tool rounds
included) from the usage ledger, AICall. The check and the ledger row of the
attempt are written in one transaction under a lock of the tenant's row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's IMMEDIATE transactions
serialize writers), so two workers cannot both take the last of a budget: an
attempt still in flight counts at the cost of a typical call of its model.
Spend can pass the budget by at most about one call's cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from vocoeng.models import Tenant

from . import providers
from .models import AICall, Message
from .providers import Attempt

logger = logging.getLogger(__name__)

# How many recent calls of a model give the in-flight estimate.
_ESTIMATE_SAMPLE = 20


def ledger_fields(attempt: Attempt) -> dict[str, Any]:
    """Return the AICall fields that record ``attempt``'s outcome."""
    return {
        "provider": attempt.provider,
        "model": attempt.model,
        "attempt": attempt.attempt,
        "status": AICall.Status.SUCCEEDED if attempt.ok else AICall.Status.FAILED,
        "transient": attempt.transient,
        "http_status": attempt.http_status,
        "error": attempt.error[:2000],
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "total_tokens": attempt.prompt_tokens + attempt.completion_tokens,
        "cost": attempt.cost,
        "latency_ms": attempt.latency_ms,
    }


class BudgetExceeded(Exception):
    """No model call may be made: the budget or the token cap is used up."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _month_start(now: Any) -> Any:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def tenant_month_spend(*, tenant_id: int) -> Decimal:
    """Return what the tenant's model attempts cost this calendar month (UTC)."""
    now = timezone.now()
    spent = AICall.objects.filter(
        tenant_id=tenant_id, created_at__gte=_month_start(now)
    ).aggregate(total=Sum("cost"))["total"]
    return Decimal(spent or 0).quantize(Decimal("0.000001"))


def _estimate(tenant_id: int, model: str) -> Decimal:
    """Return the cost of a typical call of ``model`` for an attempt in flight."""
    recent = list(
        AICall.objects.filter(
            tenant_id=tenant_id, model__startswith=model, status=AICall.Status.SUCCEEDED
        )
        .order_by("-created_at")
        .values_list("cost", flat=True)[:_ESTIMATE_SAMPLE]
    )
    if recent:
        return max(recent)
    # Nothing seen yet: the most it could cost (a short prompt, max_tokens out).
    return providers.price(model, 1000, settings.AI_MAX_TOKENS)


class SpendGuard:
    """Admit (or refuse) each model attempt of one reply, and ledger it.

    ``before`` is generate()'s ``before_attempt`` hook: it raises
    BudgetExceeded, or writes a ``started`` ledger row; ``after`` is its
    ``on_attempt`` hook and completes that row with the outcome.
    """

    def __init__(
        self,
        *,
        tenant: Tenant,
        ref: str,
        message: Message | None = None,
        conversation_id: int | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.tenant = tenant
        self.ref = ref
        self.message = message
        self.conversation_id = conversation_id
        self.release = release
        self._open: int | None = None

    @classmethod
    def for_tenant(cls, *, tenant: Tenant, **kwargs: Any) -> SpendGuard | None:
        """Return a guard when the tenant has a budget or a cap, else None."""
        if tenant.monthly_budget is None and tenant.daily_token_cap is None:
            return None
        return cls(tenant=tenant, **kwargs)

    def before(self, provider: str, model: str) -> None:
        now = timezone.now()
        with transaction.atomic():
            # The lock that serializes admissions of one tenant.
            limits = (
                Tenant.objects.select_for_update()
                .filter(pk=self.tenant.pk)
                .values("monthly_budget", "daily_token_cap")
                .first()
            ) or {"monthly_budget": None, "daily_token_cap": None}
            budget, cap = limits["monthly_budget"], limits["daily_token_cap"]
            if budget is not None:
                self._check_budget(budget, model, now)
            if cap is not None and self.conversation_id is not None:
                self._check_cap(cap, now)
            row = AICall.objects.create(
                tenant_id=self.tenant.pk,
                message=self.message,
                ref=self.ref,
                provider=provider,
                model=model,
                attempt=0,
                status=AICall.Status.STARTED,
            )
        self._open = row.pk
        if self.release is not None:
            self.release()

    def _check_budget(self, budget: Decimal, model: str, now: Any) -> None:
        stale = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
        totals = AICall.objects.filter(
            tenant_id=self.tenant.pk, created_at__gte=_month_start(now)
        ).aggregate(
            spent=Sum("cost"),
            in_flight=Count(
                "pk",
                filter=Q(status=AICall.Status.STARTED, created_at__gte=stale),
            ),
        )
        spent = totals["spent"] or Decimal(0)
        in_flight = totals["in_flight"] or 0
        committed = spent
        if in_flight:
            committed += in_flight * _estimate(self.tenant.pk, model)
        if committed >= budget:
            logger.warning(
                "ai_budget_exceeded tenant=%s spent=%s in_flight=%s budget=%s",
                self.tenant.pk,
                spent,
                in_flight,
                budget,
            )
            raise BudgetExceeded(
                f"monthly AI budget {budget} used up ({spent} spent this month)"
            )

    def _check_cap(self, cap: int, now: Any) -> None:
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = (
            AICall.objects.filter(
                message__conversation_id=self.conversation_id, created_at__gte=day
            ).aggregate(total=Sum("total_tokens"))["total"]
            or 0
        )
        if used >= cap:
            logger.warning(
                "ai_token_cap_reached conversation=%s used=%s cap=%s",
                self.conversation_id,
                used,
                cap,
            )
            raise BudgetExceeded(
                f"daily token cap {cap} of this conversation used up ({used} used)"
            )

    def after(self, attempt: Attempt) -> None:
        row_id, self._open = self._open, None
        fields = ledger_fields(attempt)
        if row_id is not None:
            AICall.objects.filter(pk=row_id).update(**fields)
            return
        AICall.objects.create(
            tenant_id=self.tenant.pk, message=self.message, ref=self.ref, **fields
        )
