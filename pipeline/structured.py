"""Ask a model for JSON through the conversations providers, with a deadline.

``generate_json`` sends a prompt, parses and validates the answer against a
JSON Schema, and repairs it once with a follow-up call; every provider attempt
is recorded in the AICall ledger and added to the step's usage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from conversations import providers
from conversations.budget import BudgetExceeded, SpendGuard
from conversations.providers import AIUnavailable, Attempt, ChatTurn, Completion
from vocoeng.models import Tenant

from . import prompts, queries

logger = logging.getLogger(__name__)


class StepError(Exception):
    """A step failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class JsonAnswer:
    """The validated JSON a model returned, and who returned it."""

    data: dict[str, Any]
    provider: str
    model: str
    calls: list[Completion] = field(default_factory=list)


def parse_json(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON object in ``text`` valid against ``schema``.

    Tolerates code fences and prose around one object; raises ValueError with
    a short reason otherwise.
    """
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ValueError(f"{where}: {error.message}")
    return data


_validators: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """Return a checked validator for ``schema``, built once per schema.

    ``jsonschema.validate()`` checks the schema itself on every call (~7 ms,
    measured), more than the rest of a step's own work; the steps use the
    same few schemas every time, so one validator each serves every call.
    """
    key = json.dumps(schema, sort_keys=True)
    validator = _validators.get(key)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = _validators[key] = cls(schema)
    return validator


def _recorder(
    *, step_id: int, tenant_id: int | None, ref: str, guard: SpendGuard | None
) -> Callable[[Attempt], None]:
    """Return an on_attempt callback writing the ledger row and step usage."""

    def record(attempt: Attempt) -> None:
        if guard is not None:
            guard.after(attempt)  # completes the row it admitted the attempt with
            queries.step_add_usage(step_id, attempt)
        else:
            queries.step_attempt_record(
                step_id, attempt=attempt, ref=ref, tenant_id=tenant_id
            )

    return record


def _call_with_deadline(
    *,
    turns: list[ChatTurn],
    on_attempt: Callable[[Attempt], None],
    deadline: float,
    guard: SpendGuard | None = None,
    schema: dict[str, Any] | None = None,
) -> Completion:
    """Call the model, giving up at ``deadline`` (a ``time.monotonic()`` value).

    Celery's soft/hard time limits only work in the prefork pool; the ``ai``
    worker runs a thread pool, where nothing can interrupt a blocked call. So
    the deadline goes to the providers, which cut each attempt's HTTP timeout
    to the time left and start no attempt after it.
    """
    try:
        return providers.generate(
            system=prompts.SYSTEM,
            messages=turns,
            on_attempt=on_attempt,
            before_attempt=guard.before if guard is not None else None,
            deadline=deadline,
            json_schema=schema,
        )
    except BudgetExceeded as error:
        # Permanent for this run: a retry minutes later would be refused too.
        raise StepError(error.reason, retryable=False) from error
    except AIUnavailable as error:
        if error.deadline_exceeded:
            raise StepError(
                "step time limit exceeded (WORKER_STEP_TIMEOUT_SECONDS)"
            ) from error
        raise StepError(str(error), retryable=error.transient) from error


def generate_json(
    *,
    prompt: str,
    schema: dict[str, Any],
    step_id: int,
    tenant_id: int | None,
    ref: str,
    deadline: float,
    tenant: Tenant | None = None,
) -> JsonAnswer:
    """Return the model's validated JSON answer to ``prompt``, repaired once.

    Raises StepError when the model is unavailable, the deadline passes, or
    the answer is still not valid after one repair call.
    """
    # The tenant's budget is checked before every attempt (tenant given).
    guard = SpendGuard.for_tenant(tenant=tenant, ref=ref) if tenant else None
    on_attempt = _recorder(step_id=step_id, tenant_id=tenant_id, ref=ref, guard=guard)
    turns = [ChatTurn(role="user", content=prompt)]
    first = _call_with_deadline(
        turns=turns,
        on_attempt=on_attempt,
        deadline=deadline,
        guard=guard,
        schema=schema,
    )
    try:
        data = parse_json(first.text, schema)
        return JsonAnswer(data, first.provider, first.model, [first])
    except ValueError as exc:
        problem = str(exc)
    logger.warning("step_output_invalid ref=%s problem=%s; repairing", ref, problem)
    turns += [
        ChatTurn(role="assistant", content=first.text or "(empty)"),
        ChatTurn(role="user", content=prompts.repair_prompt(problem=problem)),
    ]
    second = _call_with_deadline(
        turns=turns,
        on_attempt=on_attempt,
        deadline=deadline,
        guard=guard,
        schema=schema,
    )
    try:
        data = parse_json(second.text, schema)
    except ValueError as exc:
        raise StepError(
            f"model output is not the expected JSON after one repair: {exc}"
        ) from exc
    return JsonAnswer(data, second.provider, second.model, [first, second])
