"""Conversation history behind one interface: the database or Firestore."""

from __future__ import annotations

import threading

from django.conf import settings

from .base import ConversationStore, StoreError

__all__ = ["ConversationStore", "StoreError", "get_store"]

_lock = threading.Lock()
_stores: dict[str, ConversationStore] = {}


def get_store(name: str | None = None) -> ConversationStore:
    """Return the store named by CONVERSATION_STORE (``db`` or ``firestore``)."""
    name = name or settings.CONVERSATION_STORE
    with _lock:
        store = _stores.get(name)
        if store is None:
            if name == "db":
                from .db import DatabaseStore

                store = DatabaseStore()
            elif name == "firestore":
                from .firestore import FirestoreStore

                store = FirestoreStore()
            else:
                raise ValueError(
                    f"unknown CONVERSATION_STORE {name!r}; use 'db' or 'firestore'"
                )
            _stores[name] = store
        return store
