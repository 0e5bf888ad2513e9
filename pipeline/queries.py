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

On PostgreSQL, statements that follow each other are folded into one with
data-modifying WITH clauses: a step's read and its claim (and its run's
start), a model attempt's ledger row and the step's usage, the aggregate's
write and the run's end. Each fold saves a round trip, a commit (a WAL flush)
and a GIL hand-over; SQLite runs them one by one (15 of these statements per
run of three reviews on PostgreSQL, 24 on SQLite).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from conversations.models import AICall
from conversations.providers import Attempt
from conversations.services import ai_call_build, ai_call_record
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


@dataclass(frozen=True)
class Claim:
    """Claim step ``name`` in the same statement as the read (PostgreSQL).

    The step is claimed as step_claim claims it, and only when its run is
    active and what it needs is there: the step ``succeeded`` (the brief) has
    succeeded, no step named ``unfinished_prefix``... (the reviews) is
    unfinished. The caller checks the same conditions on the rows it reads.
    """

    name: str
    now: datetime
    stale: datetime
    succeeded: str | None = None
    unfinished_prefix: str | None = None


# The run's row first, then its steps' rows: the order run_finish (cancel,
# reaper) and run_resume lock them in, so a folded statement that writes both
# cannot deadlock with them (a claim writes the run only while it is queued:
# it locks the run then, and reads a running one without a lock, so the
# reviews of a run do not queue behind each other on its row).
_LOCK = f'"locked" AS (SELECT 1 FROM "{RUN}" WHERE "id" = %s'  # noqa: S608 - our names
_LOCK_RUN = f"{_LOCK} FOR NO KEY UPDATE),"
_LOCK_QUEUED_RUN = f'{_LOCK} AND "status" = %s FOR NO KEY UPDATE),'


def _claim_cte(claim: Claim, pk: Any) -> tuple[str, list[Any]]:
    """Return the WITH clause that claims ``claim.name`` and starts its run."""
    needs, params = "", []
    if claim.succeeded is not None:
        needs = (
            f' AND EXISTS (SELECT 1 FROM "{STEP}" d WHERE d."run_id" = %s'  # noqa: S608 - our names
            ' AND d."name" = %s AND d."status" = %s)'
        )
        params = [pk, claim.succeeded, StepProgress.Status.SUCCEEDED]
    if claim.unfinished_prefix is not None:
        needs += (
            f' AND NOT EXISTS (SELECT 1 FROM "{STEP}" d WHERE d."run_id" = %s'  # noqa: S608 - our names
            ' AND d."name" LIKE %s AND d."status" NOT IN (%s, %s, %s))'
        )
        params += [pk, f"{claim.unfinished_prefix}%", *StepProgress.FINISHED]
    now = sql.db_value(StepProgress, "started_at", claim.now)
    return (
        f"WITH {_LOCK_QUEUED_RUN}"  # noqa: S608 - our names
        f' "claim" AS (UPDATE "{STEP}" SET "status" = %s, "started_at" = %s,'
        ' "finished_at" = NULL, "attempts" = "attempts" + 1'
        ' WHERE "run_id" = %s AND "name" = %s'
        ' AND ("status" = %s OR ("status" = %s AND "started_at" < %s))'
        ' AND (EXISTS (SELECT 1 FROM "locked")'
        f' OR EXISTS (SELECT 1 FROM "{RUN}" a WHERE a."id" = %s AND a."status" = %s))'
        f'{needs} RETURNING "attempts"),'
        f' "started" AS (UPDATE "{RUN}" SET "status" = %s,'
        ' "started_at" = COALESCE("started_at", %s)'
        ' WHERE "id" = %s AND "status" = %s AND EXISTS (SELECT 1 FROM "claim")'
        " RETURNING 1) ",
        [
            pk,
            Run.Status.QUEUED,
            StepProgress.Status.RUNNING,
            now,
            pk,
            claim.name,
            StepProgress.Status.PENDING,
            StepProgress.Status.RUNNING,
            sql.db_value(StepProgress, "started_at", claim.stale),
            pk,
            Run.Status.RUNNING,
            *params,
            Run.Status.RUNNING,
            sql.db_value(Run, "started_at", claim.now),
            pk,
            Run.Status.QUEUED,
        ],
    )


def step_context(
    run_id: Any, names: Sequence[str] | None, *, claim: Claim | None = None
) -> tuple[Run | None, bool, dict[str, StepProgress], tuple[int, bool] | None]:
    """Read a run, whether its tenant has spend limits, and some of its steps.

    One statement: the run joined to its tenant and to the steps ``names``
    (all of them when None). Returns (None, False, {}, None) for an unknown
    run. On PostgreSQL, ``claim`` is tried in that statement too (one round
    trip and one commit fewer per step): the last item is then the claim's
    attempt number and whether it moved the run from queued to running, or
    None when the step was not claimed (or ``claim`` was not tried). The rows
    read are those from before the claim.
    """
    pk = sql.db_value(Run, "id", run_id)
    only = ""
    params: list[Any] = []
    if names is not None:
        only = f' AND s."name" IN ({", ".join(["%s"] * len(names))})'
        params = list(names)
    head, claimed = "", ""
    if claim is not None and connection.vendor == "postgresql":
        head, head_params = _claim_cte(claim, pk)
        params = [*head_params, *params]
        claimed = ', (SELECT "attempts" FROM "claim"), EXISTS (SELECT 1 FROM "started")'
    rows = sql.rows(
        f'{head}SELECT r."status", r."attempts", r."input", r."tenant_id",'  # noqa: S608 - our names
        f' t."monthly_budget" IS NOT NULL OR t."daily_token_cap" IS NOT NULL,'
        f' s."id", s."name", s."position", s."status", s."attempts", s."output",'
        f' s."error"{claimed}'
        f' FROM "{RUN}" r JOIN "{TENANT}" t ON t."id" = r."tenant_id"'
        f' LEFT JOIN "{STEP}" s ON s."run_id" = r."id"{only}'
        f' WHERE r."id" = %s',
        [*params, pk],
    )
    if not rows:
        return None, False, {}, None
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
        step_id, name, position, status, step_attempts, output, error = row[5:12]
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
    attempt = rows[0][12] if claimed else None
    return run, bool(limited), steps, (attempt, rows[0][13]) if attempt else None


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


def _step_write(
    step_id: int, attempt: int, *, status: str, finished: datetime, **fields: Any
) -> tuple[str, list[Any]]:
    values = {"status": status, "finished_at": finished, **fields}
    columns = ", ".join(
        f'"{StepProgress._meta.get_field(name).column}" = %s' for name in values
    )
    return (
        f'UPDATE "{STEP}" SET {columns}'  # noqa: S608 - our names
        ' WHERE "id" = %s AND "status" = %s AND "attempts" = %s',
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


def step_write(
    step_id: int, attempt: int, *, status: str, finished: datetime, **fields: Any
) -> bool:
    """Write a step's outcome if claim ``attempt`` still holds it."""
    return bool(
        sql.rowcount(
            *_step_write(step_id, attempt, status=status, finished=finished, **fields)
        )
    )


def step_write_run_close(
    step_id: int, attempt: int, *, step: dict[str, Any], run: dict[str, Any]
) -> tuple[bool, bool]:
    """Write a step's outcome and, if written, close its run: one statement.

    For PostgreSQL (data-modifying WITH): step_write, then run_close and the
    run's pending steps skipped as run_finish does, with one commit instead
    of a transaction of three statements. Returns (step written, run closed).
    """
    step_sql, step_params = _step_write(step_id, attempt, **step)
    run_sql, run_params = _run_close(**run)
    rest_sql, rest_params = _run_steps_close(
        run["run_id"],
        from_status=StepProgress.Status.PENDING,
        to_status=StepProgress.Status.SKIPPED,
        error=f"run {run['status']}",
        finished=run["finished"],
    )
    ((written, closed),) = sql.rows(
        f"WITH {_LOCK_RUN}"  # noqa: S608 - our names
        f' "step" AS ({step_sql} AND EXISTS (SELECT 1 FROM "locked")'
        " RETURNING 1),"
        f' "run" AS ({run_sql} AND EXISTS (SELECT 1 FROM "step") RETURNING 1),'
        f' "rest" AS ({rest_sql} AND EXISTS (SELECT 1 FROM "run"))'
        ' SELECT EXISTS (SELECT 1 FROM "step"), EXISTS (SELECT 1 FROM "run")',
        [
            sql.db_value(Run, "id", run["run_id"]),
            *step_params,
            *run_params,
            *rest_params,
        ],
    )
    return bool(written), bool(closed)


_USAGE = (
    f'UPDATE "{STEP}" SET "prompt_tokens" = "prompt_tokens" + %s,'  # noqa: S608 - our names
    ' "completion_tokens" = "completion_tokens" + %s,'
    ' "total_tokens" = "total_tokens" + %s, "cost" = "cost" + %s'
    ' WHERE "id" = %s'
)


def _usage_params(step_id: int, attempt: Attempt) -> list[Any]:
    prompt, completion = attempt.prompt_tokens, attempt.completion_tokens
    cost = sql.db_value(StepProgress, "cost", Decimal(attempt.cost))
    return [prompt, completion, prompt + completion, cost, step_id]


def _has_usage(attempt: Attempt) -> bool:
    return bool(attempt.prompt_tokens or attempt.completion_tokens or attempt.cost)


def step_add_usage(step_id: int, attempt: Attempt) -> None:
    """Add one model attempt's tokens and cost to the step."""
    if _has_usage(attempt):
        sql.rowcount(_USAGE, _usage_params(step_id, attempt))


def step_attempt_record(
    step_id: int, *, attempt: Attempt, ref: str, tenant_id: int | None
) -> None:
    """Record a model attempt in the AICall ledger and add it to the step's usage.

    PostgreSQL: one statement (the INSERT in a WITH of the UPDATE), one commit
    instead of two; elsewhere the ledger's own insert, then the UPDATE.
    """
    if connection.vendor != "postgresql":
        ai_call_record(attempt=attempt, ref=ref, tenant_id=tenant_id)
        step_add_usage(step_id, attempt)
        return
    # The row ai_call_record inserts, as one statement with the usage.
    insert, fields, _ = sql.insert_plan(AICall, connection.vendor)
    params = sql.insert_params(ai_call_build(attempt, ref, tenant_id, None), fields)
    if _has_usage(attempt):
        sql.rowcount(
            f'WITH "call" AS ({insert}) {_USAGE}',
            [*params, *_usage_params(step_id, attempt)],
        )
    else:
        sql.rowcount(insert, params)


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


def _run_close(
    *,
    run_id: Any,
    status: str,
    result: Any,
    error: str,
    context: dict[str, Any],
    finished: datetime,
) -> tuple[str, list[Any]]:
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
    totals = ", ".join(f'"{column}" = {total}' for column, total in sums.items())
    return (
        f'UPDATE "{RUN}" SET "status" = %s, "result" = %s, "error" = %s,'  # noqa: S608 - our names
        f' "error_context" = %s, "finished_at" = %s, {totals}'
        ' WHERE "id" = %s AND "status" IN (%s, %s)',
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


def run_close(run_id: Any, **values: Any) -> bool:
    """Give an active run its final status and its steps' usage totals, once.

    ``values``: status, result, error, context, finished (``_run_close``).
    Returns whether the run was still active (whether this call closed it).
    """
    return bool(sql.rowcount(*_run_close(run_id=run_id, **values)))


def _run_steps_close(
    run_id: Any, *, from_status: str, to_status: str, error: str, finished: datetime
) -> tuple[str, list[Any]]:
    return (
        f'UPDATE "{STEP}" SET "status" = %s, "finished_at" = %s, "error" = %s'  # noqa: S608 - our names
        ' WHERE "run_id" = %s AND "status" = %s',
        [
            to_status,
            sql.db_value(StepProgress, "finished_at", finished),
            error,
            sql.db_value(Run, "id", run_id),
            from_status,
        ],
    )


def run_steps_close(run_id: Any, **values: Any) -> int:
    """Move the run's steps in ``from_status`` to ``to_status`` with ``error``.

    ``values``: from_status, to_status, error, finished (``_run_steps_close``).
    """
    return sql.rowcount(*_run_steps_close(run_id, **values))
