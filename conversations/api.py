"""Read-only API over conversations and messages, scoped to the caller's tenant."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import viewsets

from .models import Conversation, Message
from .serializers import ConversationSerializer, MessageSerializer


def _tenant_filter(request, qs: QuerySet, field: str) -> QuerySet:
    tenant = getattr(request.user, "tenant", None)
    if tenant is not None:
        return qs.filter(**{field: tenant})
    if request.user.is_staff:
        return qs
    return qs.none()


@extend_schema_view(
    list=extend_schema(
        parameters=[OpenApiParameter("user_id", str, description="The user's id.")]
    )
)
class ConversationViewSet(viewsets.ReadOnlyModelViewSet):
    """Conversations of your tenant, newest activity first."""

    serializer_class = ConversationSerializer

    def get_queryset(self) -> QuerySet:
        qs = Conversation.objects.select_related("tenant").order_by("-last_activity")
        if user_id := self.request.query_params.get("user_id"):
            qs = qs.filter(external_user_id=user_id)
        return _tenant_filter(self.request, qs, "tenant")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("conversation", int, description="A conversation id.")
        ]
    )
)
class MessageViewSet(viewsets.ReadOnlyModelViewSet):
    """Messages of your tenant; filter with ?conversation=<id>."""

    serializer_class = MessageSerializer

    def get_queryset(self) -> QuerySet:
        qs = Message.objects.order_by("-created_at")
        if conv := self.request.query_params.get("conversation"):
            if not conv.isdigit():
                return qs.none()
            qs = qs.filter(conversation_id=int(conv))
        return _tenant_filter(self.request, qs, "conversation__tenant")
