"""Inbound HTTP: WhatsApp, AiSensy, the API source and Pub/Sub push."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "webhooks"

urlpatterns = [
    path("whatsapp/", views.whatsapp, name="whatsapp"),
    path("aisensy/", views.aisensy, name="aisensy"),
    path("api/", views.api_source, name="api"),
    path("pubsub/", views.pubsub_push, name="pubsub"),
]
