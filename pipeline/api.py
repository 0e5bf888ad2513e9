"""Runs API: start a run, list and filter runs, read step progress, cancel."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from vocoeng.services import tenant_get_default

from . import services
from .models import Run
from .selectors import run_list
from .serializers import RunCreateSerializer, RunSerializer


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Run.Status.values),
            OpenApiParameter("idempotency_key", str),
        ]
    )
)
class RunViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Consensus runs of your tenant. POST ``{"idea", "personas"?,
    "idempotency_key"?}`` to start one; filter with ``?status=`` and
    ``?idempotency_key=``; POST ``/cancel/`` to stop one."""

    serializer_class = RunSerializer
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self) -> QuerySet[Run]:
        params = self.request.query_params
        state = params.get("status")
        if state and state not in Run.Status.values:
            raise ValidationError(
                {"status": f"unknown status {state!r}; one of {Run.Status.values}"}
            )
        return run_list(
            user=self.request.user,
            status=state,
            idempotency_key=params.get("idempotency_key"),
        )

    def get_serializer_class(self):
        if self.action == "create":
            return RunCreateSerializer
        return RunSerializer

    @extend_schema(
        request=RunCreateSerializer,
        responses={
            201: RunSerializer,
            200: OpenApiResponse(RunSerializer, description="Known idempotency_key."),
            409: OpenApiResponse(description="idempotency_key of another client."),
            503: OpenApiResponse(
                description="The broker refused the run (nothing kept); retry."
            ),
        },
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        incoming = RunCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        valid = incoming.validated_data
        tenant = getattr(request.user, "tenant", None) or tenant_get_default()
        # The broker refusing the run: 503 (vocoeng.health), nothing kept.
        run, created = services.run_start(
            tenant=tenant,
            idea=valid["idea"],
            personas=valid.get("personas"),
            idempotency_key=valid.get("idempotency_key"),
        )
        if run.tenant_id != tenant.pk:
            # The key is global; never reveal another tenant's run.
            return Response(
                {"error": "idempotency_key is already used by another client"},
                status=status.HTTP_409_CONFLICT,
            )
        run = self.get_queryset().get(pk=run.pk)
        body = RunSerializer(run, context=self.get_serializer_context()).data
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(body, status=code)

    @extend_schema(
        request=None,
        responses={
            200: RunSerializer,
            409: OpenApiResponse(description="The run has already finished."),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel the run if it is still queued or running."""
        run = self.get_object()
        if not services.run_cancel(run=run) and run.status != Run.Status.CANCELLED:
            return Response(
                {"error": f"run is already {run.status}", "status": run.status},
                status=status.HTTP_409_CONFLICT,
            )
        run = self.get_queryset().get(pk=run.pk)
        return Response(RunSerializer(run, context=self.get_serializer_context()).data)
