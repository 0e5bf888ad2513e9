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
        **extra: Any,
    ) -> RawCompletion:
        # anthropic 2.x's messages.create() no longer takes ``temperature``;
        # the model's default sampling is used.
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        try:
            resp = self.client.messages.create(
                model=self.model,
                max_tokens=max_tokens,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                **kwargs,
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
        text = "".join(
            block.text for block in resp.content if getattr(block, "type", "") == "text"
        )
        return RawCompletion(
            text=text,
            model=resp.model or self.model,
            prompt_tokens=resp.usage.input_tokens,
            completion_tokens=resp.usage.output_tokens,
        )
