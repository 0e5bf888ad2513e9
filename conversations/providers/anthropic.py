"""Call Anthropic's messages API. The only module that imports ``anthropic``."""

from __future__ import annotations

from typing import Any

import anthropic

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


class AnthropicProvider:
    """Messages API through the official SDK; retries are the router's."""

    name = "anthropic"

    def __init__(
        self, *, api_key: str, base_url: str, model: str, timeout: float
    ) -> None:
        self.model = model
        self.client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url or None,
            timeout=timeout,
            max_retries=0,
            # The SDK's own client and defaults; its transport gives the CPU
            # slot back while the request is on the network.
            http_client=anthropic.DefaultHttpxClient(transport=http_transport()),
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
        if any(m.tool_calls or m.tool_call_id for m in messages):
            payload = _with_tool_blocks(messages)
        else:
            payload = [{"role": m.role, "content": m.content} for m in messages]
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": payload,
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.parameters,
                }
                for t in tools
            ]
            body["tool_choice"] = {"type": tool_choice}
        # ``temperature`` is left out: anthropic 2.x's messages.create() no
        # longer takes it.
        try:
            data = sdk_post(self.client, "/v1/messages", body, timeout)
        except anthropic.APITimeoutError as exc:
            raise ProviderError(f"anthropic: timeout: {exc}", transient=True) from exc
        except anthropic.APIConnectionError as exc:
            raise ProviderError(
                f"anthropic: connection failed: {exc}", transient=True
            ) from exc
        except anthropic.APIStatusError as exc:
            raise error_from_status(
                exc, exc.status_code, exc.response.headers, self.name
            ) from exc
        try:
            text = "".join(
                block.get("text", "")
                for block in data["content"]
                if block.get("type") == "text"
            )
            calls = tuple(
                ToolCall(id=block["id"], name=block["name"], arguments=block["input"])
                for block in data["content"]
                if block.get("type") == "tool_use"
            )
            usage = data.get("usage") or {}
            return RawCompletion(
                text=text,
                model=data.get("model") or self.model,
                prompt_tokens=int(usage.get("input_tokens") or 0),
                completion_tokens=int(usage.get("output_tokens") or 0),
                tool_calls=calls,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(
                f"anthropic: malformed response: {exc!r}", transient=True
            ) from exc


def _with_tool_blocks(messages: list[ChatTurn]) -> list[dict[str, Any]]:
    """Return messages with tool_use blocks and merged tool_result blocks.

    Anthropic wants every result of one assistant turn's tool_use blocks in
    the single user message that follows it, so consecutive "tool" turns
    become one user message.
    """
    payload: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
            last = payload[-1] if payload else None
            if last and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                payload.append({"role": "user", "content": [block]})
        elif m.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            blocks += [
                {
                    "type": "tool_use",
                    "id": c.id,
                    "name": c.name,
                    # tool_use input must be an object; broken arguments were
                    # already answered with an error result.
                    "input": c.arguments if isinstance(c.arguments, dict) else {},
                }
                for c in m.tool_calls
            ]
            payload.append({"role": m.role, "content": blocks})
        else:
            payload.append({"role": m.role, "content": m.content})
    return payload
