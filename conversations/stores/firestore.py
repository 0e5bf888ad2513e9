"""Keep conversation history in Firestore, in the earlier worker's schema.

``{FIRESTORE_COLLECTION}/{user_id}``: last_activity, message_count,
last_message, last_response; its ``messages/{message_id}`` subcollection holds
one document per answered exchange: source, user_id, message, response,
timestamp, model, usage, processing_time_ms, metadata. The only module that
imports google-cloud-firestore. It uses no cursors, offsets, collection groups
or DELETE_FIELD (the local emulator ignores them).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..models import Message
from ..providers.base import ChatTurn
from .base import StoreError


class FirestoreStore:
    """Read and write history in Firestore with the official client."""

    remote = True
    history_statuses = ()  # the history is Firestore's, read after the claim

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                if settings.FIRESTORE_EMULATOR_HOST:
                    # The client reads the emulator address from the environment.
                    os.environ["FIRESTORE_EMULATOR_HOST"] = (
                        settings.FIRESTORE_EMULATOR_HOST
                    )
                self._client = firestore.Client(project=settings.FIRESTORE_PROJECT_ID)
            return self._client

    def _conversation(self, user_id: str) -> Any:
        return self.client.collection(settings.FIRESTORE_COLLECTION).document(user_id)

    def history(self, *, inbound: Message, limit: int) -> list[ChatTurn]:
        if limit <= 0:
            return []
        user_id = inbound.conversation.external_user_id
        query = (
            self._conversation(user_id)
            .collection("messages")
            .where(filter=FieldFilter("timestamp", "<", inbound.created_at))
            .order_by("timestamp", direction=firestore.Query.DESCENDING)
            .limit((limit + 1) // 2)
        )
        try:
            docs = [d.to_dict() for d in query.stream(timeout=10)]
        except gexc.GoogleAPICallError as exc:
            raise StoreError(f"firestore history: {exc}", transient=True) from exc
        turns: list[ChatTurn] = []
        for doc in reversed(docs):
            if doc.get("message"):
                turns.append(ChatTurn(role="user", content=doc["message"]))
            if doc.get("response"):
                turns.append(ChatTurn(role="assistant", content=doc["response"]))
        return turns[-limit:]

    def record_exchange(self, *, inbound: Message, reply: Message) -> None:
        user_id = inbound.conversation.external_user_id
        conv_ref = self._conversation(user_id)
        doc = {
            "source": inbound.channel,
            "user_id": user_id,
            "message": inbound.content,
            "response": reply.content,
            "timestamp": inbound.created_at,
            "model": reply.model,
            "provider": reply.provider,
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.total_tokens,
            },
            "processing_time_ms": reply.processing_time_ms,
            "metadata": {
                **inbound.metadata,
                "external_message_id": inbound.external_id,
            },
        }
        # create() fails if the exchange is already there, and the batch is
        # atomic: a redelivered task never counts the exchange twice.
        batch = self.client.batch()
        batch.create(conv_ref.collection("messages").document(str(inbound.id)), doc)
        batch.set(
            conv_ref,
            {
                "user_id": user_id,
                "last_activity": firestore.SERVER_TIMESTAMP,
                "message_count": firestore.Increment(2),
                "last_message": inbound.content,
                "last_response": reply.content,
            },
            merge=True,
        )
        try:
            batch.commit(timeout=10)
        except gexc.AlreadyExists:
            return
        except gexc.GoogleAPICallError as exc:
            raise StoreError(f"firestore write: {exc}", transient=True) from exc
