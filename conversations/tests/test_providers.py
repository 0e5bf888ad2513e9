"""AI providers through the real openai and anthropic SDKs over loopback HTTP."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from conversations import providers
from conversations.models import AICall, Message
from conversations.providers import AIUnavailable, ChatTurn

pytestmark = pytest.mark.timeout(60)
HELLO = [ChatTurn(role="user", content="Hello there, how are you today")]


def test_openai_reply_carries_usage_cost_and_provider(fake_ai) -> None:
    result = providers.generate(system="Be brief.", messages=HELLO)
    assert result.provider == "openai"
    assert result.model == "gpt-4o-mini"
    assert result.text == "[gpt-4o-mini] reply to: Hello there, how are you today"
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    expected = (
        Decimal("0.15") * result.prompt_tokens
        + Decimal("0.60") * result.completion_tokens
    ) / Decimal(1_000_000)
    assert result.cost == expected.quantize(Decimal("0.000001"))
    sent = fake_ai.calls("/v1/chat/completions")[0].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1]["content"] == HELLO[0].content


def test_anthropic_reply(fake_ai, settings) -> None:
    settings.AI_PROVIDER, settings.AI_FALLBACK = "anthropic", []
    result = providers.generate(system="Be brief.", messages=HELLO)
    assert result.provider == "anthropic"
    assert result.model == "claude-3-5-haiku-latest"
    assert result.text.endswith("Hello there, how are you today")
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert fake_ai.calls("/v1/messages")[0].body["system"] == "Be brief."


def test_429_with_retry_after_is_retried_after_that_wait(fake_ai) -> None:
    fake_ai.enqueue_fault("429", retry_after=2)
    waits: list[float] = []
    result = providers.generate(system="", messages=HELLO, sleep=waits.append)
    assert result.provider == "openai"
    assert waits == [2.0]
    assert [(a.ok, a.http_status) for a in result.attempts] == [
        (False, 429),
        (True, None),
    ]


def test_5xx_until_the_fallback_provider_answers(fake_ai, settings) -> None:
    settings.AI_MAX_RETRIES = 2
    fake_ai.always_fail("500", model="gpt-4o-mini")
    seen = []
    result = providers.generate(system="", messages=HELLO, on_attempt=seen.append)
    assert result.provider == "anthropic"
    assert [(a.provider, a.ok, a.http_status) for a in seen] == [
        ("openai", False, 500),
        ("openai", False, 500),
        ("openai", False, 500),
        ("anthropic", True, None),
    ]
    assert all(a.transient for a in seen[:3])


def test_anthropic_overloaded_529_is_transient(fake_ai, settings) -> None:
    settings.AI_PROVIDER, settings.AI_FALLBACK = "anthropic", []
    fake_ai.enqueue_fault("529")
    result = providers.generate(system="", messages=HELLO)
    assert [a.http_status for a in result.attempts] == [529, None]


def test_a_hung_call_times_out_and_is_retried(fake_ai, settings) -> None:
    settings.AI_TIMEOUT_SECONDS = 0.5
    fake_ai.enqueue_fault("hang", seconds=5)
    result = providers.generate(system="", messages=HELLO)
    failed = result.attempts[0]
    assert not failed.ok and failed.transient and "timeout" in failed.error
    assert result.attempts[1].ok


def test_401_is_not_retried_and_is_permanent(fake_ai, settings) -> None:
    settings.OPENAI_API_KEY = "bad-key"
    settings.AI_FALLBACK = []
    with pytest.raises(AIUnavailable) as info:
        providers.generate(system="", messages=HELLO)
    assert len(info.value.attempts) == 1
    assert info.value.attempts[0].http_status == 401
    assert info.value.transient is False
    assert len(fake_ai.calls()) == 1


def test_400_context_too_long_is_not_retried(fake_ai, settings) -> None:
    settings.AI_FALLBACK = []
    fake_ai.enqueue_fault("400")
    with pytest.raises(AIUnavailable):
        providers.generate(system="", messages=HELLO)
    assert len(fake_ai.calls()) == 1


def test_retry_after_longer_than_the_cap_falls_back_at_once(fake_ai, settings) -> None:
    settings.AI_RETRY_MAX_BACKOFF_SECONDS = 5
    fake_ai.enqueue_fault("429", retry_after=120, model="gpt-4o-mini")
    waits: list[float] = []
    result = providers.generate(system="", messages=HELLO, sleep=waits.append)
    assert result.provider == "anthropic"
    assert waits == []


@pytest.mark.django_db
def test_failed_attempts_and_the_final_failure_are_recorded(
    fake_ai, settings, client
) -> None:
    settings.OPENAI_API_KEY = "bad-key"
    settings.ANTHROPIC_API_KEY = "bad-key"
    response = client.post(
        "/process",
        json.dumps({"user_id": "u1", "message": "hi", "message_id": "x401"}),
        content_type="application/json",
    )
    assert response.status_code == 502
    assert "401" in response.json()["reason"]
    inbound = Message.objects.get(external_id="x401")
    assert inbound.status == Message.Status.FAILED
    assert not Message.objects.filter(role="assistant").exists()
    calls = list(
        AICall.objects.order_by("id").values_list("provider", "status", "http_status")
    )
    assert calls == [("openai", "failed", 401), ("anthropic", "failed", 401)]


@pytest.mark.django_db
def test_usage_and_cost_are_stored_with_the_reply(fake_ai, client) -> None:
    fake_ai.enqueue_fault("503")
    body = client.post(
        "/process",
        json.dumps({"user_id": "u1", "message": "price please", "message_id": "c1"}),
        content_type="application/json",
    ).json()
    reply = Message.objects.get(role="assistant")
    assert body["ai_response"]["model"] == reply.model == "gpt-4o-mini"
    assert reply.cost > 0
    assert reply.total_tokens == body["ai_response"]["usage"]["total_tokens"]
    ledger = AICall.objects.order_by("id")
    assert [c.status for c in ledger] == ["failed", "succeeded"]
    assert ledger.last().cost == reply.cost


def test_a_deadline_cuts_the_call_short_and_starts_no_retry(fake_ai, settings) -> None:
    import time

    settings.AI_TIMEOUT_SECONDS = 30
    settings.AI_FALLBACK = []
    fake_ai.enqueue_fault("hang", seconds=10)
    deadline = time.monotonic() + 0.5
    with pytest.raises(AIUnavailable) as info:
        providers.generate(system="", messages=HELLO, deadline=deadline)
    assert info.value.deadline_exceeded
    assert info.value.transient is False
    # One attempt, cut at the deadline by its HTTP timeout; no second one.
    assert [a.ok for a in info.value.attempts] == [False]
    assert "timeout" in info.value.attempts[0].error
    assert len(fake_ai.calls()) == 1
