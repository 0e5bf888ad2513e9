"""Spend control: the monthly budget and the daily token cap, before every call."""

from __future__ import annotations

import json
import uuid
from decimal import ROUND_DOWN, Decimal

import pytest
from django.db.models import Sum

from conftest import fake_ai_env, wait_for
from conversations.models import AICall, Message
from conversations.routes import chat_message
from conversations.services import message_receive, reply_process_sync
from vocoeng.services import tenant_get_default

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# Dear enough that a short exchange costs cents (budgets are kept in cents).
PRICES = {"gpt-4o-mini": [2000.0, 2000.0]}
FALLBACK = "We are over our assistant budget; a person will answer soon."


@pytest.fixture
def priced(fake_ai, settings):
    settings.AI_PRICES = {k: tuple(v) for k, v in PRICES.items()}
    settings.AI_FALLBACK = []
    return fake_ai


def _inbound(text: str = "What are your opening hours?", user: str = "u1"):
    message, _ = message_receive(
        tenant=tenant_get_default(),
        channel="api",
        user_id=user,
        text=text,
        external_id=f"budget-{uuid.uuid4().hex}",
    )
    return message


def _spent() -> Decimal:
    return AICall.objects.aggregate(total=Sum("cost"))["total"] or Decimal(0)


def test_under_budget_the_call_is_made_and_ledgered_once(priced) -> None:
    tenant = tenant_get_default()
    tenant.monthly_budget = Decimal("100.00")
    tenant.save()
    reply = reply_process_sync(message=_inbound())
    assert reply is not None and reply.provider == "openai"
    call = AICall.objects.get()
    assert call.status == AICall.Status.SUCCEEDED
    assert call.cost == reply.cost > 0
    assert call.attempt == 1 and call.total_tokens == reply.total_tokens


def test_over_budget_no_model_call_and_the_fallback_text_is_sent(priced) -> None:
    tenant = tenant_get_default()
    tenant.over_budget_text = FALLBACK
    tenant.monthly_budget = Decimal("100.00")
    tenant.save()
    reply_process_sync(message=_inbound())
    tenant.monthly_budget = _spent().quantize(Decimal("0.01"), ROUND_DOWN)  # used up
    tenant.save()
    calls_before = len(priced.calls("/v1/chat/completions"))

    inbound = _inbound("Still there?")
    reply = reply_process_sync(message=inbound)

    assert len(priced.calls("/v1/chat/completions")) == calls_before
    inbound.refresh_from_db()
    assert inbound.status == Message.Status.OVER_BUDGET
    assert "monthly AI budget" in inbound.error
    assert reply is not None and reply.content == FALLBACK
    assert reply.status == Message.Status.DELIVERED  # the api channel's adapter
    assert reply.metadata["over_budget"] is True and reply.cost == 0
    assert AICall.objects.count() == 1  # nothing ledgered for the refused call


def test_over_budget_without_fallback_text_stores_and_marks_only(priced) -> None:
    tenant = tenant_get_default()
    tenant.monthly_budget = Decimal("0.00")
    tenant.save()
    inbound = _inbound()
    assert reply_process_sync(message=inbound) is None
    inbound.refresh_from_db()
    assert inbound.status == Message.Status.OVER_BUDGET
    assert not Message.objects.filter(role="assistant").exists()
    assert not priced.calls("/v1/chat/completions")


def test_retries_and_fallbacks_count_against_the_budget(priced, settings) -> None:
    # Every attempt is admitted and ledgered: a 429 then a success is two rows.
    tenant = tenant_get_default()
    tenant.monthly_budget = Decimal("100.00")
    tenant.save()
    priced.enqueue_fault("429", count=1, path="/v1/chat/completions", retry_after=0)
    reply_process_sync(message=_inbound())
    statuses = sorted(AICall.objects.values_list("status", flat=True))
    assert statuses == ["failed", "succeeded"]
    assert not AICall.objects.filter(status=AICall.Status.STARTED).exists()


def test_daily_token_cap_per_conversation(priced) -> None:
    tenant = tenant_get_default()
    tenant.over_budget_text = FALLBACK
    first = reply_process_sync(message=_inbound(user="capped"))
    tenant.daily_token_cap = first.total_tokens  # used up by that one exchange
    tenant.save()
    second = reply_process_sync(message=_inbound("and now?", user="capped"))
    assert second.content == FALLBACK
    assert "daily token cap" in second.reply_to.error
    # Another conversation of the same tenant still gets model replies.
    other = reply_process_sync(message=_inbound(user="someone-else"))
    assert other.provider == "openai"


def test_concurrent_workers_overrun_the_budget_by_at_most_one_call(
    priced, fake_ai_server, celery_worker_factory
) -> None:
    tenant = tenant_get_default()
    tenant.over_budget_text = FALLBACK
    tenant.save()
    # One call, in this process, to learn what a call of this text costs.
    text = "Tell me about the budget test, please."
    reply_process_sync(message=_inbound(text, user="warm-up"))
    one_call = _spent()
    assert one_call > Decimal("0.01")
    tenant.monthly_budget = (one_call * Decimal("3.5")).quantize(Decimal("0.01"))
    tenant.save()

    fake_ai_server.latency = 0.4  # calls overlap across workers and threads
    env = {
        **fake_ai_env(fake_ai_server),
        "AI_FALLBACK": "",
        "AI_PRICES": json.dumps(PRICES),
    }
    for _ in range(2):
        celery_worker_factory(queues="ai,default", concurrency=6, env=env)
    users = [f"c{i}" for i in range(10)]
    for user in users:
        signature = chat_message(
            data={
                "source": "api",
                "user_id": user,
                "message": text,
                "message_id": f"conc-{user}",
            },
            attributes={},
        )
        signature.apply_async()

    def settled() -> bool:
        return Message.objects.filter(
            role="user",
            external_id__startswith="conc-",
            status__in=(Message.Status.REPLIED, Message.Status.OVER_BUDGET),
        ).count() == len(users)

    wait_for(settled, timeout=90)
    spent = _spent()
    assert spent <= tenant.monthly_budget + one_call, (spent, tenant.monthly_budget)
    over = Message.objects.filter(
        role="user", external_id__startswith="conc-", status=Message.Status.OVER_BUDGET
    )
    assert over.count() >= len(users) - 3
    # Every model call the server saw is in the ledger (nothing spent unseen).
    served = len(
        [c for c in fake_ai_server.calls("/v1/chat/completions") if c.status == 200]
    )
    assert served == AICall.objects.filter(status=AICall.Status.SUCCEEDED).count()
    wait_for(
        lambda: (
            Message.objects.filter(
                role="assistant", content=FALLBACK, status=Message.Status.DELIVERED
            ).count()
            == over.count()
        )
    )
