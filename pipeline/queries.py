"""The statements every step runs, written as SQL instead of ORM queries.

A step runs a handful of one-row statements. Through the ORM, compiling each
cost more CPU than running it (measured on PostgreSQL: a step with its run and
tenant via select_related ~1.5 ms, a filtered update ~0.4 ms; the same
statements here ~0.1 ms), and an ``ai`` worker is one process whose threads
share one GIL, so that CPU capped the runs per second. The SQL is portable
(PostgreSQL; SQLite >= 3.35 for RETURNING); values go through the model
fields' own adapters, so they are stored exactly as the ORM stores them, and
rows come back as model instances (``Model.from_db``, the other fields
deferred).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from vocoeng import sql
from vocoeng.models import Tenant

from .models import Run, StepProgress

RUN = Run._meta.db_table
STEP = StepProgress._meta.db_table
TENANT = Tenant._meta.db_table


def _instance(model: type[Model], values: dict[str, Any]) -> Any:
    """Return a ``model`` instance of these field values, the others deferred."""
    # from_db takes the values in the model's field order.
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, names, [values[n] for n in names])


def _json(value: Any) -> Any:
    # Django's backends hand JSON columns back as text (JSONField decodes it).
    return json.loads(value) if isinstance(value, str) else value


def step_context(
    run_id: Any, names: Sequence[str] | None
) -> tuple[Run | None, bool, dict[str, StepProgress]]:
    """Read a run, whether its tenant has spend limits, and some of its steps.

    One statement: the run joined to its tenant and to the steps ``names``
    (all of them when None). Returns (None, False, {}) for an unknown run.
    """
    pk = sql.db_value(Run, "id", run_id)
    only = ""
    params: list[Any] = []
    if names is not None:
        only = f' AND s."name" IN ({", ".join(["%s"] * len(names))})'
        params = list(names)
    rows = sql.rows(
        f'SELECT r."status", r."attempts", r."input", r."tenant_id",'  # noqa: S608 - our names
        f' t."monthly_budget" IS NOT NULL OR t."daily_token_cap" IS NOT NULL,'
        f' s."id", s."name", s."position", s."status", s."attempts", s."output",'
        ' s."error"'
        f' FROM "{RUN}" r JOIN "{TENANT}" t ON t."id" = r."tenant_id"'
        f' LEFT JOIN "{STEP}" s ON s."run_id" = r."id"{only}'
        f' WHERE r."id" = %s',
        [*params, pk],
    )
    if not rows:
        return None, False, {}
    run_status, attempts, data, tenant_id, limited = rows[0][:5]
    run = _instance(
        Run,
        {
            "id": Run._meta.pk.to_python(run_id),
            "status": run_status,
            "attempts": attempts,
            "input": _json(data),
            "tenant_id": tenant_id,
        },
    )
    steps = {}
    for row in rows:
        if row[5] is None:
            continue  # the run has none of those steps
        step_id, name, position, status, step_attempts, output, error = row[5:]
        step = _instance(
            StepProgress,
            {
                "id": step_id,
                "run_id": run.pk,
                "name": name,
                "position": position,
                "status": status,
                "attempts": step_attempts,
                "output": _json(output),
                "error": error,
            },
        )
        step.run = run  # the run read above, not another query
        steps[name] = step
    return run, bool(limited), steps


def step_claim(step_id: int, *, now: datetime, stale: datetime) -> int | None:
    """Claim a pending step, or a running one claimed before ``stale``.

    Returns the claim's attempt number, None when the step was not claimable.
    """
    rows = sql.rows(
        f'UPDATE "{STEP}" SET "status" = %s, "started_at" = %s,'  # noqa: S608 - our names
        f' "finished_at" = NULL, "attempts" = "attempts" + 1'
        f' WHERE "id" = %s AND ("status" = %s OR ("status" = %s AND "started_at" < %s))'
        f' RETURNING "attempts"',
        [
            StepProgress.Status.RUNNING,
            sql.db_value(StepProgress, "started_at", now),
            step_id,
            StepProgress.Status.PENDING,
            StepProgress.Status.RUNNING,
            sql.db_value(StepProgress, "started_at", stale),
        ],
    )
    return rows[0][0] if rows else None


def step_write(
    step_id: int, attempt: int, *, status: str, finished: datetime, **fields: Any
) -> bool:
    """Write a step's outcome if claim ``attempt`` still holds it."""
    values = {"status": status, "finished_at": finished, **fields}
    columns = ", ".join(
        f'"{StepProgress._meta.get_field(name).column}" = %s' for name in values
    )
    return bool(
        sql.rowcount(
            f'UPDATE "{STEP}" SET {columns}'  # noqa: S608 - our names
            f' WHERE "id" = %s AND "status" = %s AND "attempts" = %s',
            [
                *(
                    sql.db_value(StepProgress, name, value)
                    for name, value in values.items()
                ),
                step_id,
                StepProgress.Status.RUNNING,
                attempt,
            ],
        )
    )


def step_add_usage(step_id: int, prompt: int, completion: int, cost: Decimal) -> None:
    """Add one model attempt's tokens and cost to the step."""
    sql.rowcount(
        f'UPDATE "{STEP}" SET "prompt_tokens" = "prompt_tokens" + %s,'  # noqa: S608 - our names
        f' "completion_tokens" = "completion_tokens" + %s,'
        f' "total_tokens" = "total_tokens" + %s, "cost" = "cost" + %s'
        f' WHERE "id" = %s',
        [
            prompt,
            completion,
            prompt + completion,
            sql.db_value(StepProgress, "cost", cost),
            step_id,
        ],
    )


def run_mark_running(run_id: Any, *, now: datetime) -> bool:
    """Move a queued run to running (started now unless it started before)."""
    return bool(
        sql.rowcount(
            f'UPDATE "{RUN}" SET "status" = %s,'  # noqa: S608 - our names
            f' "started_at" = COALESCE("started_at", %s)'
            f' WHERE "id" = %s AND "status" = %s',
            [
                Run.Status.RUNNING,
                sql.db_value(Run, "started_at", now),
                sql.db_value(Run, "id", run_id),
                Run.Status.QUEUED,
            ],
        )
    )


def run_close(
    run_id: Any,
    *,
    status: str,
    result: Any,
    error: str,
    context: dict[str, Any],
    finished: datetime,
) -> bool:
    """Give an active run its final status and its steps' usage totals, once.

    Returns whether the run was still active (whether this call closed it).
    """
    pk = sql.db_value(Run, "id", run_id)
    sums = {
        column: f'(SELECT COALESCE(SUM({expression}), 0) FROM "{STEP}"'  # noqa: S608
        ' WHERE "run_id" = %s)'
        for column, expression in (
            ("prompt_tokens", '"prompt_tokens"'),
            ("completion_tokens", '"completion_tokens"'),
            ("total_tokens", '"prompt_tokens" + "completion_tokens"'),
            ("cost", '"cost"'),
        )
    }
    totals = ", ".join(f'"{column}" = {sql}' for column, sql in sums.items())
    return bool(
        sql.rowcount(
            f'UPDATE "{RUN}" SET "status" = %s, "result" = %s, "error" = %s,'  # noqa: S608 - our names
            f' "error_context" = %s, "finished_at" = %s, {totals}'
            f' WHERE "id" = %s AND "status" IN (%s, %s)',
            [
                status,
                sql.db_value(Run, "result", result),
                error,
                sql.db_value(Run, "error_context", context),
                sql.db_value(Run, "finished_at", finished),
                *[pk] * len(sums),
                pk,
                *Run.ACTIVE,
            ],
        )
    )


def run_steps_close(
    run_id: Any, *, from_status: str, to_status: str, error: str, finished: datetime
) -> int:
    """Move the run's steps in ``from_status`` to ``to_status`` with ``error``."""
    return sql.rowcount(
        f'UPDATE "{STEP}" SET "status" = %s, "finished_at" = %s, "error" = %s'  # noqa: S608 - our names
        f' WHERE "run_id" = %s AND "status" = %s',
        [
            to_status,
            sql.db_value(StepProgress, "finished_at", finished),
            error,
            sql.db_value(Run, "id", run_id),
            from_status,
        ],
    )
