"""Deliver replies through the channel they came from, via an adapter registry.

No app imports ``webhooks``: it registers the WhatsApp and AiSensy adapters
here from its AppConfig.ready(). Channels without an adapter (``api``) are
delivered by being stored and published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .models import Message


@dataclass(frozen=True)
class DeliveryResult:
    """What a delivery attempt achieved: a final status and the channel's id."""

    status: str  # a Message.Status value: sent, logged, delivered or failed
    external_id: str = ""
    error: str = ""


class DeliveryError(Exception):
    """A delivery failed; ``transient`` errors are retried by the task."""

    def __init__(
        self, message: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class DeliveryAdapter(Protocol):
    def deliver(self, reply: Message) -> DeliveryResult: ...


class StoredDelivery:
    """Deliver by storing and publishing: how ``api`` clients get replies."""

    def deliver(self, reply: Message) -> DeliveryResult:
        return DeliveryResult(status="delivered")


_adapters: dict[str, DeliveryAdapter] = {}


def register_adapter(channel: str, adapter: DeliveryAdapter) -> None:
    """Make ``adapter`` deliver replies of ``channel`` (called at start-up)."""
    _adapters[channel] = adapter


def adapter_for(channel: str) -> DeliveryAdapter:
    """Return the channel's adapter, or the stored-and-published one."""
    return _adapters.get(channel, StoredDelivery())
