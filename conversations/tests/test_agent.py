"""The agent loop with the real openai and anthropic SDKs against the fake model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from conftest import fake_ai_env, wait_for
from conversations.agent import ROUND_LIMIT_TEXT, agent_generate
from conversations.models import AICall, KnowledgeEntry, Message
from conversations.providers import Attempt, ChatTurn
from conversations.routes import chat_message
from conversations.services import message_receive, reply_generate
from conversations.tests.tools import ran
from vocoeng.models import Tenant
from vocoeng.services import api_key_create, tenant_get_default

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(120)]

OPENAI, ANTHROPIC = "/v1/chat/completions", "/v1/messages"
ASK = [ChatTurn(role="user", content="What is two plus three?")]


@pytest.fixture
def model(fake_ai, settings, request) -> Iterator[Any]:
    """The fake model as one provider (no fallback that could hide a 400)."""
    settings.AI_PROVIDER = getattr(request, "param", "openai")
    settings.AI_FALLBACK = []
    ran.clear()
    yield fake_ai
    ran.clear()


def _path(settings) -> str:
    return OPENAI if settings.AI_PROVIDER == "openai" else ANTHROPIC


def _run(tools: list[str], **kwargs: Any):
    kwargs.setdefault("tenant_id", None)
    kwargs.setdefault("ref", "message:test")
    return agent_generate(
        system="Be brief.", messages=ASK, tools=tools, agent_id="default", **kwargs
    )


def _tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the tool results a request carries, as (content, is_error) dicts."""
    found = []
    for message in body["messages"]:
        if message["role"] == "tool":
            found.append({"content": message["content"], "is_error": None})
        elif isinstance(message.get("content"), list):
            found += [
                {"content": b["content"], "is_error": b.get("is_error", False)}
                for b in message["content"]
                if b.get("type") == "tool_result"
            ]
    return found


def test_no_tools_is_exactly_one_plain_call(model, caplog) -> None:
    seen: list[Attempt] = []
    result = _run([], on_attempt=seen.append)
    assert result.text == "[gpt-4o-mini] reply to: What is two plus three?"
    ((request),) = model.calls()
    assert "tools" not in request.body and "tool_choice" not in request.body
    assert len(seen) == 1 and result.attempts == seen
    # Unknown names only: logged, and the same single plain call.
    model.reset()
    _run(["no_such_tool"])
    assert len(model.calls()) == 1 and "tools" not in model.calls()[0].body
    assert "tools_unknown names=no_such_tool" in caplog.text


@pytest.mark.parametrize("model", ["openai", "anthropic"], indirect=True)
def test_model_calls_a_tool_and_answers_with_its_result(model, settings) -> None:
    model.script_tools(("test_add", {"a": 2, "b": 3}))
    seen: list[Attempt] = []
    result = _run(["test_add", "current_time"], on_attempt=seen.append)

    assert ran == [{"a": 2, "b": 3}]
    first, second = (r.body for r in model.calls())
    offered = [t.get("name") or t["function"]["name"] for t in first["tools"]]
    assert offered == ["test_add", "current_time"]
    assert _tool_results(second) == [
        {
            "content": '{"sum": 5}',
            "is_error": None if "chat" in _path(settings) else False,
        }
    ]
    assert '{"sum": 5}' in result.text
    assert result.provider == settings.AI_PROVIDER
    # Usage and cost of both rounds; every attempt reported.
    assert len(result.attempts) == 2 and seen == result.attempts
    assert result.prompt_tokens == sum(a.prompt_tokens for a in seen) > 0
    assert result.completion_tokens == sum(a.completion_tokens for a in seen) > 0
    assert result.cost == sum(a.cost for a in seen) > 0


@pytest.mark.parametrize("model", ["openai", "anthropic"], indirect=True)
def test_invalid_arguments_are_not_passed_and_the_model_gets_an_error(
    model, settings
) -> None:
    model.script_tools(("test_add", {"a": "two", "b": 3}))
    result = _run(["test_add"])
    assert ran == []
    (sent,) = _tool_results(model.calls()[-1].body)
    assert json.loads(sent["content"]) == {
        "error": "invalid arguments: a: 'two' is not of type 'integer'"
    }
    if settings.AI_PROVIDER == "anthropic":
        assert sent["is_error"] is True
    assert "invalid arguments" in result.text


@pytest.mark.parametrize("model", ["openai", "anthropic"], indirect=True)
@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("test_boom", "ConnectionError: inventory service unreachable"),
        ("test_slow", "timed out after 0.3s"),
    ],
)
def test_a_failing_or_slow_tool_gives_an_error_and_the_reply_arrives(
    model, name: str, error: str
) -> None:
    model.script_tools((name, {}))
    started = time.monotonic()
    result = _run([name])
    assert time.monotonic() - started < 3  # not the 4 s the tool sleeps
    assert len(ran) == 1
    (sent,) = _tool_results(model.calls()[-1].body)
    assert json.loads(sent["content"]) == {"error": error}
    assert result.text and error in result.text


@pytest.mark.parametrize("model", ["openai", "anthropic"], indirect=True)
def test_round_limit_holds_for_a_model_that_always_asks(model, settings) -> None:
    settings.AI_MAX_TOOL_ROUNDS = 2
    model.script_tools(("test_add", {"a": 1, "b": 1}), rounds=None)
    result = _run(["test_add"])
    assert len(ran) == 2
    requests = [r.body for r in model.calls()]
    assert len(requests) == 3
    choices = [json.dumps(r["tool_choice"]) for r in requests]
    assert ["none" in c for c in choices] == [False, False, True]
    assert result.text.strip()
    assert len(result.attempts) == 3


def test_a_model_that_ignores_tool_choice_still_gets_a_clear_reply(
    model, settings
) -> None:
    settings.AI_MAX_TOOL_ROUNDS = 1
    model.script_tools(
        ("test_add", {"a": 1, "b": 1}), rounds=None, ignore_tool_choice=True
    )
    result = _run(["test_add"])
    assert len(ran) == 1 and len(model.calls()) == 2
    assert result.text == ROUND_LIMIT_TEXT
    assert result.tool_calls == ()


def test_broken_json_arguments_are_an_error_result(model) -> None:
    model.script_tools(("test_add", '{"a": 1, "b": '))
    result = _run(["test_add"])
    assert ran == []
    assistant, tool_turn = model.calls()[-1].body["messages"][-2:]
    # The call goes back as the model wrote it, answered with the error.
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b": '
    assert json.loads(tool_turn["content"]) == {
        "error": "invalid arguments: arguments must be a JSON object"
    }
    assert "arguments must be a JSON object" in result.text


def test_several_calls_in_one_turn_each_get_their_result(model) -> None:
    model.script_tools(
        ("test_add", {"a": 1, "b": 2}), ("current_time", {"timezone": "Asia/Tokyo"})
    )
    _run(["test_add", "current_time"])
    results = _tool_results(model.calls()[-1].body)
    assert json.loads(results[0]["content"]) == {"sum": 3}
    assert json.loads(results[1]["content"])["utc_offset"] == "+0900"


def test_anthropic_gets_all_results_of_a_turn_in_one_message(model, settings) -> None:
    settings.AI_PROVIDER = "anthropic"
    model.script_tools(("test_add", {"a": 1, "b": 2}), ("test_boom", {}))
    result = _run(["test_add", "test_boom"])
    assert result.provider == "anthropic"
    last = model.calls()[-1].body["messages"][-1]
    assert last["role"] == "user"
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result"]
    assert [b.get("is_error", False) for b in last["content"]] == [False, True]


# -- VOC events -----------------------------------------------------------------


def _summary(tenant: Tenant) -> dict[str, Any]:
    _, key = api_key_create(tenant=tenant, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.get("/api/v1/analytics/summary/")
    assert response.status_code == 200
    return response.json()["by_type"]


def test_tool_calls_are_events_in_the_tenants_summary_once(model) -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    other = Tenant.objects.create(slug="globex", name="Globex")
    model.script_tools(("test_add", {"a": 2, "b": 3}), ("test_boom", {}))
    for _ in range(2):  # a redelivered task runs the same reply again
        _run(["test_add", "test_boom"], tenant_id=tenant.pk, ref="message:abc")

    by_type = _summary(tenant)
    assert by_type["agent_action"]["count"] == 1
    assert by_type["tool_invocation"]["count"] == 2
    assert _summary(other) == {}
    from analytics.models import VocEvent

    rows = {
        e.payload.get("tool_name") or e.payload["action"]: e.payload
        for e in VocEvent.objects.filter(tenant=tenant)
    }
    assert rows["call_tools"]["agent_id"] == "default"
    assert rows["call_tools"]["details"]["tools"] == ["test_add", "test_boom"]
    assert rows["test_add"]["arguments"] == {"a": 2, "b": 3}
    assert rows["test_add"]["success"] is True
    assert rows["test_add"]["latency_ms"] >= 0
    assert rows["test_boom"]["success"] is False
    assert rows["test_boom"]["metadata"]["error"] == (
        "ConnectionError: inventory service unreachable"
    )


def test_no_events_without_a_tenant_and_a_storage_failure_keeps_the_reply(
    model, caplog
) -> None:
    from analytics.models import VocEvent

    model.script_tools(("test_add", {"a": 2, "b": 3}))
    assert _run(["test_add"], tenant_id=None).text
    assert not VocEvent.objects.exists()
    # A tenant deleted meanwhile: the events cannot be stored, the reply can.
    model.script_tools(("test_add", {"a": 2, "b": 3}))
    assert '{"sum": 5}' in _run(["test_add"], tenant_id=987654).text
    assert not VocEvent.objects.exists()
    assert "agent_events_failed ref=message:test" in caplog.text


# -- the reply path -------------------------------------------------------------


def test_reply_generate_uses_ai_tools_and_records_every_round(model, settings) -> None:
    settings.AI_TOOLS = ["current_time"]
    model.script_tools(("current_time", {"timezone": "Asia/Kolkata"}))
    inbound, _ = message_receive(
        tenant=tenant_get_default(),
        channel="api",
        user_id="u1",
        text="What time is it in Mumbai?",
        external_id="tool-1",
    )
    reply = reply_generate(message_id=inbound.pk)
    assert reply is not None and "+05:30" in reply.content
    calls = AICall.objects.filter(message=inbound, status="succeeded")
    assert calls.count() == 2
    assert reply.total_tokens == sum(c.total_tokens for c in calls)
    assert reply.cost == sum(c.cost for c in calls)


@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_a_tool_call_through_a_real_worker(celery_worker_factory, fake_ai_server):
    fake_ai_server.reset()
    tenant = tenant_get_default()
    KnowledgeEntry.objects.create(
        tenant=tenant,
        question="What are your opening hours?",
        answer="We are open 9 to 5, Monday to Friday.",
        keywords="hours, open",
    )
    other = Tenant.objects.create(slug="other", name="Other")
    KnowledgeEntry.objects.create(
        tenant=other,
        question="Opening hours?",
        answer="Never closed.",
        keywords="hours",
    )
    fake_ai_server.script_tools(("faq_lookup", {"query": "opening hours"}))
    celery_worker_factory(
        env={**fake_ai_env(fake_ai_server), "AI_FALLBACK": "", "AI_TOOLS": "faq_lookup"}
    )
    signature = chat_message(
        data={
            "source": "api",
            "user_id": "w1",
            "message": "When are you open?",
            "message_id": "tool-e2e-1",
        },
        attributes={},
    )
    signature.apply_async()
    reply = wait_for(
        lambda: Message.objects.filter(
            role="assistant", status=Message.Status.DELIVERED
        ).first(),
        timeout=60,
    )
    assert "We are open 9 to 5" in reply.content
    assert "Never closed" not in reply.content
    inbound = reply.reply_to
    assert AICall.objects.filter(message=inbound, status="succeeded").count() == 2
    by_type = _summary(tenant)
    assert by_type["tool_invocation"]["count"] == 1
    assert by_type["agent_action"]["count"] == 1
    fake_ai_server.reset()
