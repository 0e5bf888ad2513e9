"""Call Anthropic's messages API. The only module that imports ``anthropic``."""

from __future__ import annotations

from typing import Any

import anthropic

from .base import ChatTurn, ProviderError, RawCompletion, error_from_status


class AnthropicProvider:
    """Messages API through the official SDK; retries are the router's."""

    name = "anthropic"

    def __init__(
        self, *, api_key: str, base_url: str, model: str, timeout: float
    ) -> None:
        self.model = model
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=0
        )

    def complete(
        self,
        *,
        system: str,
        messages: list[ChatTurn],
        max_tokens: int,
        temperature: float,
        timeout: float | None = None,
        **extra: Any,
    ) -> RawCompletion:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
        }
        if system:
            body["system"] = system
        # ``temperature`` is left out: anthropic 2.x's messages.create() no
        # longer takes it. The low-level post() keeps the SDK's auth, timeouts
        # and errors without its typed transform (see the OpenAI provider).
        try:
            data = self.client.post(
                "/v1/messages",
                body=body,
                cast_to=object,
                options={"timeout": timeout} if timeout else {},
            )
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
            usage = data.get("usage") or {}
            return RawCompletion(
                text=text,
                model=data.get("model") or self.model,
                prompt_tokens=int(usage.get("input_tokens") or 0),
                completion_tokens=int(usage.get("output_tokens") or 0),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(
                f"anthropic: malformed response: {exc!r}", transient=True
            ) from exc
