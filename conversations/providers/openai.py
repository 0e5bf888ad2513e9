"""Call OpenAI or any OpenAI-compatible server (Ollama, vLLM, LM Studio).

The only module that imports the ``openai`` SDK.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from .base import (
    ChatTurn,
    ProviderError,
    RawCompletion,
    ToolCall,
    ToolSpec,
    error_from_status,
    http_transport,
    sdk_post,
)


class OpenAIProvider:
    """Chat completions through the official SDK; retries are the router's."""

    name = "openai"

    def __init__(
        self, *, api_key: str, base_url: str, model: str, timeout: float
    ) -> None:
        self.model = model
        # SDK retries off: the router retries, so every attempt is recorded.
        self.client = openai.OpenAI(
            # OpenAI-compatible local servers need no key, but the SDK wants one.
            api_key=api_key or "not-needed",
            base_url=base_url or None,
            timeout=timeout,
            max_retries=0,
            # The SDK's own client and defaults; its transport gives the CPU
            # slot back while the request is on the network.
            http_client=openai.DefaultHttpxClient(transport=http_transport()),
        )

    def complete(
        self,
        *,
        system: str,
        messages: list[ChatTurn],
        max_tokens: int,
        temperature: float,
        timeout: float | None = None,
        tools: list[ToolSpec] | None = None,
        tool_choice: str = "auto",
        **extra: Any,
    ) -> RawCompletion:
        payload = [{"role": "system", "content": system}] if system else []
        payload += [
            _turn(m)
            if m.tool_calls or m.tool_call_id
            else {"role": m.role, "content": m.content}
            for m in messages
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": payload,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
            body["tool_choice"] = tool_choice
        try:
            data = sdk_post(self.client, "/chat/completions", body, timeout)
        except openai.APITimeoutError as exc:
            raise ProviderError(f"openai: timeout: {exc}", transient=True) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(
                f"openai: connection failed: {exc}", transient=True
            ) from exc
        except openai.APIStatusError as exc:
            raise error_from_status(
                exc, exc.status_code, exc.response.headers, self.name
            ) from exc
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            calls = choice["message"].get("tool_calls")
            return RawCompletion(
                text=choice["message"].get("content") or "",
                model=data.get("model") or self.model,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                tool_calls=tuple(_call(c) for c in calls) if calls else (),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(
                f"openai: malformed response: {exc!r}", transient=True
            ) from exc


def _turn(m: ChatTurn) -> dict[str, Any]:
    """Return an assistant turn with tool_calls, or a role "tool" result."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    return {
        "role": m.role,
        "content": m.content or None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    # Sent back as the model wrote it, even when not JSON.
                    "arguments": c.arguments
                    if isinstance(c.arguments, str)
                    else json.dumps(c.arguments),
                },
            }
            for c in m.tool_calls
        ],
    }


def _call(raw: dict[str, Any]) -> ToolCall:
    function = raw["function"]
    text = function.get("arguments") or "{}"
    try:
        arguments: Any = json.loads(text)
    except ValueError:
        arguments = text  # models do emit broken JSON; validation reports it
    return ToolCall(id=raw["id"], name=function["name"], arguments=arguments)
