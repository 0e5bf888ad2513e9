"""Snapshot the registered Celery task names and their queues.

Renaming a task strands the messages already queued under the old name, and
moving one to another queue strands it on workers that do not consume that
queue (the Procfile's process types): both must be deliberate.
"""

from __future__ import annotations

from vocoeng.celery import app
from vocoeng.queues import Queue


def test_task_names_and_queues_are_stable() -> None:
    app.loader.import_default_modules()
    ours = {
        name: app.tasks[name].route
        for name in app.tasks
        if not name.startswith("celery.")
    }
    assert ours == {
        "analytics.ingest_batch": Queue.ANALYTICS,
        "conversations.reply_deliver": Queue.DEFAULT,
        "conversations.reply_generate": Queue.AI,
        "conversations.reply_publish": Queue.DEFAULT,
        "pipeline.aggregate": Queue.AI,
        "pipeline.expand": Queue.AI,
        "pipeline.reap": Queue.DEFAULT,
        "pipeline.review": Queue.AI,
        "webhooks.claims_prune": Queue.DEFAULT,
        "webhooks.deliveries_process": Queue.DEFAULT,
        "webhooks.deliveries_sweep": Queue.DEFAULT,
        "webhooks.delivery_process": Queue.DEFAULT,
    }


def test_the_router_sends_each_task_to_its_queue() -> None:
    app.loader.import_default_modules()
    router = app.amqp.router
    for name, task in app.tasks.items():
        if not name.startswith("celery."):
            assert router.route({}, name, task_type=task)["queue"].name == task.route
    # An explicit queue at the call still wins.
    task = app.tasks["conversations.reply_generate"]
    chosen = router.route({"queue": "default"}, task.name, task_type=task)
    assert chosen["queue"].name == "default"


def test_every_task_acks_late() -> None:
    app.loader.import_default_modules()
    for name, task in app.tasks.items():
        if not name.startswith("celery."):
            assert task.acks_late, name


def test_procfile_serves_every_queue() -> None:
    from pathlib import Path

    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    served = set()
    for line in procfile.splitlines():
        if " worker " in line and "-Q " in line:
            served |= set(line.split("-Q ", 1)[1].split()[0].split(","))
    assert served == {q.value for q in Queue}
