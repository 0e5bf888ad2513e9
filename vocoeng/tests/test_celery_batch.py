"""publish_many sends the very messages apply_async sends, and a worker runs them."""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import uuid
from typing import Any

import pytest
from celery.canvas import Signature, chain, group
from celery.signals import before_task_publish
from kombu import Connection

from conftest import wait_for
from vocoeng import correlation
from vocoeng.celery import app
from vocoeng.celery_batch import PublishCache, publish_many, uuids
from vocoeng.kombu_redis import Transport
from vocoeng.tests.test_kombu_redis import URL, needs_redis

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _published(publish: Any, queue: str, conn: Any = None) -> list[dict[str, Any]]:
    """Publish on ``conn`` (default: an in-memory broker); return the messages
    that reached ``queue``, in the order a worker takes them."""
    # transport= too: with CELERY_BROKER_URL on Redis the app's
    # broker_transport (our Redis transport) would otherwise serve "memory://"
    # from the real Redis, with what earlier tests left in its queues.
    with conn or app.connection_for_write("memory://", transport="memory") as conn:
        publish(conn)
        channel = conn.default_channel
        messages = []
        while True:
            try:
                messages.append(channel._get(queue))
            except Exception:  # kombu's Empty: the queue is drained
                break
        return messages


def _normal(message: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return the message with its body decoded and each UUID named by order."""
    message = dict(message)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    text = json.dumps(message, sort_keys=True)
    names: dict[str, str] = {}
    text = UUID.sub(lambda m: names.setdefault(m.group(), f"<id{len(names)}>"), text)
    return json.loads(text), list(names)


def _both(signature_of: Any, queue: str = "ai") -> tuple[Any, Any, str, str]:
    headers = {"x_correlation_id": "c-1"}
    ref = _published(
        lambda conn: signature_of().apply_async(
            headers=dict(headers), retry=False, connection=conn
        ),
        queue,
    )
    ids: list[str] = []

    def fast(conn: Any) -> None:
        with app.amqp.Producer(conn) as producer:
            ids.extend(publish_many([(signature_of(), headers)], producer=producer))

    ours = _published(fast, queue)
    assert len(ref) == len(ours) == 1
    (a, _), (b, b_ids) = _normal(ref[0]), _normal(ours[0])
    return a, b, b_ids, ids[0]


def _redis(prefix: str) -> Connection:
    """Return a connection to Redis on our transport, as the app's broker is."""
    return Connection(
        URL, transport=Transport, transport_options={"global_keyprefix": prefix}
    )


def _batch_both(
    signatures: list[Any], headers: list[dict], queue: str
) -> tuple[list, list]:
    """Publish through apply_async and through one publish_many batch, on Redis."""
    prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
    ref = _published(
        lambda conn: [
            s().apply_async(headers=dict(h), retry=False, connection=conn)
            for s, h in zip(signatures, headers, strict=True)
        ],
        queue,
        _redis(prefix),
    )

    def fast(conn: Any) -> None:
        with app.amqp.Producer(conn) as producer, producer.batch(max_size=64):
            publish_many(
                [(s(), h) for s, h in zip(signatures, headers, strict=True)],
                producer=producer,
            )

    ours = _published(fast, queue, _redis(prefix))
    return [_normal(m)[0] for m in ref], [_normal(m)[0] for m in ours]


@needs_redis
def test_templated_messages_on_redis_are_the_messages_apply_async_sends() -> None:
    from conversations.models import Message
    from conversations.routes import reply_chain
    from conversations.tasks import reply_generate

    pks = [f"pk-{uuid.uuid4().hex}" for _ in range(3)]
    chains = [lambda pk=pk: reply_chain(Message(pk=pk)) for pk in pks]
    headers = [{"x_correlation_id": f'pubsub-{n}\u00e9"\n'} for n in range(3)]
    ref, ours = _batch_both(chains, headers, "ai")
    assert len(ours) == 3 and ours == ref
    assert [m["body"][0] for m in ours] == [[pk] for pk in pks]

    singles = [
        lambda: reply_generate.si("x" * 5000).set(queue="default"),  # argsrepr cut
        lambda: reply_generate.s("a").set(queue="default"),
        lambda: app.signature(
            "elsewhere.task", args=(1.5, None), kwargs={"b": [1, {}]}, queue="default"
        ),
        lambda: reply_generate.s("c").set(queue="default", argsrepr='("\u00e9",)'),
    ]
    headers = [{"x_correlation_id": "c"}, {}, {"a": 1}, {}]
    ref, ours = _batch_both(singles, headers, "default")
    assert len(ours) == 4 and ours == ref


class _InTask:
    """Run the body as if inside a task the worker runs (``current_worker_task``)."""

    def __init__(
        self, task_id: str, root_id: str | None = None, priority: int | None = None
    ) -> None:
        from celery._state import _task_stack

        from conversations.tasks import reply_publish

        self.stack, self.task = _task_stack, reply_publish
        self.request = {
            "id": task_id,
            "root_id": root_id,
            "called_directly": False,
            "delivery_info": {"priority": priority},
        }

    def __enter__(self) -> list[Any]:
        self.task.push_request(**self.request, children=[])
        self.stack.push(self.task)
        assert app.current_worker_task is self.task
        return self.task.request.children

    def __exit__(self, *_: object) -> None:
        self.stack.pop()
        self.task.pop_request()


@needs_redis
def test_from_inside_a_task_the_messages_name_it_as_apply_async_does() -> None:
    """Its root and parent ids, templated (kept across tasks) or not, and the
    first step's result in the task's trail."""
    from conversations.models import Message
    from conversations.routes import reply_chain

    chains = [lambda n=n: reply_chain(Message(pk=f"pk-{n}")) for n in range(3)]
    headers = [{"x_correlation_id": f"c-{n}"} for n in range(3)]
    cache = PublishCache()
    for parent, root in (("task-1", None), ("task-2", "root-2"), ("task-3", None)):
        with _InTask(parent, root):
            ref, ours = _batch_both(chains, headers, "ai")
        assert len(ours) == 3 and ours == ref
        assert {(m["headers"]["root_id"], m["headers"]["parent_id"]) for m in ours} == {
            (root or parent, parent)
        }
        trail: list[Any] = []

        def fast(
            conn: Any, parent: str = parent, root: str | None = root, trail=trail
        ) -> None:
            with _InTask(parent, root) as children, app.amqp.Producer(conn) as p:
                publish_many(
                    [(c(), h) for c, h in zip(chains, headers, strict=True)],
                    producer=p,
                    cache=cache,  # one template for the three tasks
                )
                trail.extend(children)

        prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
        sent = _published(fast, "ai", _redis(prefix))
        assert [m["headers"]["parent_id"] for m in sent] == [parent] * 3
        assert [m["headers"]["root_id"] for m in sent] == [root or parent] * 3
        # the trail holds each chain's first step (what apply_async adds)
        assert sorted(r.id for r in trail) == sorted(m["headers"]["id"] for m in sent)
    assert len(cache._templates) == 1


def test_a_priority_handed_down_from_the_task_goes_through_apply_async() -> None:
    app.conf.task_inherit_parent_priority = True
    try:
        with _InTask("task-1", priority=3):
            # a single task: a chain's apply_async sends its first step on a
            # producer of its own, not on the one given (celery's _chain.run)
            ref, ours, _, _ = _both(lambda: _reply_chain().tasks[0].clone())
    finally:
        app.conf.task_inherit_parent_priority = False
    assert ours == ref and ours["headers"]["parent_id"] == "task-1"
    assert ours["properties"]["priority"] == 3


@needs_redis
def test_a_kept_cache_sends_what_apply_async_sends_from_each_thread_and_context() -> (
    None
):
    """Templates kept across calls (PublishCache) still give each message the
    reply_to of the thread that publishes it and, without a correlation
    header of its own, the id current in that call (what apply_async does)."""
    from conversations.tasks import reply_generate

    prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
    cache = PublishCache()

    def signature() -> Signature:
        return reply_generate.si("pk-1").set(queue="default")

    def both(conn: Any, cid: str, headers: dict) -> None:
        token = correlation.activate(cid)
        try:
            signature().apply_async(headers=dict(headers), retry=False, connection=conn)
            with app.amqp.Producer(conn) as producer:
                publish_many([(signature(), headers)], producer=producer, cache=cache)
        finally:
            correlation.deactivate(token)

    def publish(conn: Any) -> None:
        both(conn, "first", {})
        both(conn, "second", {})  # the template is kept: a new id all the same
        both(conn, "third", {"x_correlation_id": "own"})
        elsewhere = threading.Thread(target=both, args=(conn, "fourth", {}))
        elsewhere.start()
        elsewhere.join()

    messages = _published(publish, "default", _redis(prefix))
    assert len(messages) == 8
    # kept: the message with a header, in each thread that had one
    assert [len(t) for t in cache._templates.values()] == [1, 0]
    ref, ours = messages[0::2], messages[1::2]
    assert [_normal(m)[0] for m in ours] == [_normal(m)[0] for m in ref]
    assert [m["headers"]["x_correlation_id"] for m in ours] == [
        "first",
        "second",
        "own",
        "fourth",
    ]
    replies = [m["properties"]["reply_to"] for m in ours]
    assert replies == [m["properties"]["reply_to"] for m in ref]
    assert replies[0] == replies[1] == replies[2] != replies[3]


@needs_redis
def test_templated_messages_are_in_redis_when_publish_many_returns() -> None:
    from conversations.models import Message
    from conversations.routes import reply_chain

    prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
    with _redis(prefix) as conn:
        with app.amqp.Producer(conn) as producer, producer.batch(max_size=64):
            publish_many(
                [(reply_chain(Message(pk=f"pk-{n}")), {}) for n in range(5)],
                producer=producer,
            )
            # the producer's batch is not flushed yet: the templated LPUSH is
            # publish_many's own
            client = conn.default_channel.client
            assert client.llen("ai") == 5


@needs_redis
def test_a_foreign_publish_hook_sees_every_message() -> None:
    from conversations.models import Message
    from conversations.routes import reply_chain

    counter = itertools.count(1)

    def number(headers: dict | None = None, **_: Any) -> None:
        if headers is not None:
            headers["x_number"] = next(counter)

    before_task_publish.connect(number, weak=False)
    try:
        prefix = f"vocoeng-test-{uuid.uuid4().hex[:8]}-"
        ours = _published(
            lambda conn: publish_many(
                [(reply_chain(Message(pk=f"pk-{n}")), {}) for n in range(3)],
                producer=app.amqp.Producer(conn),
            ),
            "ai",
            _redis(prefix),
        )
    finally:
        before_task_publish.disconnect(number)
    assert [m["headers"]["x_number"] for m in ours] == [1, 2, 3]


def _reply_chain() -> Signature:
    from conversations.tasks import reply_deliver, reply_generate, reply_publish

    return chain(reply_generate.si("pk-1"), reply_publish.s(), reply_deliver.s())


def test_a_chain_is_the_message_apply_async_sends() -> None:
    ref, ours, raw_ids, task_id = _both(_reply_chain)

    assert ours == ref  # same headers, properties and body, chain included
    assert [step["task"] for step in ours["body"][2]["chain"]] == [
        "conversations.reply_deliver",
        "conversations.reply_publish",
    ]
    assert ours["headers"]["x_correlation_id"] == "c-1"
    # apply_async().id of a chain is its last step's
    last = ours["body"][2]["chain"][0]["options"]["task_id"]  # "<idN>"
    assert raw_ids[int(last[3:-1])] == task_id


def test_the_routes_reply_chain_is_the_same_message() -> None:
    from conversations.models import Message
    from conversations.routes import reply_chain

    ref, ours, _, _ = _both(_reply_chain)
    # reply_chain builds its steps by name, without chain()'s folding
    _, built, _, _ = _both(lambda: reply_chain(Message(pk="pk-1")))
    assert built == ref == ours


def test_a_single_task_with_a_queue_option_is_the_same_message() -> None:
    from conversations.tasks import reply_generate

    ref, ours, _, _ = _both(
        lambda: reply_generate.si("pk-2").set(queue="default"),
        queue="default",
    )
    assert ours == ref


def test_a_task_this_process_does_not_know_is_sent_by_name() -> None:
    ref, ours, _, _ = _both(
        lambda: app.signature("elsewhere.task", args=("x",), queue="ai")
    )
    assert ours == ref


def test_long_arguments_get_celerys_truncated_argsrepr() -> None:
    from conversations.tasks import reply_generate

    ref, ours, _, _ = _both(lambda: reply_generate.si("x" * 5000))
    assert ours == ref
    assert len(ours["headers"]["argsrepr"]) < 5000


@pytest.mark.parametrize(
    "options",
    [{"argsrepr": "(1 message)"}, {"argsrepr": "(hidden)", "kwargsrepr": "{...}"}],
)
def test_a_given_argsrepr_is_sent_as_apply_async_sends_it(options) -> None:
    from conversations.tasks import reply_generate

    ref, ours, _, _ = _both(lambda: reply_generate.si("pk-secret").set(**options))
    assert ours == ref
    assert ours["headers"]["argsrepr"] == options["argsrepr"]
    assert ours["properties"]["argsrepr"] == options["argsrepr"]


def test_other_canvases_go_through_apply_async() -> None:
    from conversations.tasks import reply_generate

    ref, ours, _, _ = _both(
        lambda: reply_generate.si("pk-3").set(countdown=30), queue="ai"
    )
    assert ours["headers"]["eta"] is not None  # apply_async honoured countdown
    assert ours.keys() == ref.keys()

    def two(conn: Any) -> None:
        with app.amqp.Producer(conn) as producer:
            publish_many(
                [(group(reply_generate.si("a"), reply_generate.si("b")), {})],
                producer=producer,
            )

    assert len(_published(two, "ai")) == 2


def test_uuids_are_distinct_version_4_ids() -> None:
    ids = uuids(1000)
    assert len(set(ids)) == 1000
    assert all(UUID.fullmatch(i) and i[14] == "4" and i[19] in "89ab" for i in ids)


@pytest.mark.timeout(120)
def test_a_real_worker_runs_chains_published_in_a_batch(celery_worker_factory) -> None:
    from conversations.models import Message
    from conversations.routes import inbound_store_many, reply_chain
    from vocoeng.services import tenant_get_default

    tenant = tenant_get_default()
    stored = inbound_store_many(
        entries=[
            {
                "tenant": tenant,
                "channel": "api",
                "user_id": f"u-{n}",
                "text": f"hello {n}",
                "external_id": f"batch-{n}",
                "metadata": {},
            }
            for n in range(3)
        ]
    )
    worker = celery_worker_factory()
    with app.producer_or_acquire() as producer, producer.batch(max_size=64) as batch:
        publish_many(
            [(reply_chain(m), {"x_correlation_id": f"c-{m.pk}"}) for m in stored],
            producer=producer,
        )
        batch.flush()

    delivered = Message.objects.filter(role="assistant", status="delivered")
    wait_for(lambda: delivered.count() == 3, timeout=60)
    for message in stored:
        message.refresh_from_db()
        assert message.reply.status == Message.Status.DELIVERED
    for task in ("reply_generate", "reply_publish", "reply_deliver"):
        logged = re.findall(
            rf"task_started task=conversations\.{task} id=\S+ correlation_id=(\S+)",
            worker.output(),
        )
        assert sorted(logged) == sorted(f"c-{m.pk}" for m in stored)
