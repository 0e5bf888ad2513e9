"""The conversation store interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..providers.base import ChatTurn

if TYPE_CHECKING:
    from ..models import Message


class StoreError(Exception):
    """A store call failed; ``transient`` says whether a retry may pass."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ConversationStore(Protocol):
    """Where the model's view of a conversation's history lives.

    The database always holds the Message rows (ids, statuses, idempotency);
    a store decides where the history sent to the model is read from and
    written to.
    """

    #: Whether history and exchanges travel to another service (a network
    #: round trip). The reply task reads a local store's history while it
    #: holds a CPU slot (vocoeng/cpu_slots.py), a remote one's after.
    remote: bool
    #: The message statuses whose rows make the history, when the claim can
    #: read it in the same statement (the database store); empty otherwise.
    history_statuses: Sequence[str]

    def history(self, *, inbound: Message, limit: int) -> list[ChatTurn]:
        """Return up to ``limit`` turns before ``inbound``, oldest first."""
        ...

    def record_exchange(self, *, inbound: Message, reply: Message) -> None:
        """Record one answered exchange; calling it twice records it once."""
        ...
