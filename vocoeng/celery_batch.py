"""Publish many Celery signatures at once, each as the message apply_async sends.

``signature.apply_async()`` spends most of its time outside the message: the
canvas clones and freezes every step (deep copies, result objects), then
``send_task`` looks up a dozen settings and routes, and kombu declares the
queue again for each message. For a batch of plain tasks and chains of plain
tasks, :func:`publish_many` does that work once per task name and batch, and
builds each message with Celery's own protocol-2 functions
(``app.amqp.create_task_message`` and ``send_task_message``), so a worker gets
the same headers, body and chain (the remaining steps, frozen with their task
ids, last step first) as from ``apply_async``. Anything else (groups, chords,
links, countdowns, options other than ``queue``, eager mode, publishing
from inside a task) goes through ``apply_async`` itself.

Routing is resolved once per task name and batch: routers must route by task
(as ``vocoeng.queues.route_task`` does), not by arguments.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery.canvas import Signature, _chain
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr

from .celery import app

# Signature options the fast path reproduces; any other option falls back.
_PLAIN_OPTIONS = frozenset({"queue"})
# Arguments whose repr() is what saferepr() gives (short, flat).
_FLAT = (str, int, float, bool, type(None))
_REPR_SHORT = 200


def uuids(n: int) -> list[str]:
    """Return ``n`` random (version 4) UUID strings from one urandom call."""
    raw = os.urandom(16 * n)
    return [
        str(uuid.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * n, 16)
    ]


def _steps(signature: Signature) -> list[Signature] | None:
    """Return the plain task steps of ``signature``, or None if not plain."""
    if type(signature) is Signature:
        steps = [signature]
    elif isinstance(signature, _chain):
        # a chain keeps its steps in kwargs["tasks"]; partial args or
        # options would be applied to the steps by the canvas
        if signature.options or signature.args or set(signature.kwargs) != {"tasks"}:
            return None
        steps = list(signature.tasks)
    else:
        return None
    if not steps:
        return None
    for step in steps:
        if (
            type(step) is not Signature
            or step.subtask_type
            or not _PLAIN_OPTIONS.issuperset(step.options)
        ):
            return None
    return steps


def _repr(value: tuple | dict, maxsize: int) -> str:
    """Return saferepr(value) as Celery writes argsrepr, cheaply when flat."""
    items = value.values() if isinstance(value, dict) else value
    if all(
        type(v) in _FLAT and (type(v) is not str or len(v) < _REPR_SHORT) for v in items
    ):
        text = repr(value)
        if len(text) < maxsize:
            return text
    return saferepr(value, maxsize, maxlevels=app.conf.task_repr_maxlevels)


class _Plan:
    """What Celery decides for one task name: options, routing, limits."""

    def __init__(self, name: str, queue: Any) -> None:
        # a task this process does not know is sent by name, as send_task does
        task = app.tasks.get(name)
        options = dict(task._get_exec_options()) if task is not None else {}
        if queue is not None:
            options["queue"] = queue
        if task is not None:
            options.setdefault("ignore_result", task.ignore_result)
        self.time_limit = options.pop("time_limit", None)
        self.soft_time_limit = options.pop("soft_time_limit", None)
        self.expires = options.pop("expires", None)
        self.ignore_result = options.pop("ignore_result", None)
        self.options = app.amqp.router.route(options, name, (), {}, task)
        self.task = task
        # pydantic arguments are converted by Task.apply_async: not here
        self.fast = getattr(task, "_dump_pydantic_arguments", None) is None


def _fallback(signature: Signature, headers: Mapping[str, Any], producer: Any) -> str:
    result = signature.apply_async(
        headers=dict(headers), retry=False, producer=producer
    )
    return result.id


def publish_many(
    items: Sequence[tuple[Signature, Mapping[str, Any]]], *, producer: Any
) -> list[str]:
    """Publish each ``(signature, headers)`` on ``producer``; return the task ids.

    The caller holds ``producer`` (and usually a ``producer.batch()`` around
    this call, so the messages go out in one pipeline on Redis). The task id
    returned is ``apply_async().id``'s: for a chain, its last step's.
    """
    conf = app.conf
    if conf.task_always_eager or app.current_worker_task is not None:
        return [_fallback(s, h, producer) for s, h in items]
    amqp = app.amqp
    plans: dict[tuple[str, Any], _Plan] = {}
    declared: set[str] = set()
    reply_to = app.thread_oid
    origin = anon_nodename()  # what as_task_v2 computes for every message
    sent_event = conf.task_send_sent_event
    args_max, kwargs_max = amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize
    steps_of = [_steps(signature) for signature, _ in items]
    ids = iter(uuids(sum(len(s) for s in steps_of if s)))
    task_ids: list[str] = []
    for (signature, headers), steps in zip(items, steps_of, strict=True):
        if steps is None:
            task_ids.append(_fallback(signature, headers, producer))
            continue
        first, rest = steps[0], steps[1:]
        task_id = next(ids)
        rest_ids = [next(ids) for _ in rest]
        # The chain field lists the remaining steps last first (the worker
        # pops the next one), each frozen with its task id and reply_to.
        chain = [
            {
                "task": step.task,
                "args": step.args,
                "kwargs": step.kwargs,
                "options": {**step.options, "task_id": step_id, "reply_to": reply_to},
                "subtask_type": None,
                "immutable": step.immutable,
            }
            for step, step_id in zip(reversed(rest), reversed(rest_ids), strict=True)
        ]
        key = (first.task, first.options.get("queue"))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _Plan(*key)
        args, kwargs = tuple(first.args), dict(first.kwargs)
        if not plan.fast:
            task_ids.append(_fallback(signature, headers, producer))
            continue
        task = plan.task
        if task is not None and task.typing:
            if check := getattr(task, "__header__", None):
                check(*args, **kwargs)
        options = dict(plan.options)
        message = amqp.create_task_message(
            task_id,
            first.task,
            args,
            kwargs,
            None,  # countdown
            None,  # eta
            None,  # group_id
            None,  # group_index
            plan.expires,
            0,  # retries
            None,  # chord
            None,  # callbacks
            None,  # errbacks
            reply_to,
            plan.time_limit,
            plan.soft_time_limit,
            sent_event,
            None,  # root_id
            None,  # parent_id
            None if task is None else task.shadow_name(args, kwargs, plan.options),
            chain or None,
            origin=origin,
            ignore_result=plan.ignore_result,
            replaced_task_nesting=0,
            argsrepr=_repr(args, args_max),
            kwargsrepr=_repr(kwargs, kwargs_max),
            **options,
        )
        options.pop("stamped_headers", None)
        queue = options.get("queue")
        qname = getattr(queue, "name", queue)
        declare = None if qname not in declared else []
        declared.add(qname)
        if not plan.ignore_result:
            app.backend.on_task_call(producer, task_id)
        with producer.connection._reraise_as_library_errors():
            amqp.send_task_message(
                producer,
                first.task,
                message,
                headers=dict(headers),
                retry=False,
                declare=declare,
                **options,
            )
        # apply_async().id: a chain's is its last step's
        task_ids.append(rest_ids[-1] if rest_ids else task_id)
    return task_ids
