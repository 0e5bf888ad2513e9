from __future__ import annotations

from vocoeng.celery import app


def test_registered_task_names_are_stable() -> None:
    """Renaming a task strands messages already queued under the old name."""
    app.loader.import_default_modules()
    ours = sorted(name for name in app.tasks if name.startswith("conversations."))
    assert ours == [
        "conversations.reply_deliver",
        "conversations.reply_generate",
        "conversations.reply_publish",
    ]


def test_ai_task_runs_late_acked_on_the_ai_queue() -> None:
    task = app.tasks["conversations.reply_generate"]
    assert app.amqp.router.route({}, task.name, task_type=task)["queue"].name == "ai"
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
