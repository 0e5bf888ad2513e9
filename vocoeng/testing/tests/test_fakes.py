"""Exercise the loopback fakes through the real openai/anthropic SDKs and httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from vocoeng.testing.fake_ai import FakeModelServer
from vocoeng.testing.fake_graph import FakeGraphServer

pytestmark = pytest.mark.timeout(30)

WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Look up the weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Look up the weather",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def ai_server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def ai(ai_server: FakeModelServer) -> Iterator[FakeModelServer]:
    ai_server.reset()
    ai_server.latency = 0.0
    yield ai_server
    ai_server.reset()


@pytest.fixture
def oai(ai: FakeModelServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=ai.base_url, api_key="sk-test", max_retries=0, timeout=5
    )


@pytest.fixture
def claude(ai: FakeModelServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=ai.anthropic_base_url, api_key="sk-ant-test", max_retries=0, timeout=5
    )


@pytest.fixture(scope="module")
def graph_server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer() as server:
        yield server


@pytest.fixture
def graph(graph_server: FakeGraphServer) -> Iterator[FakeGraphServer]:
    graph_server.reset()
    yield graph_server
    graph_server.reset()


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- OpenAI protocol -----------------------------------------------------------


def test_openai_reply_has_content_usage_and_is_recorded(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    completion = oai.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "system", "content": "You are terse"},
            {"role": "user", "content": "hello there"},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert choice.message.content == "[gpt-test] reply to: hello there"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 10
    (call,) = ai.calls("/v1/chat/completions")
    assert call.status == 200
    assert call.model == "gpt-test"
    assert call.body["messages"][1]["content"] == "hello there"
    assert "authorization" not in call.headers


def test_openai_429_carries_retry_after(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    ai.enqueue_fault("429", retry_after=7)

    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="gpt-test", messages=_user("hi"))

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    # The fault was consumed: the next call succeeds.
    oai.chat.completions.create(model="gpt-test", messages=_user("hi"))


def test_openai_sdk_retry_honours_retry_after(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    ai.enqueue_fault("429", retry_after=0.3)

    started = time.monotonic()
    oai.with_options(max_retries=1).chat.completions.create(
        model="gpt-test", messages=_user("hi")
    )

    assert time.monotonic() - started >= 0.3
    assert [c.status for c in ai.calls()] == [429, 200]


def test_openai_500_raises_internal_server_error(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    ai.enqueue_fault("500")

    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model="gpt-test", messages=_user("hi"))

    assert caught.value.status_code == 500


def test_openai_400_context_length(ai: FakeModelServer, oai: openai.OpenAI) -> None:
    ai.enqueue_fault("400")

    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="gpt-test", messages=_user("hi"))

    assert caught.value.code == "context_length_exceeded"


def test_openai_hang_times_out_client(ai: FakeModelServer, oai: openai.OpenAI) -> None:
    ai.enqueue_fault("hang", seconds=5)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.3).chat.completions.create(
            model="gpt-test", messages=_user("hi")
        )

    assert time.monotonic() - started < 2


def test_openai_bad_key_is_rejected(ai: FakeModelServer) -> None:
    client = openai.OpenAI(base_url=ai.base_url, api_key="bad-key", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-test", messages=_user("hi"))

    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"


def test_always_fail_targets_one_model(ai: FakeModelServer, oai: openai.OpenAI) -> None:
    ai.always_fail("500", model="broken-model")

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="broken-model", messages=_user("hi"))
    assert oai.chat.completions.create(model="gpt-test", messages=_user("hi"))

    ai.clear_faults()
    oai.chat.completions.create(model="broken-model", messages=_user("hi"))


def test_openai_tool_call_round_trip(ai: FakeModelServer, oai: openai.OpenAI) -> None:
    def responder(path: str, body: dict[str, Any]) -> str | dict[str, Any]:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return f"It is {json.loads(last['content'])['temp']} degrees"
        return {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pune"}}]}

    ai.set_responder(responder)
    messages: list[Any] = _user("weather in Pune?")

    first = oai.chat.completions.create(
        model="gpt-test", messages=messages, tools=[WEATHER_TOOL_OPENAI]
    )

    assert first.choices[0].finish_reason == "tool_calls"
    (tool_call,) = first.choices[0].message.tool_calls or []
    assert tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Pune"}

    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append(
        {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temp": 31}'}
    )
    second = oai.chat.completions.create(
        model="gpt-test", messages=messages, tools=[WEATHER_TOOL_OPENAI]
    )

    assert second.choices[0].message.content == "It is 31 degrees"
    assert second.choices[0].finish_reason == "stop"
    recorded = ai.calls()[-1].body["messages"][-1]
    assert recorded == {
        "role": "tool",
        "tool_call_id": tool_call.id,
        "content": '{"temp": 31}',
    }


# -- Anthropic protocol --------------------------------------------------------


def test_anthropic_reply_has_content_and_usage(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    message = claude.messages.create(
        model="claude-test",
        max_tokens=100,
        system="You are terse",
        messages=_user("hello there"),
    )

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == "[claude-test] reply to: hello there"
    assert message.usage.input_tokens == 5
    assert message.usage.output_tokens == 5
    (call,) = ai.calls("/v1/messages")
    assert call.headers["anthropic-version"]
    assert "authorization" not in call.headers


def test_anthropic_max_tokens_truncates(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-test", max_tokens=2, messages=_user("hello there")
    )

    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_anthropic_raw_protocol_headers(ai: FakeModelServer) -> None:
    url = f"{ai.anthropic_base_url}/v1/messages"
    body = {"model": "claude-test", "max_tokens": 10, "messages": _user("hi")}
    version = {"anthropic-version": "2023-06-01"}

    ok = httpx.post(url, json=body, headers={"x-api-key": "k", **version})
    no_key = httpx.post(url, json=body, headers=version)
    no_version = httpx.post(url, json=body, headers={"x-api-key": "k"})

    assert ok.status_code == 200
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400
    assert no_version.json()["type"] == "error"


def test_anthropic_429_carries_retry_after(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    ai.enqueue_fault("429", retry_after=3, path="/v1/messages")

    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="claude-test", max_tokens=10, messages=_user("x"))

    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.type == "rate_limit_error"


def test_anthropic_500_and_529(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    ai.enqueue_fault("500")
    ai.enqueue_fault("529")

    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="claude-test", max_tokens=10, messages=_user("x"))
    with pytest.raises(anthropic.OverloadedError) as caught:
        claude.messages.create(model="claude-test", max_tokens=10, messages=_user("x"))

    assert caught.value.type == "overloaded_error"


def test_anthropic_hang_times_out_client(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    ai.enqueue_fault("hang", seconds=5)

    with pytest.raises(anthropic.APITimeoutError):
        claude.with_options(timeout=0.3).messages.create(
            model="claude-test", max_tokens=10, messages=_user("x")
        )


def test_anthropic_bad_key_is_rejected(ai: FakeModelServer) -> None:
    client = anthropic.Anthropic(
        base_url=ai.anthropic_base_url, api_key="bad-key", max_retries=0
    )

    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="claude-test", max_tokens=10, messages=_user("x"))

    assert caught.value.type == "authentication_error"


def test_anthropic_tool_use_round_trip(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    def responder(path: str, body: dict[str, Any]) -> str | dict[str, Any]:
        block = body["messages"][-1]["content"]
        if isinstance(block, list) and block[0]["type"] == "tool_result":
            return f"It is {block[0]['content']} degrees"
        return {
            "content": "Let me check.",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Pune"}}],
        }

    ai.set_responder(responder)
    messages: list[Any] = _user("weather in Pune?")

    first = claude.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER_TOOL_ANTHROPIC],
    )

    assert first.stop_reason == "tool_use"
    text, tool_use = first.content
    assert text.type == "text"
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Pune"}

    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "31"}
            ],
        }
    )
    second = claude.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER_TOOL_ANTHROPIC],
    )

    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "It is 31 degrees"
    recorded = ai.calls("/v1/messages")[-1].body["messages"]
    assert recorded[1]["content"][1]["id"] == tool_use.id


def test_scripted_tool_call_then_an_answer_quoting_the_result(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    ai.script_tools(("get_weather", {"city": "Pune"}))
    messages: list[Any] = _user("weather in Pune?")
    first = oai.chat.completions.create(
        model="gpt-test", messages=messages, tools=[WEATHER_TOOL_OPENAI]
    )
    (call,) = first.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Pune"}
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "31 C"})
    second = oai.chat.completions.create(
        model="gpt-test", messages=messages, tools=[WEATHER_TOOL_OPENAI]
    )
    assert second.choices[0].message.content == "[gpt-test] tool result: 31 C"
    assert second.usage and second.usage.prompt_tokens > first.usage.prompt_tokens


def test_scripted_tool_is_not_asked_for_when_not_offered(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    ai.script_tools(("get_weather", {"city": "Pune"}))
    message = claude.messages.create(
        model="claude-test", max_tokens=50, messages=_user("hello")
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "[claude-test] reply to: hello"


def test_tool_choice_none_gets_text_not_calls(
    ai: FakeModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    ai.script_tools(("get_weather", {"city": "Pune"}), rounds=None)
    first = oai.chat.completions.create(
        model="gpt-test",
        messages=_user("weather?"),
        tools=[WEATHER_TOOL_OPENAI],
        tool_choice="none",
    )
    assert first.choices[0].finish_reason == "stop"
    assert not first.choices[0].message.tool_calls
    second = claude.messages.create(
        model="claude-test",
        max_tokens=50,
        messages=_user("weather?"),
        tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "none"},
    )
    assert [b.type for b in second.content] == ["text"]


def test_openai_unanswered_tool_call_is_a_400(
    ai: FakeModelServer, oai: openai.OpenAI
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    with pytest.raises(openai.BadRequestError, match="call_1"):
        oai.chat.completions.create(
            model="gpt-test",
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "user", "content": "y"},
            ],
        )
    with pytest.raises(openai.BadRequestError, match="preceeding"):
        oai.chat.completions.create(
            model="gpt-test",
            messages=[
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_9", "content": "z"},
            ],
        )


def test_anthropic_tool_blocks_must_pair_and_declare_tools(
    ai: FakeModelServer, claude: anthropic.Anthropic
) -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_2", "content": "31"}
    messages: list[Any] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        claude.messages.create(model="claude-test", max_tokens=9, messages=messages)
    with pytest.raises(anthropic.BadRequestError, match="toolu_2"):
        claude.messages.create(
            model="claude-test",
            max_tokens=9,
            messages=messages,
            tools=[WEATHER_TOOL_ANTHROPIC],
        )


def test_concurrent_slow_requests_overlap(ai: FakeModelServer) -> None:
    ai.latency = 0.5
    clients = 50
    durations: list[float] = []
    barrier = threading.Barrier(clients)
    limits = httpx.Limits(max_connections=clients)

    def worker(http: httpx.Client) -> None:
        barrier.wait()
        started = time.monotonic()
        response = http.post(
            f"{ai.base_url}/chat/completions",
            headers={"Authorization": "Bearer k"},
            json={"model": "gpt-test", "messages": _user("hi")},
        )
        response.raise_for_status()
        durations.append(time.monotonic() - started)

    with httpx.Client(timeout=10, limits=limits) as http:
        threads = [
            threading.Thread(target=worker, args=(http,)) for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(durations) == clients
    # Serialised handling would take 25 s; overlapping takes ~0.5 s.
    assert max(durations) < 2.0


# -- WhatsApp Cloud API / AiSensy ---------------------------------------------


def test_graph_text_send_succeeds(graph: FakeGraphServer) -> None:
    response = httpx.post(
        graph.messages_url("123456"),
        headers={"Authorization": "Bearer EAAG-test"},
        json={
            "messaging_product": "whatsapp",
            "to": "+919876543210",
            "type": "text",
            "text": {"body": "Namaste"},
        },
    )

    assert response.status_code == 200
    body = response.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+919876543210", "wa_id": "919876543210"}]
    assert body["messages"][0]["id"].startswith("wamid.")
    assert graph.sent_texts() == [("+919876543210", "Namaste")]


def test_graph_template_send_succeeds(graph: FakeGraphServer) -> None:
    response = httpx.post(
        graph.messages_url("123456"),
        headers={"Authorization": "Bearer EAAG-test"},
        json={
            "messaging_product": "whatsapp",
            "to": "919876543210",
            "type": "template",
            "template": {
                "name": "follow_up",
                "language": {"code": "en"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "Asha"}]}
                ],
            },
        },
    )

    assert response.status_code == 200
    assert response.json()["messages"][0]["message_status"] == "accepted"
    assert graph.sent_templates() == [("919876543210", "follow_up", ["Asha"])]


def test_graph_bad_token_and_invalid_body(graph: FakeGraphServer) -> None:
    text = {"messaging_product": "whatsapp", "to": "91", "text": {"body": "x"}}

    bad_token = httpx.post(
        graph.messages_url(), headers={"Authorization": "Bearer bad-token"}, json=text
    )
    no_body = httpx.post(
        graph.messages_url(),
        headers={"Authorization": "Bearer ok"},
        json={**text, "text": {}},
    )

    assert bad_token.status_code == 401
    assert bad_token.json()["error"]["code"] == 190
    assert bad_token.json()["error"]["type"] == "OAuthException"
    assert no_body.status_code == 400
    assert no_body.json()["error"]["code"] == 100
    assert graph.sent_texts() == []


def test_graph_131047_error_shape(graph: FakeGraphServer) -> None:
    graph.enqueue_fault("131047", to="919876543210")
    send = {
        "messaging_product": "whatsapp",
        "to": "919876543210",
        "type": "text",
        "text": {"body": "Are you still there?"},
    }

    response = httpx.post(
        graph.messages_url(), headers={"Authorization": "Bearer ok"}, json=send
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 131047
    assert error["type"] == "OAuthException"
    assert "Re-engagement message" in error["message"]
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert error["fbtrace_id"]
    assert graph.sent_texts() == []


def test_graph_429_rate_limit(graph: FakeGraphServer) -> None:
    graph.enqueue_fault("429", retry_after=2)
    send = {
        "messaging_product": "whatsapp",
        "to": "919876543210",
        "text": {"body": "hi"},
    }

    response = httpx.post(
        graph.messages_url(), headers={"Authorization": "Bearer ok"}, json=send
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == 130429


def test_aisensy_campaign_and_direct_send(graph: FakeGraphServer) -> None:
    campaign = httpx.post(
        f"{graph.aisensy_base_url}/campaign/t1/api/v2",
        json={
            "apiKey": "aisensy-key",
            "campaignName": "welcome",
            "destination": "919876543210",
            "userName": "Asha",
            "templateParams": ["Asha"],
        },
    )
    direct = httpx.post(
        f"{graph.aisensy_base_url}/direct-apis/t1/messages",
        headers={"X-AiSensy-Project-API-Pwd": "project-pwd"},
        json={
            "messaging_product": "whatsapp",
            "to": "919876543210",
            "type": "text",
            "text": {"body": "Hello from AiSensy"},
        },
    )

    assert campaign.status_code == 200
    assert campaign.json()["success"] == "true"
    assert direct.status_code == 200
    assert direct.json()["messages"][0]["id"].startswith("wamid.")
    assert graph.sent_texts() == [("919876543210", "Hello from AiSensy")]
    assert graph.sent_templates() == [("919876543210", "welcome", ["Asha"])]
    assert all("x-aisensy-project-api-pwd" not in r.headers for r in graph.requests)
