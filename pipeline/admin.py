"""Admin: runs with status filter, progress, steps inline and a resume action."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import services
from .models import Run, StepProgress
from .selectors import run_progress


def _pretty(value: object) -> str:
    return format_html(
        "<pre style='white-space:pre-wrap'>{}</pre>",
        json.dumps(value, indent=2, ensure_ascii=False) if value is not None else "—",
    )


class StepInline(admin.TabularInline):
    model = StepProgress
    extra = 0
    can_delete = False
    fields = [
        "position",
        "name",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "duration_ms",
        "total_tokens",
        "cost",
        "error",
        "output_pretty",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="output")
    def output_pretty(self, step: StepProgress) -> str:
        return _pretty(step.output)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "tenant",
        "status",
        "progress",
        "attempts",
        "total_tokens",
        "cost",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "tenant", "kind"]
    search_fields = ["id", "idempotency_key"]
    date_hierarchy = "created_at"
    inlines = [StepInline]
    actions = ["rerun_from_failed_steps"]
    readonly_fields = [
        "id",
        "tenant",
        "kind",
        "status",
        "idempotency_key",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "error",
        "input_pretty",
        "result_pretty",
        "error_context_pretty",
    ]
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return super().get_queryset(request).prefetch_related("steps")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="progress")
    def progress(self, run: Run) -> str:
        p = run_progress(run=run)
        return f"{p['finished']}/{p['total']} ({p['percent']}%)"

    @admin.display(description="input")
    def input_pretty(self, run: Run) -> str:
        return _pretty(run.input)

    @admin.display(description="result")
    def result_pretty(self, run: Run) -> str:
        return _pretty(run.result)

    @admin.display(description="error context")
    def error_context_pretty(self, run: Run) -> str:
        return _pretty(run.error_context)

    @admin.action(description="Re-run from failed steps")
    def rerun_from_failed_steps(self, request: HttpRequest, queryset: QuerySet) -> None:
        resumed = [r for r in queryset if services.run_resume(run_id=r.pk)]
        self.message_user(
            request,
            f"{len(resumed)} run(s) re-queued from their unfinished steps.",
            messages.SUCCESS,
        )
