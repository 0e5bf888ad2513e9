"""Reach AI models: provider order, retries with backoff, fallback, usage, cost.

``generate()`` is the one entry point. It tries the providers in order
(``AI_PROVIDER`` then ``AI_FALLBACK``), retrying transient errors (429, 5xx,
timeouts) with exponential backoff and full jitter that honours Retry-After, up
to ``AI_MAX_RETRIES`` per provider; permanent errors (401, 400, context too
long) move straight to the next provider. Every attempt is reported through
``on_attempt`` so the caller can record it in the ledger.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings

from .base import (
    AIUnavailable,
    Attempt,
    ChatTurn,
    Completion,
    Provider,
    ProviderError,
    RawCompletion,
    ToolCall,
    ToolSpec,
)

__all__ = [
    "AIUnavailable",
    "Attempt",
    "ChatTurn",
    "Completion",
    "ProviderError",
    "ToolCall",
    "ToolSpec",
    "generate",
    "get_provider",
    "price",
    "provider_order",
]

logger = logging.getLogger(__name__)

KNOWN = ("openai", "anthropic", "echo")
_cache: dict[tuple, Provider] = {}
_cache_lock = threading.Lock()
_warned_offline = False


def _default_provider() -> str:
    if settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL:
        return "openai"
    if settings.ANTHROPIC_API_KEY:
        return "anthropic"
    return "echo"


def provider_order(preferred: list[str] | None = None) -> list[str]:
    """Return the providers to try, in order, without repeats."""
    first = [settings.AI_PROVIDER or _default_provider()]
    names = list(preferred) if preferred else first + list(settings.AI_FALLBACK)
    order: list[str] = []
    for name in (n.strip().lower() for n in names):
        if name and name not in order:
            if name not in KNOWN:
                raise ValueError(f"unknown AI provider {name!r}; known: {KNOWN}")
            order.append(name)
    return order


def get_provider(name: str, model: str | None = None) -> Provider:
    """Return a cached provider client (SDK clients are thread-safe)."""
    global _warned_offline
    timeout = settings.AI_TIMEOUT_SECONDS
    if name == "openai":
        key = (name, settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL, timeout)
        model = model or settings.OPENAI_MODEL
    elif name == "anthropic":
        key = (name, settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL, timeout)
        model = model or settings.ANTHROPIC_MODEL
    elif name == "echo":
        key, model = (name,), model or "echo"
        if not _warned_offline:
            _warned_offline = True
            logger.warning(
                "AI provider is 'echo' (OFFLINE): replies repeat the user's message. "
                "Set OPENAI_API_KEY / OPENAI_BASE_URL or ANTHROPIC_API_KEY for a model."
            )
    else:
        raise ValueError(f"unknown AI provider {name!r}")
    key = (*key, model)
    with _cache_lock:
        provider = _cache.get(key)
        if provider is None:
            provider = _build(name, model, timeout)
            _cache[key] = provider
        return provider


def _build(name: str, model: str, timeout: float) -> Provider:
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider(
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            model=model,
            timeout=timeout,
        )
    if name == "anthropic":
        from .anthropic import AnthropicProvider

        if not settings.ANTHROPIC_API_KEY:
            raise ProviderError(
                "anthropic: ANTHROPIC_API_KEY is not set", transient=False
            )
        return AnthropicProvider(
            api_key=settings.ANTHROPIC_API_KEY,
            base_url=settings.ANTHROPIC_BASE_URL,
            model=model,
            timeout=timeout,
        )
    from .echo import EchoProvider

    return EchoProvider(model)


def warm_up() -> None:
    """Build the clients of the configured providers (imports their SDKs).

    Called when a worker starts; a misconfigured provider is logged here and
    reported again, with its reason, on the first call that needs it.
    """
    for name in provider_order():
        try:
            get_provider(name)
        except Exception as exc:
            logger.warning("ai_provider_warm_up_failed provider=%s error=%s", name, exc)


def _default_model(name: str) -> str:
    return {
        "openai": settings.OPENAI_MODEL,
        "anthropic": settings.ANTHROPIC_MODEL,
    }.get(name, "echo")


def price(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Return the cost in USD from the per-million-token price table."""
    prices = settings.AI_PRICES.get(model)
    if prices is None:
        # Providers answer with dated model names (gpt-4o-mini-2024-07-18).
        matches = [m for m in settings.AI_PRICES if model.startswith(m)]
        prices = settings.AI_PRICES[max(matches, key=len)] if matches else None
    if prices is None:
        logger.warning("no price for model %s; cost recorded as 0", model)
        return Decimal(0)
    inp, out = (Decimal(str(p)) for p in prices)
    cost = (inp * prompt_tokens + out * completion_tokens) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"))


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Return the wait before retry ``attempt`` (1-based): jittered, capped."""
    cap = settings.AI_RETRY_MAX_BACKOFF_SECONDS
    if retry_after is not None:
        return min(retry_after, cap)
    base = settings.AI_RETRY_BACKOFF_SECONDS * (2 ** (attempt - 1))
    return random.uniform(0, min(cap, base))  # "full jitter"


def generate(
    *,
    system: str,
    messages: list[ChatTurn],
    providers: list[str] | None = None,
    models: dict[str, str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    before_attempt: Callable[[str, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    tools: list[ToolSpec] | None = None,
    tool_choice: str = "auto",
    json_schema: dict[str, Any] | None = None,
) -> Completion:
    """Return a completion from the first provider that answers.

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole call: each
    attempt's timeout is cut to the time left, and no attempt or backoff
    starts after it. Raises AIUnavailable when every provider failed (with
    ``deadline_exceeded`` set when time ran out); ``transient`` on it says
    whether trying again later may help.

    ``before_attempt(provider, model)`` runs before every attempt (retries and
    fallbacks included); whatever it raises (a spend limit) stops the call
    and propagates unchanged. ``on_attempt`` then sees that attempt's outcome.

    ``tools`` are offered through the provider's own tool-calling API; the
    tool calls the model asked for come back on the Completion.
    ``tool_choice`` "none" forbids calling them (tools stay declared, because
    Anthropic refuses tool blocks in the history without them).

    ``json_schema``: the JSON object the answer must be (the prompt says so
    too). Only the offline ``echo`` provider uses it, to answer with a valid
    object; the real providers get it from the prompt alone, as every
    OpenAI-compatible server understands that.
    """
    attempts: list[Attempt] = []
    max_tokens = max_tokens or settings.AI_MAX_TOKENS
    temperature = settings.AI_TEMPERATURE if temperature is None else temperature
    last_error: ProviderError | None = None
    for name in provider_order(providers):
        model = (models or {}).get(name)
        for n in range(1, settings.AI_MAX_RETRIES + 2):
            started = time.monotonic()
            extra: dict[str, Any] = {}
            if tools:
                extra["tools"] = tools
                extra["tool_choice"] = tool_choice
            if json_schema is not None:
                extra["json_schema"] = json_schema
            if deadline is not None:
                left = deadline - started
                if left <= 0:
                    raise AIUnavailable(
                        f"deadline exceeded; last error: {last_error}",
                        attempts=attempts,
                        transient=False,
                        deadline_exceeded=True,
                    )
                extra["timeout"] = min(settings.AI_TIMEOUT_SECONDS, left)
            if before_attempt is not None:
                before_attempt(name, model or _default_model(name))
            try:
                provider = get_provider(name, model)
                raw: RawCompletion = provider.complete(
                    system=system,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    **extra,
                )
            except ProviderError as exc:
                latency = int((time.monotonic() - started) * 1000)
                attempt = Attempt(
                    provider=name,
                    model=model or _default_model(name),
                    attempt=n,
                    ok=False,
                    latency_ms=latency,
                    error=str(exc),
                    transient=exc.transient,
                    http_status=exc.status_code,
                )
                attempts.append(attempt)
                if on_attempt:
                    on_attempt(attempt)
                last_error = exc
                logger.warning(
                    "ai_attempt_failed provider=%s attempt=%s transient=%s status=%s",
                    name,
                    n,
                    exc.transient,
                    exc.status_code,
                )
                if not exc.transient or n > settings.AI_MAX_RETRIES:
                    break
                if (
                    exc.retry_after is not None
                    and exc.retry_after > settings.AI_RETRY_MAX_BACKOFF_SECONDS
                ):
                    break  # told to wait longer than we will: fall back instead
                delay = backoff_delay(n, exc.retry_after)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - time.monotonic()))
                sleep(delay)
                continue
            latency = int((time.monotonic() - started) * 1000)
            cost = price(raw.model, raw.prompt_tokens, raw.completion_tokens)
            attempt = Attempt(
                provider=name,
                model=raw.model,
                attempt=n,
                ok=True,
                latency_ms=latency,
                prompt_tokens=raw.prompt_tokens,
                completion_tokens=raw.completion_tokens,
                cost=cost,
            )
            attempts.append(attempt)
            if on_attempt:
                on_attempt(attempt)
            return Completion(
                text=raw.text,
                provider=name,
                model=raw.model,
                prompt_tokens=raw.prompt_tokens,
                completion_tokens=raw.completion_tokens,
                cost=cost,
                latency_ms=latency,
                attempts=attempts,
                tool_calls=raw.tool_calls,
            )
    raise AIUnavailable(
        f"all AI providers failed; last error: {last_error}",
        attempts=attempts,
        transient=bool(last_error and last_error.transient),
    )
