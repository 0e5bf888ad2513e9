"""Call OpenAI or any OpenAI-compatible server (Ollama, vLLM, LM Studio).

The only module that imports the ``openai`` SDK.
"""

from __future__ import annotations

from typing import Any

import openai

from .base import ChatTurn, ProviderError, RawCompletion, error_from_status


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
        payload = [{"role": "system", "content": system}] if system else []
        payload += [{"role": m.role, "content": m.content} for m in messages]
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=payload,
                max_tokens=max_tokens,
                temperature=temperature,
            )
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
        if not resp.choices:
            raise ProviderError("openai: response has no choices", transient=True)
        usage = resp.usage
        return RawCompletion(
            text=resp.choices[0].message.content or "",
            model=resp.model or self.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
