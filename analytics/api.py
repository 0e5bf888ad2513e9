"""Analytics API: batch ingest, events and the summary, scoped to a tenant.

An API key sees and writes its own tenant only (another tenant's data is a
404); staff (session) see every tenant and may pick one with ``?tenant_id=``.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from vocoeng.models import Tenant

from .selectors import voc_events_for, voc_summary
from .serializers import (
    EventBatchSerializer,
    IngestResultSerializer,
    SummaryQuerySerializer,
    SummarySerializer,
    VocEventSerializer,
)
from .services import IngestUnavailable, events_ingest

UUID_RE = r"[0-9a-fA-F-]{32,36}"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the event queue is unavailable; retry later"


def _caller_tenant(request: Request) -> Tenant | None:
    """Return the API key's tenant, None for staff; refuse anyone else."""
    tenant = getattr(request.user, "tenant", None)
    if tenant is not None:
        return tenant
    if request.user.is_staff:
        return None
    raise exceptions.PermissionDenied("analytics needs a tenant API key or staff")


def _read_scope(request: Request, slug: str | None) -> Tenant | None:
    """Return the tenant whose data the caller reads (None: all, staff only)."""
    own = _caller_tenant(request)
    if own is not None:
        if slug and slug != own.slug:
            raise exceptions.NotFound("tenant not found")
        return own
    if not slug:
        return None
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise exceptions.NotFound("tenant not found")
    return tenant


TENANT_PARAM = OpenApiParameter(
    "tenant_id", str, description="A tenant's slug (staff only; a key's own)."
)


NO_TENANT = OpenApiResponse(description="tenant_id is unknown or not yours.")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            TENANT_PARAM,
            OpenApiParameter("event_type", str, description="Only this type."),
        ],
        responses={200: VocEventSerializer(many=True), 404: NO_TENANT},
    ),
    retrieve=extend_schema(parameters=[TENANT_PARAM]),
)
class VocEventViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """VOC events of your tenant. POST ``{"events": [...]}`` ingests a batch (202).

    Filter with ``?event_type=``; staff may pass ``?tenant_id=<slug>``.
    """

    serializer_class = VocEventSerializer
    lookup_field = "event_id"
    lookup_value_regex = UUID_RE

    def get_serializer_class(self) -> type[serializers.Serializer]:
        if self.action == "create":
            return EventBatchSerializer
        return VocEventSerializer

    def get_queryset(self) -> QuerySet:
        tenant = _read_scope(self.request, self.request.query_params.get("tenant_id"))
        qs = voc_events_for(tenant=tenant)
        if event_type := self.request.query_params.get("event_type"):
            qs = qs.filter(event_type=event_type)
        return qs

    @extend_schema(
        responses={
            202: IngestResultSerializer,
            503: OpenApiResponse(description="The event queue is unavailable."),
        }
    )
    def create(self, request: Request) -> Response:
        """Validate a batch, enqueue the valid events, report the rejected ones."""
        tenant = _caller_tenant(request)
        body = EventBatchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = events_ingest(
                events=body.validated_data["events"], tenant=tenant, source="api"
            )
        except IngestUnavailable as exc:
            raise ServiceUnavailable() from exc
        return Response(
            {
                "accepted": result.accepted,
                "rejected": result.rejected,
                "errors": result.errors,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class SummaryViewSet(viewsets.ViewSet):
    """Per event type counts and sentiment, a daily series and qos p50/p95.

    ``?days=7`` (1-366); staff may pass ``?tenant_id=<slug>`` (without it: all
    tenants).
    """

    @extend_schema(
        parameters=[SummaryQuerySerializer],
        responses={200: SummarySerializer, 404: NO_TENANT},
    )
    def list(self, request: Request) -> Response:
        query = SummaryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        tenant = _read_scope(request, query.validated_data.get("tenant_id"))
        return Response(voc_summary(tenant=tenant, days=query.validated_data["days"]))
