"""Validate run requests and shape runs with their step progress."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from rest_framework import serializers

from vocoeng.api import StrictCharField

from .models import Run, StepProgress
from .selectors import run_progress

PERSONA_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class RunCreateSerializer(serializers.Serializer):
    """The pipeline job: ``{"idea", "personas"?, "idempotency_key"?}``."""

    idea = StrictCharField()
    personas = serializers.ListField(
        child=StrictCharField(max_length=63), required=False, allow_empty=False
    )
    idempotency_key = StrictCharField(max_length=255, required=False)

    def validate_idea(self, value: str) -> str:
        if len(value) > settings.PIPELINE_MAX_IDEA_CHARS:
            raise serializers.ValidationError(
                f"idea is longer than {settings.PIPELINE_MAX_IDEA_CHARS} characters"
            )
        return value

    def validate_personas(self, value: list[str]) -> list[str]:
        personas = [p.strip().lower() for p in value]
        bad = [p for p in personas if not PERSONA_RE.match(p)]
        if bad:
            raise serializers.ValidationError(
                f"invalid persona name(s) {bad}: use a-z, 0-9, '-' and '_'"
            )
        if len(set(personas)) != len(personas):
            raise serializers.ValidationError("personas must be unique")
        if len(personas) > settings.PIPELINE_MAX_PERSONAS:
            raise serializers.ValidationError(
                f"at most {settings.PIPELINE_MAX_PERSONAS} personas"
            )
        return personas


class StepSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepProgress
        fields = [
            "name",
            "position",
            "status",
            "attempts",
            "started_at",
            "finished_at",
            "duration_ms",
            "error",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
            "output",
        ]


class RunSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    progress = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()
    steps = StepSerializer(many=True, read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "url",
            "tenant",
            "kind",
            "status",
            "progress",
            "input",
            "idempotency_key",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "result",
            "error",
            "error_context",
            "usage",
            "cost",
            "steps",
        ]
        extra_kwargs = {"url": {"view_name": "run-detail"}}

    def get_progress(self, run: Run) -> dict[str, Any]:
        return run_progress(run=run)

    def get_usage(self, run: Run) -> dict[str, int]:
        return {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "total_tokens": run.total_tokens,
        }
