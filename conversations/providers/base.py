"""Types shared by the AI providers and the router."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import httpx2

from vocoeng.cpu_slots import cpu_slot, cpu_slot_released


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: its name, what it does, its JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for.

    ``arguments`` is the decoded JSON object, or the raw text when the model
    sent arguments that are not JSON (schema validation then rejects them).
    """

    id: str
    name: str
    arguments: Any


@dataclass(frozen=True)
class ChatTurn:
    """One message of the history sent to a model.

    Roles: "user", "assistant" (with ``tool_calls`` when it asked for tools)
    and "tool" (the result of the call ``tool_call_id``; ``is_error`` marks a
    failed call). Plain turns leave the tool fields empty.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    is_error: bool = False


@dataclass(frozen=True)
class RawCompletion:
    """What one provider call returned, before cost is priced."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Attempt:
    """One try at one provider, succeeded or not (recorded in the ledger)."""

    provider: str
    model: str
    attempt: int
    ok: bool
    latency_ms: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    error: str = ""
    transient: bool | None = None
    http_status: int | None = None


@dataclass
class Completion:
    """The reply that was used, with who answered, usage, cost and latency."""

    text: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    latency_ms: int
    attempts: list[Attempt] = field(default_factory=list)
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProviderError(Exception):
    """A provider call failed; ``transient`` errors may pass on the next try."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        self.retry_after = retry_after


class AIUnavailable(Exception):
    """Every provider in the order failed; carries the attempts made."""

    def __init__(
        self,
        message: str,
        *,
        attempts: list[Attempt],
        transient: bool,
        deadline_exceeded: bool = False,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.transient = transient
        self.deadline_exceeded = deadline_exceeded


class Provider(Protocol):
    """A model provider: one call, errors mapped to ProviderError."""

    name: str
    model: str

    def complete(
        self,
        *,
        system: str,
        messages: list[ChatTurn],
        max_tokens: int,
        temperature: float,
        tools: list[ToolSpec] | None = None,
        tool_choice: str = "auto",
        **extra: Any,
    ) -> RawCompletion: ...


# Statuses worth another try: timeouts, conflicts, rate limits, server errors and
# Anthropic's 529 "overloaded". 400/401/403/404/413/422 are permanent.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def parse_retry_after(headers: Any) -> float | None:
    """Return Retry-After (or retry-after-ms) in seconds, when given as a number."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: rare from model APIs; use our backoff
    return None


def error_from_status(
    exc: Exception, status: int | None, headers: Any, provider: str
) -> ProviderError:
    """Map an SDK status error to a ProviderError, transient or permanent."""
    transient = status is None or status in TRANSIENT_STATUSES
    return ProviderError(
        f"{provider}: HTTP {status}: {_short(exc)}",
        transient=transient,
        status_code=status,
        retry_after=parse_retry_after(headers),
    )


def _short(exc: Exception, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


class _SlotReleasingTransport(httpx2.BaseTransport):
    """An SDK's HTTP transport, with the CPU slot given back on the network.

    The request goes out and the whole response comes in (the body read here,
    so no socket read waits inside the slot) while the slot serves others.
    """

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        with cpu_slot_released():
            response = self._inner.handle_request(request)
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response

    def close(self) -> None:
        self._inner.close()


def http_transport() -> httpx2.BaseTransport:
    """The HTTP transport for the SDK clients: the one they build themselves
    (with the openai and anthropic SDKs' connection limits: an ai worker's
    threads each keep a connection alive), giving the CPU slot
    (vocoeng/cpu_slots.py) back while a request is on the network. The SDKs
    build the request and read the response in the caller's slot."""
    return _SlotReleasingTransport(
        httpx2.HTTPTransport(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        )
    )


def sdk_post(
    client: Any, path: str, body: dict[str, Any], timeout: float | None
) -> Any:
    """POST ``body`` with an SDK client's low-level post() and return the JSON.

    The low-level call keeps the SDK's auth, timeouts and error types without
    its typed request transform and response models, which cost ~8 ms of CPU
    per call (measured) and cap a 100-thread ai worker far below 100
    replies/s on the GIL. It runs in a CPU slot (vocoeng/cpu_slots.py):
    building the request and reading the response are most of a reply's CPU,
    and the slot's queue works a burst of replies through in order; the
    transport (:func:`http_transport`) gives the slot back on the network.
    """
    with cpu_slot():
        return client.post(
            path,
            body=body,
            cast_to=object,
            options={"timeout": timeout} if timeout else {},
        )
