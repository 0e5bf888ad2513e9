"""Inbound HTTP: WhatsApp, AiSensy, the API source and Pub/Sub push."""

from __future__ import annotations

urlpatterns: list = []
