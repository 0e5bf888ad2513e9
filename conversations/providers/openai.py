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
        timeout: float | None = None,
        **extra: Any,
    ) -> RawCompletion:
        payload = [{"role": "system", "content": system}] if system else []
        payload += [{"role": m.role, "content": m.content} for m in messages]
        body = {
            "model": self.model,
            "messages": payload,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        try:
            # The SDK's low-level post(): its auth, timeouts and error types, but
            # not its typed request transform and response models, which cost
            # ~8 ms of CPU per call (measured) and cap a 100-thread ai worker
            # far below 100 replies/s on the GIL.
            data = self.client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                options={"timeout": timeout} if timeout else {},
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
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return RawCompletion(
                text=choice["message"].get("content") or "",
                model=data.get("model") or self.model,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProviderError(
                f"openai: malformed response: {exc!r}", transient=True
            ) from exc
