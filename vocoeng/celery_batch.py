"""Publish many Celery signatures at once, each as the message apply_async sends.

``signature.apply_async()`` spends most of its time outside the message: the
canvas clones and freezes every step (deep copies, result objects), then
``send_task`` looks up a dozen settings and routes, and kombu declares the
queue again for each message. For a batch of plain tasks and chains of plain
tasks, :func:`publish_many` does that work once per task name and batch, and
builds each message with Celery's own protocol-2 functions
(``app.amqp.create_task_message`` and ``send_task_message``), so a worker gets
the same headers, body and chain (the remaining steps, frozen with their task
ids, last step first) as from ``apply_async``; from inside a task, with its
root and parent ids and in its trail, as ``apply_async`` there. Anything else
(groups, chords, links, countdowns, options other than ``queue``,
``argsrepr`` and ``kwargsrepr``, eager mode, a task's priority handed down
by ``task_inherit_parent_priority``) goes through ``apply_async`` itself.

Routing is resolved once per task name and batch: routers must route by task
(as ``vocoeng.queues.route_task`` does), not by arguments.

On our Redis transport (``vocoeng.kombu_redis``) the messages of one shape
(task, queue, the chain's remaining task names, the header names) are built
once per batch as a template (``vocoeng.celery_template``): one message goes through
Celery's and kombu's whole path with slots for what varies, is captured
before its LPUSH, and every message of that shape is that payload with the
slots filled. All of them go out in one LPUSH per queue key.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery.app.task import Task
from celery.canvas import Signature, _chain
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr

from . import correlation
from .celery import app
from .celery_template import Template, json_text, template_channel

# Signature options the fast path reproduces; any other option falls back.
# ``argsrepr``/``kwargsrepr`` stand for the arguments' repr in the message,
# as apply_async's options of those names do (what Flower and the worker's
# log show; apply_async also passes them on as message properties): for a
# long argument, saferepr was most of the message's CPU.
_REPR_OPTIONS = ("argsrepr", "kwargsrepr")
_PLAIN_OPTIONS = frozenset({"queue", *_REPR_OPTIONS})
# Arguments whose repr() is what saferepr() gives (short, flat).
_FLAT = (str, int, float, bool, type(None))
_REPR_SHORT = 200


def uuids(n: int) -> list[str]:
    """Return ``n`` random (version 4) UUID strings from one urandom call.

    The version and variant bits are set as ``uuid.UUID(version=4)`` sets
    them, on the bytes, and the text cut from one hex string (a UUID object
    per id cost ~3 µs).
    """
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-"
        f"{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


def _steps(signature: Signature) -> list[Signature] | None:
    """Return the plain task steps of ``signature``, or None if not plain.

    Here and in publish_many a signature's fields are read as the dict it
    is (``s.get("task")``): its attributes (``s.task``) are Celery's
    getitem_property descriptors, ~24 lookups a reply chain, a tenth of
    the publish's CPU (measured: 29-34 against 34-37 µs a message, best of
    60 batches of 200 chains).
    """
    if type(signature) is Signature:
        steps = [signature]
    elif isinstance(signature, _chain):
        # a chain keeps its steps in kwargs["tasks"]; partial args or
        # options would be applied to the steps by the canvas
        kwargs = signature.get("kwargs")
        if signature.get("options") or signature.get("args"):
            return None
        if set(kwargs) != {"tasks"}:
            return None
        steps = list(kwargs["tasks"])
    else:
        return None
    if not steps:
        return None
    for step in steps:
        if (
            type(step) is not Signature
            or step.get("subtask_type")
            or not _PLAIN_OPTIONS.issuperset(step.get("options"))
        ):
            return None
    return steps


def _repr(value: tuple | dict, maxsize: int, ctx: _Context) -> str:
    """Return saferepr(value) as Celery writes argsrepr, cheaply when flat."""
    items = value.values() if isinstance(value, dict) else value
    if all(
        type(v) in _FLAT and (type(v) is not str or len(v) < _REPR_SHORT) for v in items
    ):
        text = repr(value)
        if len(text) < maxsize:
            return text
    return saferepr(value, maxsize, maxlevels=ctx.repr_maxlevels)


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
        queue = self.options.get("queue")
        self.qname = getattr(queue, "name", queue)
        # a template holds what does not vary; a shadow name and an expiry
        # (counted from now) may vary per message
        self.templates = self.expires is None and (
            task is None or type(task).shadow_name is Task.shadow_name
        )


def _fallback(signature: Signature, headers: Mapping[str, Any], producer: Any) -> str:
    result = signature.apply_async(
        headers=dict(headers), retry=False, producer=producer
    )
    return result.id


class PublishCache:
    """What :func:`publish_many` works out once and may keep across calls.

    A caller that publishes the same shapes again and again on one producer
    (the webhook hand-off: a batch of a few messages per call) keeps one and
    passes it to every call: the routing of each task name and the template
    of each message shape are then worked out once per channel and thread,
    not once per call (building a template sends a message through Celery's
    and kombu's whole path: for a batch of 2-3 messages, half of the call's
    CPU). Templates are kept per channel and per publishing thread (a
    message's ``reply_to``); a message without a correlation header gets the
    id current in its call (the hook's), so its template is never kept. One
    call at a time uses a cache; a change of the app's configuration needs a
    new one.
    """

    MAX_THREADS = 64  # templates of more publishing threads: start again

    def __init__(self) -> None:
        self.channel: Any = None
        self._sent_event: bool | None = None
        self.plans: dict[tuple[str, Any], _Plan] = {}
        self.declared: set[str] = set()
        self._templates: dict[str, dict[tuple, Template | None]] = {}

    def on(self, channel: Any) -> PublishCache:
        """Return the cache, emptied first if it was for another channel."""
        if channel is not self.channel:
            self.__init__()
            self.channel = channel
        return self

    @property
    def sent_event(self) -> bool:
        """Return ``task_send_sent_event``, read once (a Celery setting that
        is left at its default costs ~8 us to read)."""
        if self._sent_event is None:
            self._sent_event = bool(app.conf.task_send_sent_event)
        return self._sent_event

    def templates(self, reply_to: str) -> dict[tuple, Template | None]:
        """Return the templates of the thread whose ``reply_to`` this is."""
        kept = self._templates.get(reply_to)
        if kept is None:
            if len(self._templates) >= self.MAX_THREADS:
                self._templates.clear()
            kept = self._templates[reply_to] = {}
        return kept


class _Context:
    """What every message of one publish_many call shares."""

    def __init__(self, producer: Any, sent_event: bool, parent: Any) -> None:
        self.producer = producer
        self.amqp = app.amqp
        self.reply_to = app.thread_oid
        self.origin = anon_nodename()  # what as_task_v2 computes per message
        self.sent_event = sent_event
        # Sent from inside a task: its messages name the task as their parent
        # and its root as theirs (what send_task does).
        self.root_id = self.parent_id = None
        if parent is not None:
            self.root_id = parent.request.root_id or parent.request.id
            self.parent_id = parent.request.id

    @functools.cached_property
    def repr_maxlevels(self) -> int:
        """Return ``task_repr_maxlevels``, read once a call and only if needed.

        A lookup in Celery's settings costs ~20 µs here, a third of what
        saferepr itself costs for a nested value (measured in the bridge,
        with a payload dict in the task's arguments, twice a message).
        """
        return app.conf.task_repr_maxlevels


def _sender(
    ctx: _Context,
    plan: _Plan,
    name: str,
    rest: list[Signature],
    declare: Any,
    header_names: Sequence[str],
    repr_options: Sequence[str] = (),
) -> Callable[..., None]:
    """Return ``send(...)``: publish one message of ``plan`` as apply_async does.

    ``repr_options``: which of argsrepr and kwargsrepr the signature gave
    (they also go out as message properties, as from apply_async).
    """
    amqp, producer, reply_to = ctx.amqp, ctx.producer, ctx.reply_to
    task = plan.task

    def send(
        task_id: str,
        rest_ids: list[str],
        args: Any,
        kwargs: Any,
        argsrepr: str,
        kwargsrepr: str,
        header_values: list[Any],
        root_id: str | None,
        parent_id: str | None,
    ) -> None:
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
        options = dict(plan.options)
        slots = isinstance(args, str)  # a template's: filled in later
        message = amqp.create_task_message(
            task_id,
            name,
            () if slots else args,
            {} if slots else kwargs,
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
            ctx.sent_event,
            root_id,
            parent_id,
            None if task is None else task.shadow_name(args, kwargs, plan.options),
            chain or None,
            origin=ctx.origin,
            ignore_result=plan.ignore_result,
            replaced_task_nesting=0,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            **options,
        )
        if slots:
            message = message._replace(body=(args, kwargs, message.body[2]))
        options.pop("stamped_headers", None)
        reprs = {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}
        for option in repr_options:
            options[option] = reprs[option]
        with producer.connection._reraise_as_library_errors():
            amqp.send_task_message(
                producer,
                name,
                message,
                headers=dict(zip(header_names, header_values, strict=True)),
                retry=False,
                declare=declare,
                **options,
            )

    return send


def publish_many(
    items: Sequence[tuple[Signature, Mapping[str, Any]]],
    *,
    producer: Any,
    cache: PublishCache | None = None,
) -> list[str]:
    """Publish each ``(signature, headers)`` on ``producer``; return the task ids.

    The caller holds ``producer`` (and usually a ``producer.batch()`` around
    this call, so the messages go out in one pipeline on Redis). The task id
    returned is ``apply_async().id``'s: for a chain, its last step's. On our
    Redis transport the templated messages are in the broker when this
    returns; the others when the caller's batch is flushed. ``cache``: plans
    and templates kept from earlier calls on this producer (PublishCache).
    """
    conf = app.conf
    parent = app.current_worker_task
    if conf.task_always_eager or (
        parent is not None and conf.task_inherit_parent_priority
    ):
        return [_fallback(s, h, producer) for s, h in items]
    args_max, kwargs_max = app.amqp.argsrepr_maxsize, app.amqp.kwargsrepr_maxsize
    kept = (cache or PublishCache()).on(producer.channel)
    ctx = _Context(producer, kept.sent_event, parent)
    channel = template_channel(producer, sent_event=ctx.sent_event)
    plans, declared = kept.plans, kept.declared
    kept_templates = kept.templates(ctx.reply_to)
    templates: dict[tuple, Template | None] = {}  # this call's only
    pushes: list[tuple[str, str]] = []
    root_json = json_text(ctx.root_id) if ctx.root_id else None
    parent_json = json_text(ctx.parent_id)
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
        key = (first.get("task"), first.get("options").get("queue"))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _Plan(*key)
        args, kwargs = tuple(first.get("args")), dict(first.get("kwargs"))
        if not plan.fast:
            task_ids.append(_fallback(signature, headers, producer))
            continue
        task = plan.task
        if task is not None and task.typing:
            if check := getattr(task, "__header__", None):
                check(*args, **kwargs)
        declare = None if plan.qname not in declared else []
        declared.add(plan.qname)
        names = tuple(headers)
        given = first.get("options")
        reprs = tuple(o for o in _REPR_OPTIONS if o in given)
        template = None
        if (
            channel is not None
            and plan.templates
            and not any(
                s.get("args") or s.get("kwargs") or s.get("options") for s in rest
            )
        ):
            shape = (
                key,
                tuple((s.get("task"), s.get("immutable")) for s in rest),
                names,
                reprs,
            )
            # The correlation hook writes the current id into a message
            # without one: such a template is this call's only.
            store = (
                kept_templates
                if correlation.HEADER in names or correlation.current() is None
                else templates
            )
            if shape in store:
                template = store[shape]
            else:
                send = _sender(ctx, plan, key[0], rest, declare, names, reprs)
                template = Template.build(send, channel, len(rest), len(names))
                store[shape] = template
        if not plan.ignore_result:
            app.backend.on_task_call(producer, task_id)
        argsrepr = (
            given["argsrepr"] if "argsrepr" in reprs else _repr(args, args_max, ctx)
        )
        kwargsrepr = (
            given["kwargsrepr"]
            if "kwargsrepr" in reprs
            else _repr(kwargs, kwargs_max, ctx)
        )
        if template is None:
            send = _sender(ctx, plan, key[0], rest, declare, names, reprs)
            send(
                *(task_id, rest_ids, args, kwargs, argsrepr, kwargsrepr),
                headers.values(),
                ctx.root_id,
                ctx.parent_id,
            )
        else:
            values = [
                '"' + task_id + '"',
                json_text(args),
                json_text(kwargs),
                json_text(argsrepr),
                json_text(kwargsrepr),
                "",  # the body, filled by payload()
                "",  # the delivery tag, likewise
                root_json or '"' + task_id + '"',  # as_task_v2: no root, its own
                parent_json,
                *['"' + i + '"' for i in rest_ids],
                *[json_text(v) for v in headers.values()],
            ]
            tag = channel._next_delivery_tag()
            pushes.append((template.key, template.payload(values, tag)))
        if parent is not None:  # send_task's add_to_parent (the first step's)
            result = app.AsyncResult(task_id)
            result.ignored = plan.ignore_result
            parent.add_trail(result)
        # apply_async().id: a chain's is its last step's
        task_ids.append(rest_ids[-1] if rest_ids else task_id)
    if pushes:
        with producer.connection._reraise_as_library_errors():
            channel.push_many(pushes)
    return task_ids


def publish_batch(
    items: Sequence[tuple[Signature, Mapping[str, Any]]],
    *,
    producer: Any,
    cache: PublishCache | None = None,
) -> list[str]:
    """:func:`publish_many` inside one batch of ``producer`` (one pipeline on
    Redis), sized for the messages and flushed before returning: a broker
    error is raised here, not at some later publish."""
    # Up to four transport operations a message, and a few for the batch.
    with producer.batch(max_size=4 * len(items) + 4) as batch:
        task_ids = publish_many(items, producer=producer, cache=cache)
        batch.flush()
    return task_ids
