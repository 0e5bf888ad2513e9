"""Let the model call tools: ask, run the calls, feed the results back, repeat.

``agent_generate`` wraps ``providers.generate``. With no usable tools it is
exactly one ``generate`` call. Otherwise each round offers the tools; when the
model asks for some they run (validated, time-limited, failures become error
results) and the model is asked again, up to ``AI_MAX_TOOL_ROUNDS`` rounds,
then once more with tool calls forbidden, so a reply always arrives.

Each round that asks for tools is an ``agent_action`` VOC event of the tenant
and each call a ``tool_invocation`` event, with ids derived from ``ref`` so
a redelivered task stores them once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from . import providers as ai
from .providers import Attempt, ChatTurn, Completion, ToolCall
from .tools import Tool, ToolContext, ToolResult, tool_invoke, tools_resolve

logger = logging.getLogger(__name__)

# Said when the model still wants tools after its last round and wrote nothing.
ROUND_LIMIT_TEXT = (
    "Sorry, I could not finish looking that up. Could you rephrase or ask "
    "again in a moment?"
)
_EVENT_NAMESPACE = uuid.UUID("6f1c2a9e-3d4b-5c6d-8e7f-a1b2c3d4e5f6")


def agent_generate(
    *,
    system: str,
    messages: list[ChatTurn],
    tools: list[str],
    tenant_id: int | None,
    agent_id: str,
    ref: str,
    providers: list[str] | None = None,
    models: dict[str, str] | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    before_attempt: Callable[[str, str], None] | None = None,
    deadline: float | None = None,
) -> Completion:
    """Return the model's final answer after the tool calls it asked for.

    ``tools`` names the tools the channel may use (unknown names are logged
    and ignored). The Completion's usage and cost are summed over every
    round and its ``attempts`` hold every round's attempts, each of which
    also went to ``on_attempt``. Raises AIUnavailable like ``generate``.
    """
    generate_kwargs: dict[str, Any] = {
        "system": system,
        "providers": providers,
        "models": models,
        "on_attempt": on_attempt,
        "before_attempt": before_attempt,
        "deadline": deadline,
    }
    available = tools_resolve(names=tools) if tools else []
    if not available:
        return _generate(messages=messages, **generate_kwargs)

    by_name = {t.name: t for t in available}
    specs = [t.spec for t in available]
    context = ToolContext(tenant_id=tenant_id, agent_id=agent_id, ref=ref)
    turns = list(messages)
    rounds: list[Completion] = []
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    max_rounds = max(0, settings.AI_MAX_TOOL_ROUNDS)
    try:
        for round_no in range(1, max_rounds + 2):
            last = round_no > max_rounds
            completion = _generate(
                messages=turns,
                tools=specs,
                tool_choice="none" if last else "auto",
                **generate_kwargs,
            )
            rounds.append(completion)
            if not completion.tool_calls:
                break
            if last:
                logger.warning("agent_round_limit ref=%s rounds=%s", ref, max_rounds)
                break
            events.append(_action_event(ref, agent_id, round_no, completion))
            turns.append(
                ChatTurn(
                    role="assistant",
                    content=completion.text,
                    tool_calls=completion.tool_calls,
                )
            )
            for index, call in enumerate(completion.tool_calls):
                result = _run(call, by_name, context, deadline)
                events.append(_invocation_event(ref, round_no, index, call, result))
                turns.append(
                    ChatTurn(
                        role="tool",
                        content=result.content,
                        tool_call_id=call.id,
                        is_error=not result.ok,
                    )
                )
    finally:
        if events and tenant_id is not None:
            _events_record(events=events, tenant_id=tenant_id, ref=ref)
    return _summed(rounds, started)


def _generate(**kwargs: Any) -> Completion:
    return ai.generate(**kwargs)


def _run(
    call: ToolCall,
    by_name: dict[str, Tool],
    context: ToolContext,
    deadline: float | None,
) -> ToolResult:
    tool = by_name.get(call.name)
    if tool is None:
        # Models do invent tool names; tell it which ones exist.
        error = f"unknown tool {call.name!r}; available: {', '.join(by_name)}"
        return ToolResult(
            content=json.dumps({"error": error}), ok=False, latency_ms=0, error=error
        )
    result = tool_invoke(
        tool=tool, arguments=call.arguments, context=context, deadline=deadline
    )
    logger.info(
        "tool_invoked name=%s ok=%s ms=%s ref=%s",
        call.name,
        result.ok,
        result.latency_ms,
        context.ref,
    )
    return result


def _summed(rounds: list[Completion], started: float) -> Completion:
    final = rounds[-1]
    text = final.text
    if final.tool_calls and not text.strip():
        text = ROUND_LIMIT_TEXT
    return Completion(
        text=text,
        provider=final.provider,
        model=final.model,
        prompt_tokens=sum(c.prompt_tokens for c in rounds),
        completion_tokens=sum(c.completion_tokens for c in rounds),
        cost=sum((c.cost for c in rounds), Decimal(0)),
        latency_ms=int((time.monotonic() - started) * 1000),
        attempts=[a for c in rounds for a in c.attempts],
    )


def _event_id(ref: str, *parts: object) -> str:
    # From the reply's ref and the call's position, not the provider's call
    # id: a redelivered task asks the model again and gets new call ids.
    return str(uuid.uuid5(_EVENT_NAMESPACE, "/".join([ref, *map(str, parts)])))


def _action_event(
    ref: str, agent_id: str, round_no: int, completion: Completion
) -> dict[str, Any]:
    return {
        "event_id": _event_id(ref, round_no, "action"),
        "timestamp": timezone.now().isoformat(),
        "event_type": "agent_action",
        "agent_id": agent_id,
        "action": "call_tools",
        "details": {
            "round": round_no,
            "tools": [c.name for c in completion.tool_calls],
            "provider": completion.provider,
            "model": completion.model,
        },
        "metadata": {"ref": ref},
    }


def _invocation_event(
    ref: str, round_no: int, index: int, call: ToolCall, result: ToolResult
) -> dict[str, Any]:
    arguments = call.arguments
    if not isinstance(arguments, dict):
        arguments = {"raw": str(arguments)[:1000]}
    metadata: dict[str, Any] = {"ref": ref, "round": round_no, "call_id": call.id}
    if not result.ok:
        metadata["error"] = result.error[:1000]
    return {
        "event_id": _event_id(ref, round_no, "call", index),
        "timestamp": timezone.now().isoformat(),
        "event_type": "tool_invocation",
        "tool_name": call.name[:200],
        "arguments": arguments,
        "latency_ms": result.latency_ms,
        "success": result.ok,
        "metadata": metadata,
    }


def _events_record(*, events: list[dict[str, Any]], tenant_id: int, ref: str) -> None:
    """Store the events now, once per event id; never fail the reply.

    Written here rather than sent to the analytics queue: this already runs
    in a worker, one small insert is cheaper than another task hop, and the
    summary shows them as soon as the reply is out.
    """
    from analytics.services import events_store, events_validate
    from vocoeng.models import Tenant

    try:
        slug = Tenant.objects.filter(pk=tenant_id).values_list("slug", flat=True)[0]
        tenant = Tenant(pk=tenant_id, slug=slug)
        for event in events:
            event["tenant_id"] = slug
        valid, errors = events_validate(events=events, tenant=tenant)
        for error in errors:
            logger.warning(
                "agent_event_invalid ref=%s index=%s reason=%s",
                ref,
                error["index"],
                error["reason"],
            )
        if valid:
            events_store(events=valid)
    except Exception:
        logger.exception("agent_events_failed ref=%s count=%s", ref, len(events))
