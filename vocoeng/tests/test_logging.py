"""JSON logs and correlation ids: one id follows a message from web to delivery."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from conftest import database_url, fake_ai_env, purge_queues, wait_for
from conversations.models import Message
from vocoeng import correlation
from vocoeng.celery import app
from vocoeng.logging_setup import ConsoleFormatter, ContextFilter, JsonFormatter
from vocoeng.queues import Queue
from vocoeng.services import api_key_create, tenant_get_default
from vocoeng.testing.fake_graph import FakeGraphServer
from vocoeng.testing.web import WebProcess
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p

pytestmark = [pytest.mark.timeout(120)]

CHAIN = {
    "conversations.reply_generate",
    "conversations.reply_publish",
    "conversations.reply_deliver",
}
USER = "15550002222"


@pytest.fixture
def web_log() -> Iterator[io.StringIO]:
    """Capture this process's log records as the web writes them (LOG_FORMAT=json)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    yield stream
    root.removeHandler(handler)
    root.level = level


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_correlation_id_follows_a_webhook_through_the_worker_in_json(
    settings, celery_worker_factory, fake_ai_server, web_log, client
) -> None:
    secrets = {
        "app_secret": p.APP_SECRET,
        "access_token": f"EAAG-obs-{uuid.uuid4().hex}",
        "openai_key": f"sk-obs-{uuid.uuid4().hex}",
    }
    body = f"my account number is {uuid.uuid4().hex}, please help"
    settings.WHATSAPP_APP_SECRET = p.APP_SECRET
    settings.BUS = "direct"
    settings.AI_USER_RATE_LIMIT = "0"
    fake_ai_server.reset()
    with FakeGraphServer() as graph:
        worker = celery_worker_factory(
            env={
                **fake_ai_env(fake_ai_server),
                "OPENAI_API_KEY": secrets["openai_key"],
                "WHATSAPP_APP_SECRET": p.APP_SECRET,
                "WHATSAPP_API_BASE": graph.base_url + "/v21.0",
                "WHATSAPP_ACCESS_TOKEN": secrets["access_token"],
                "LOG_FORMAT": "json",
            }
        )
        cid = f"req-{uuid.uuid4().hex}"
        raw, signature = p.signed(p.notification([p.text(USER, body)]))
        response = client.post(
            "/webhooks/whatsapp/",
            data=raw,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=signature,
            HTTP_X_REQUEST_ID=cid,
        )
        assert response.status_code == 200
        assert response["X-Request-ID"] == cid
        web_text = web_log.getvalue()
        wait_for(lambda: graph.sent_texts(), timeout=60)
        reply = wait_for(
            lambda: Message.objects.filter(role="assistant", status="sent").first()
        )
        wait_for(lambda: "reply_delivered" in worker.output())
        wait_for(lambda: "conversations.reply_deliver[" in worker.output())

    delivery = WebhookDelivery.objects.get()
    assert delivery.headers["X-Request-Id"] == cid
    inbound = reply.reply_to
    assert inbound is not None and body in inbound.content
    assert body in reply.content  # the fake model echoes: the reply holds it too

    # Web side: every record of the request is JSON and carries the id.
    web = _json_lines(web_text)
    assert len(web) == len(web_text.splitlines())
    assert any(r["message"].startswith("webhook_accepted") for r in web)
    for record in web:
        assert record["correlation_id"] == cid, record
        assert {"timestamp", "level", "logger", "message"} <= record.keys()

    # Worker side: every line that names the id is a JSON record, and every
    # record of the chain's tasks or about its messages carries the id.
    out = worker.output()
    for line in out.splitlines():
        if cid in line:
            json.loads(line)
    ids = (str(inbound.pk), str(reply.pk))
    records = _json_lines(out)
    chain = [
        r
        for r in records
        # Celery's "received" line is logged by the consumer before the
        # task's headers are read: the task id is there, no context yet.
        if r["logger"] != "celery.worker.strategy"
        and (r.get("task_name") in CHAIN or any(i in r["message"] for i in ids))
    ]
    for record in chain:
        assert record.get("correlation_id") == cid, record
        assert record.get("role") == "worker", record
    assert {r["task_name"] for r in chain} == CHAIN
    messages = [r["message"] for r in chain]
    assert any(m.startswith("reply_generated ") for m in messages)  # the model call
    assert any(m.startswith("reply_delivered ") for m in messages)
    assert sum(m.startswith("task_started ") for m in messages) == 3

    # Nothing secret and no message text in the logs of the journey.
    for text in (web_text, out):
        for name, secret in secrets.items():
            assert secret not in text, name
        assert body not in text
        assert reply.content not in text


def test_request_without_an_id_gets_a_new_one_in_its_logs_and_response(
    web_log, client, db
) -> None:
    response = client.post(
        "/process",
        data=json.dumps({"source": "api", "user_id": "u-1", "message": "Hello there"}),
        content_type="application/json",
    )
    assert response.status_code == 200
    cid = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", cid)
    records = _json_lines(web_log.getvalue())
    assert records
    assert all(r.get("correlation_id") == cid for r in records)
    assert client.get("/health")["X-Request-ID"] not in ("", cid)


@pytest.mark.parametrize(
    "given",
    ["has space", "line\nbreak", "x" * 129, "", "<script>", "-leading-dash"],
)
def test_malformed_incoming_id_is_replaced(client, given: str) -> None:
    response = client.get("/health", HTTP_X_REQUEST_ID=given)
    assert response["X-Request-ID"] != given
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_x_correlation_id_is_accepted_when_no_request_id(client) -> None:
    response = client.get("/health", HTTP_X_CORRELATION_ID="trace-42.a:b")
    assert response["X-Request-ID"] == "trace-42.a:b"


def test_tasks_enqueued_after_commit_carry_the_request_id(transactional_db) -> None:
    purge_queues()
    _, key = api_key_create(tenant=tenant_get_default(), name="logging")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = api.post(
        "/api/v1/runs/",
        {"idea": "A bakery that delivers by bike"},
        format="json",
        HTTP_X_REQUEST_ID="run-req-1",
    )
    assert response.status_code == 201, response.content
    assert response["X-Request-ID"] == "run-req-1"
    try:
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue(Queue.AI.value)
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
        assert message.headers[correlation.HEADER] == "run-req-1"
        assert message.headers["task"] == "pipeline.expand"
    finally:
        purge_queues()


def test_json_records_keep_context_and_drop_celery_task_arguments() -> None:
    formatter, context = JsonFormatter(), ContextFilter()
    record = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, "Task %s ok", ("t",), None
    )
    record.data = {"args": "the customer's whole message"}
    token = correlation.activate("cid-1")
    try:
        context.filter(record)
    finally:
        correlation.deactivate(token)
    line = formatter.format(record)
    parsed = json.loads(line)
    assert list(parsed)[:4] == ["timestamp", "level", "logger", "message"]
    assert parsed["message"] == "Task t ok"
    assert parsed["correlation_id"] == "cid-1"
    assert "whole message" not in line


def test_json_records_orjson_refuses_are_written_all_the_same() -> None:
    """A lone surrogate or a 65-bit integer: orjson raises; the line still comes."""
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "body %s", ("caf\udce9",), None
    )
    record.big = 2**70
    record.when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    parsed = json.loads(formatter.format(record))
    assert parsed["message"] == "body caf\udce9"
    assert parsed["big"] == 2**70
    assert parsed["when"] == "2026-01-02T03:04:05+00:00"
    assert list(parsed)[:4] == ["timestamp", "level", "logger", "message"]


def test_json_records_encode_what_the_json_module_did() -> None:
    """UTF-8 kept as is, dates as ISO 8601, exceptions as text, odd objects as str."""
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "héllo %s", ("wörld",), sys.exc_info()
        )
    record.day = datetime.date(2026, 11, 23)
    record.ident = uuid.UUID(int=1)
    record.thing = object()
    line = formatter.format(record)
    assert "héllo wörld" in line  # not \\u escapes
    parsed = json.loads(line)
    assert parsed["day"] == "2026-11-23"
    assert parsed["ident"] == "00000000-0000-0000-0000-000000000001"
    assert parsed["thing"].startswith("<object object at")
    assert "ValueError: boom" in parsed["exc_info"]
    assert parsed["timestamp"].endswith("+00:00")


def test_json_lines_hold_what_python_json_logger_writes() -> None:
    """The one-pass format gives the fields and values of the library's path."""
    from pythonjsonlogger.core import BaseJsonFormatter

    formatter, context = JsonFormatter(), ContextFilter()
    try:
        raise KeyError("k")
    except KeyError:
        record = logging.LogRecord(
            "webhooks.bridge",
            logging.WARNING,
            __file__,
            7,
            "a %s b %d",
            ("x", 3),
            sys.exc_info(),
            func="f",
            sinfo="Stack (most recent call last)",
        )
    record.correlation_id, record.task_id, record.data = "c-1", "t-1", {"args": 1}
    record._private = "not written"
    token = correlation.activate("c-2")
    try:
        context.filter(record)
    finally:
        correlation.deactivate(token)
    fast = json.loads(formatter.format(record))
    general = json.loads(BaseJsonFormatter.format(formatter, record))
    assert fast == general
    assert list(fast)[:4] == ["timestamp", "level", "logger", "message"]
    assert fast["correlation_id"] == "c-1" and "_private" not in fast
    assert "data" not in fast and "KeyError" in fast["exc_info"]


def test_console_lines_end_with_the_correlation_id() -> None:
    formatter, context = ConsoleFormatter(), ContextFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    token = correlation.activate("cid-2")
    try:
        context.filter(record)
    finally:
        correlation.deactivate(token)
    assert formatter.format(record).endswith("INFO x: hello [cid=cid-2]")
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    ContextFilter().filter(plain)
    assert formatter.format(plain).endswith("INFO x: hello")


def test_gunicorn_from_the_procfile_writes_json_lines_without_query_strings(
    transactional_db,
) -> None:
    secret = f"verify-{uuid.uuid4().hex}"
    web = WebProcess(
        env={
            "LOG_FORMAT": "json",
            "DATABASE_URL": database_url(),
            "WHATSAPP_VERIFY_TOKEN": secret,
        },
    ).start()
    try:
        query = urllib.parse.urlencode(
            {"hub.mode": "subscribe", "hub.verify_token": secret, "hub.challenge": "c1"}
        )
        request = urllib.request.Request(
            f"{web.url}/webhooks/whatsapp/?{query}",
            headers={"X-Request-ID": "gunicorn-1"},
        )

        def answered() -> Any:
            try:
                return urllib.request.urlopen(request, timeout=5)
            except OSError:
                return None

        response = wait_for(answered, timeout=30)
        assert response.read() == b"c1"
        assert response.headers["X-Request-ID"] == "gunicorn-1"
        wait_for(lambda: "gunicorn.access" in web.output())
    finally:
        web.stop()
    out = web.output()
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert len(access) == 1
    assert access[0]["correlation_id"] == "gunicorn-1"
    assert access[0]["role"] == "web"
    assert '"GET /webhooks/whatsapp/ HTTP/1.1" 200' in access[0]["message"]
    assert any(r["logger"] == "gunicorn.error" for r in records)
    assert all(r.get("role") == "web" for r in records)
    assert secret not in out


def test_bridge_command_logs_json_with_its_role_and_message_ids(
    settings, pubsub_settings, transactional_db
) -> None:
    from vocoeng import pubsub
    from webhooks.bridge.testing import BridgeProcess

    call_command("pubsub_setup", stdout=io.StringIO())
    env = {**pubsub_settings, "DATABASE_URL": database_url(), "LOG_FORMAT": "json"}
    bridge = BridgeProcess(
        "--subscription", settings.PUBSUB_SUBSCRIPTION_MESSAGES, env=env
    ).start()
    try:
        body = json.dumps(
            {"source": "api", "user_id": "u1", "message": "bridge secret text"}
        ).encode()
        message_id = pubsub.publish_async(
            topic=settings.PUBSUB_TOPIC_MESSAGES,
            data=body,
            attributes={"kind": "chat_message", "correlation_id": "from-publisher"},
        ).result(timeout=30)
        wait_for(lambda: bridge.count("enqueued") == 1)
    finally:
        bridge.stop()
        purge_queues()
    out = bridge.output()
    lines = [line for line in out.splitlines() if "bridge_message" in line]
    records = [json.loads(line) for line in lines]
    assert {r["message"].split()[1] for r in records} >= {
        "event=received",
        "event=enqueued",
    }
    for record in records:
        assert record["role"] == "bridge"
        assert f"message_id={message_id}" in record["message"]
        assert "correlation_id=from-publisher" in record["message"]
        assert record["correlation_id"] == "from-publisher"  # a field, for jq
    assert "bridge secret text" not in out


def test_a_gunicorn_worker_keeps_the_loaded_app_out_of_the_gc() -> None:
    import gc

    from vocoeng import logging_gunicorn

    gc.unfreeze()
    try:
        logging_gunicorn.post_worker_init(object())
        assert gc.get_freeze_count() > 10_000  # Django, the apps, pytest
    finally:
        gc.unfreeze()


def test_a_process_without_a_role_reads_its_command_line_once(monkeypatch) -> None:
    from vocoeng import logging_setup

    monkeypatch.setattr(logging_setup, "_role", None)
    monkeypatch.setattr(logging_setup, "_guessed", False)
    monkeypatch.delenv("VOCOENG_PROCESS_ROLE", raising=False)
    reads = []
    monkeypatch.setattr(
        logging_setup, "_role_from_argv", lambda argv: reads.append(argv)
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    for _ in range(3):
        assert ContextFilter().filter(record)
    assert len(reads) == 1 and not hasattr(record, "role")
    logging_setup.role_default("web")  # a role named later still counts
    assert logging_setup.role_get() == "web"
