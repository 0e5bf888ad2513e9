"""Keep conversation history in the database (the default store)."""

from __future__ import annotations

from ..models import Message
from ..providers.base import ChatTurn
from ..queries import history_rows

# Only exchanges that happened: failed, ignored or rate-limited messages never
# reached the model and would confuse it.
_HISTORY_STATUSES = (
    Message.Status.REPLIED,
    Message.Status.PENDING,
    Message.Status.SENDING,
    Message.Status.SENT,
    Message.Status.DELIVERED,
    Message.Status.READ,
    Message.Status.LOGGED,
)


class DatabaseStore:
    """Read history from the Message table; the rows are the record."""

    remote = False
    # The reply task's claim reads the history with these (PostgreSQL: one
    # statement, conversations.queries.message_claim_read).
    history_statuses = _HISTORY_STATUSES

    def history(self, *, inbound: Message, limit: int) -> list[ChatTurn]:
        if limit <= 0:
            return []
        prefetched = getattr(inbound, "history_prefetched", None)
        if prefetched is not None and prefetched[0] == limit:
            return [
                ChatTurn(role=role, content=content) for role, content in prefetched[1]
            ]
        # One statement compiled once (conversations/queries.py): what
        # Message.objects.filter(conversation=…, created_at__lt=…,
        # status__in=…).order_by("-created_at").values_list("role",
        # "content")[:limit] reads, oldest first.
        rows = history_rows(
            conversation_id=inbound.conversation_id,
            before=inbound.created_at,
            statuses=_HISTORY_STATUSES,
            limit=limit,
        )
        return [ChatTurn(role=role, content=content) for role, content in rows]

    def record_exchange(self, *, inbound: Message, reply: Message) -> None:
        """Do nothing: the Message rows written by the reply service are the record."""
