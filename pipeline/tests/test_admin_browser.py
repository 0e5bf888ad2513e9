"""The pipeline Run admin with its step progress, in a real headless chromium."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect

from pipeline.models import Run, StepProgress
from pipeline.services import run_create
from vocoeng.services import tenant_get_default
from vocoeng.testing.browser import changelist_from_index, expect_no_add_row

pytestmark = [pytest.mark.django_db(transaction=True)]


def seed_running_run() -> Run:
    """Create a run through the service, then record progress as workers would."""
    run, _ = run_create(
        tenant=tenant_get_default(),
        idea="Offer refunds over WhatsApp",
        personas=["optimist", "skeptic"],
        idempotency_key="browser-run-1",
    )
    start = run.created_at + timedelta(seconds=1)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, started_at=start)
    steps = {s.name: s for s in run.steps.all()}
    done = {
        "status": StepProgress.Status.SUCCEEDED,
        "attempts": 1,
        "started_at": start,
        "finished_at": start + timedelta(seconds=2),
        "duration_ms": 2000,
        "total_tokens": 321,
    }
    StepProgress.objects.filter(pk=steps["expand"].pk).update(
        **done, output={"title": "Refunds over WhatsApp"}
    )
    StepProgress.objects.filter(pk=steps["review:optimist"].pk).update(
        **done, output={"verdict": "approve", "score": 8}
    )
    StepProgress.objects.filter(pk=steps["review:skeptic"].pk).update(
        status=StepProgress.Status.FAILED,
        attempts=3,
        started_at=start,
        finished_at=start + timedelta(seconds=9),
        error="model answered 500 three times",
    )
    return run


def test_run_list_and_run_with_its_step_progress(admin_browser) -> None:
    run = seed_running_run()

    def steps(page: Page) -> None:
        row = changelist_from_index(page, app="pipeline", model="run")
        expect(row).to_have_count(1)
        expect(row.locator("td.field-status")).to_have_text("Running")
        # expand + one review succeeded, one review failed: 3 of 4 finished.
        expect(row.locator("td.field-progress")).to_have_text("3/4 (75%)")
        admin_browser.screenshot(page, "runs")
        row.locator("th a").click()
        expect(page).to_have_url(re.compile(rf"/admin/pipeline/run/{run.pk}/change/"))
        expect(page.locator(".field-idempotency_key .readonly")).to_have_text(
            "browser-run-1"
        )
        rows = page.locator("#steps-group tbody tr.has_original")
        expect(rows).to_have_count(4)
        names = ["expand", "review:optimist", "review:skeptic", "aggregate"]
        statuses = ["Succeeded", "Succeeded", "Failed", "Pending"]
        attempts = ["1", "1", "3", "0"]
        for i, (name, status, tries) in enumerate(
            zip(names, statuses, attempts, strict=True)
        ):
            expect(rows.nth(i).locator("td.field-name")).to_have_text(name)
            expect(rows.nth(i).locator("td.field-status")).to_have_text(status)
            expect(rows.nth(i).locator("td.field-attempts")).to_have_text(tries)
        expect(rows.nth(0).locator("td.field-duration_ms")).to_have_text("2000")
        expect(rows.nth(1).locator("td.field-output_pretty pre")).to_contain_text(
            '"verdict": "approve"'
        )
        expect(rows.nth(2).locator("td.field-error")).to_have_text(
            "model answered 500 three times"
        )
        # Steps are records of the workers: no add row, no delete box.
        expect_no_add_row(page, inline="steps")
        expect(page.locator("#steps-group td.delete input")).to_have_count(0)
        admin_browser.screenshot(page, "run")

    admin_browser.run(steps)
