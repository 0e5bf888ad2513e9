"""Celery task metrics from real workers, queue depths from the real broker."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from conftest import purge_queues, wait_for
from conversations.models import Message
from vocoeng.celery import app
from vocoeng.celery_metrics import QUEUE_DEPTH, QueueDepthCollector
from vocoeng.queues import Queue
from vocoeng.testing.fake_graph import FakeGraphServer
from vocoeng.testing.process import free_port
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.timeout(120)]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Return ``{(sample name, labels): value}`` of a Prometheus exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return samples(r.read().decode())


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_port_counts_success_failure_and_retry_of_real_tasks(
    settings, celery_worker_factory, tmp_path, client, monkeypatch, pool: str
) -> None:
    settings.WHATSAPP_APP_SECRET = p.APP_SECRET
    settings.BUS = "direct"
    settings.AI_USER_RATE_LIMIT = "0"
    port = free_port()
    # The echo model: a prefork child would spend seconds importing the SDKs.
    env = {"AI_PROVIDER": "echo", "CELERY_METRICS_PORT": str(port)}
    if pool == "prefork":
        # The children count; the main process serves what they wrote.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    with FakeGraphServer() as graph:
        graph.enqueue_fault("429", retry_after=0.2)  # one retry of reply_deliver
        worker = celery_worker_factory(
            pool=pool,
            concurrency=2,
            env={
                **env,
                "WHATSAPP_APP_SECRET": p.APP_SECRET,
                "WHATSAPP_API_BASE": graph.base_url + "/v21.0",
                "WHATSAPP_ACCESS_TOKEN": "test-token",
            },
        )
        raw, signature = p.signed(p.notification([p.text("15550003333", "hi")]))
        response = client.post(
            "/webhooks/whatsapp/",
            data=raw,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=signature,
        )
        assert response.status_code == 200
        wait_for(lambda: Message.objects.filter(role="assistant", status="sent"))
        # A task that fails for good: there is no such message.
        app.send_task("conversations.reply_generate", args=[str(uuid.uuid4())])
        wait_for(lambda: " raised unexpected: DoesNotExist" in worker.output())

        def settled() -> dict | None:
            m = scrape(port)
            deliver = {"task": "conversations.reply_deliver"}
            done = value(m, "vocoeng_celery_task_succeeded_total", **deliver) == 1
            return m if done else None

        metrics = wait_for(settled, timeout=40)
    generate = {"task": "conversations.reply_generate"}
    deliver = {"task": "conversations.reply_deliver"}
    publish = {"task": "conversations.reply_publish"}
    assert value(metrics, "vocoeng_celery_task_succeeded_total", **generate) == 1
    assert value(metrics, "vocoeng_celery_task_succeeded_total", **publish) == 1
    assert value(metrics, "vocoeng_celery_task_retried_total", **deliver) == 1
    assert value(metrics, "vocoeng_celery_task_retried_total", **generate) == 0
    failed = "vocoeng_celery_task_failed_total"
    assert value(metrics, failed, exception="DoesNotExist", **generate) == 1
    assert value(metrics, failed, exception="DoesNotExist", **deliver) == 0
    # Every run is timed: generate twice (one failed), deliver twice (one retry).
    runs = "vocoeng_celery_task_runtime_seconds_count"
    assert value(metrics, runs, **generate) == 2
    assert value(metrics, runs, **deliver) == 2
    assert value(metrics, runs, **publish) == 1
    assert value(metrics, "vocoeng_celery_task_runtime_seconds_sum", **deliver) > 0
    if pool == "prefork":
        # One host: the web shares the folder and its /metrics shows the same.
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
        web = samples(client.get("/metrics").content.decode())
        for name in (
            "vocoeng_celery_task_succeeded_total",
            "vocoeng_celery_task_retried_total",
            "vocoeng_celery_task_failed_total",
            "vocoeng_celery_task_runtime_seconds_count",
        ):
            ours = {k: v for k, v in metrics.items() if k[0] == name}
            assert ours and {k: v for k, v in web.items() if k[0] == name} == ours


def test_queue_depth_counts_messages_waiting_on_the_broker(client, settings) -> None:
    settings.CELERY_METRICS_QUEUE_CACHE_SECONDS = 60
    purge_queues()
    try:
        for _ in range(3):
            app.send_task("analytics.ingest_batch", args=[[]], queue=Queue.ANALYTICS)
        app.send_task("pipeline.reap", queue=Queue.DEFAULT)
        QUEUE_DEPTH.cache_clear()
        metrics = samples(client.get("/metrics").content.decode())
        depth = "vocoeng_celery_queue_depth"
        assert value(metrics, depth, queue="analytics") == 3
        assert value(metrics, depth, queue="default") == 1
        assert (depth, frozenset({("queue", "ai")})) in metrics  # empty, still shown
        assert value(metrics, depth, queue="ai") == 0
        assert value(metrics, "vocoeng_celery_broker_up") == 1

        # Within the cache period a scrape does not ask the broker again.
        app.send_task("analytics.ingest_batch", args=[[]], queue=Queue.ANALYTICS)
        metrics = samples(client.get("/metrics").content.decode())
        assert value(metrics, depth, queue="analytics") == 3
        QUEUE_DEPTH.cache_clear()
        metrics = samples(client.get("/metrics").content.decode())
        assert value(metrics, depth, queue="analytics") == 4
    finally:
        purge_queues()
        QUEUE_DEPTH.cache_clear()


def test_unreachable_broker_reports_down_instead_of_failing(
    settings, monkeypatch
) -> None:
    settings.CELERY_METRICS_QUEUE_CACHE_SECONDS = 0
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # it beats broker=
    closed = free_port()
    down = Celery(
        "down",
        broker=f"redis://127.0.0.1:{closed}/0",
        broker_connection_timeout=0.5,
        broker_connection_retry=False,
    )
    collector = QueueDepthCollector(app=down)
    families = {f.name: f for f in collector.collect()}
    assert families["vocoeng_celery_broker_up"].samples[0].value == 0
    assert families["vocoeng_celery_queue_depth"].samples == []
