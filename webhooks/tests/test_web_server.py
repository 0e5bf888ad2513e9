"""The web process as the Procfile runs it: gunicorn's worker classes.

On PostgreSQL the web workers are gevent's (vocoeng.gunicorn_config): these
tests run the Procfile's ``web`` line and check what that worker must keep
doing. A request that waits on PostgreSQL or on Pub/Sub must not stop the
worker's other requests (psycopg and gRPC waiting through gevent, not in C);
concurrent webhooks must each be stored and queued once (one database
connection per request, not one shared by every greenlet); the worker class
given on the command line must agree with the one the config prepared for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from conftest import database_url, fake_ai_env, purge_queues
from vocoeng.testing.process import ROOT, free_port
from vocoeng.testing.web import WebProcess
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads as p
from webhooks.tests.conftest import deliveries_taken

pytestmark = pytest.mark.django_db(transaction=True)

postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="gevent is the web worker on PostgreSQL (WEB_WORKER_CLASS=auto)",
)
VERIFY = "verify-web-server"


def web_env(**extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url(),
        "WHATSAPP_APP_SECRET": p.APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY,
        "AI_USER_RATE_LIMIT": "0",
        "BUS": "direct",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture
def web() -> Iterator[list[WebProcess]]:
    """Collect the web processes a test starts; stop them at its end."""
    started: list[WebProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start(web: list[WebProcess], **env: str) -> WebProcess:
    proc = WebProcess(env=web_env(**env))
    web.append(proc)
    return proc.start()


def handshake(proc: WebProcess, timeout: float = 30) -> tuple[bytes, float]:
    """GET Meta's verification handshake; return the body and the seconds taken."""
    query = urllib.parse.urlencode(
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "c"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(
        f"{proc.url}/webhooks/whatsapp/?{query}", timeout=timeout
    ) as response:
        return response.read(), time.monotonic() - started


def post(proc: WebProcess, path: str, raw: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"{proc.url}{path}",
        data=raw,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def post_webhook(proc: WebProcess, body: dict) -> int:
    raw, sig = p.signed(body)
    return post(proc, "/webhooks/whatsapp/", raw, {"X-Hub-Signature-256": sig})


GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:vocoeng.gunicorn_config"]


def gunicorn_config(*args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """Run gunicorn with the web config and ``args`` (which make it exit);
    a variable given as None is left out of its environment."""
    environ = {**os.environ, **env}
    return subprocess.run(
        [*GUNICORN, "vocoeng.wsgi", *args],
        cwd=ROOT,
        env={k: v for k, v in environ.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=60,
    )


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Return the settings ``gunicorn --print-config`` printed."""
    assert result.returncode == 0, result.stdout + result.stderr
    pairs = (line.partition(" = ") for line in result.stdout.splitlines())
    return {k.strip(): v.strip() for k, sep, v in pairs if sep}


PG, SQLITE = "postgres://u@db:5432/v", "sqlite:////tmp/v.sqlite3"


@pytest.mark.parametrize(
    ("database", "chosen", "worker_class"),
    [
        (PG, "", "gevent"),
        ("postgresql://u@db/v", "auto", "gevent"),
        (SQLITE, "", "gthread"),
        (None, "", "gthread"),  # unset: the embedded SQLite default
        (PG, "gthread", "gthread"),
        (SQLITE, "GEVENT", "gevent"),
    ],
)
def test_the_worker_class_follows_web_worker_class_and_the_database(
    database: str | None, chosen: str, worker_class: str
) -> None:
    env = {"DATABASE_URL": database, "WEB_WORKER_CLASS": chosen}
    settings = printed(gunicorn_config("--print-config", **env))
    assert settings["worker_class"] == worker_class
    assert settings["worker_connections"] == "100"
    assert settings["threads"] == "8"


def test_worker_connections_and_threads_come_from_the_environment() -> None:
    settings = printed(
        gunicorn_config("--print-config", WEB_WORKER_CONNECTIONS="250", WEB_THREADS="4")
    )
    assert (settings["worker_connections"], settings["threads"]) == ("250", "4")


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"WEB_WORKER_CLASS": "eventlet"}, "WEB_WORKER_CLASS='eventlet': use auto"),
        ({"WEB_WORKER_CONNECTIONS": "0"}, "WEB_WORKER_CONNECTIONS='0'"),
        ({"WEB_THREADS": "many"}, "WEB_THREADS='many'"),
    ],
)
def test_a_bad_setting_stops_gunicorn_with_the_reason(
    env: dict[str, str], reason: str
) -> None:
    result = gunicorn_config("--print-config", **env)
    assert result.returncode != 0
    assert reason in result.stderr


@pytest.mark.parametrize(
    ("prepared", "given", "named"),
    [("gevent", "gthread", "ThreadWorker"), ("gthread", "gevent", "GeventWorker")],
)
def test_a_worker_class_given_with_k_that_disagrees_stops_gunicorn_at_start(
    prepared: str, given: str, named: str
) -> None:
    result = gunicorn_config(
        "-k", given, "--bind", f"127.0.0.1:{free_port()}", WEB_WORKER_CLASS=prepared
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"the worker class is {named}" in out
    assert f"prepared this process for {prepared}" in out
    assert "Booting worker" not in out


def wamid(body: str) -> str:
    """Return the wamid of a recorded one-message WhatsApp delivery."""
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    return value["messages"][0]["id"]


@pytest.mark.parametrize(
    "worker_class", [pytest.param("gevent", marks=postgres), "gthread"]
)
def test_concurrent_webhooks_are_each_stored_and_queued_once(
    web: list[WebProcess], worker_class: str
) -> None:
    purge_queues()
    proc = start(web, WEB_WORKER_CLASS=worker_class)
    bodies = [
        p.notification([p.text(f"+1555{n:04d}", f"hello {n}")]) for n in range(60)
    ]
    statuses: list[int] = []
    lock = threading.Lock()

    def send(chunk: list[dict]) -> None:
        for body in chunk:
            status = post_webhook(proc, body)
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=send, args=(bodies[i::20],)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 60, proc.output()[-3000:]
    rows = list(WebhookDelivery.objects.values_list("pk", "body"))
    assert len(rows) == 60
    assert len({wamid(body) for _, body in rows}) == 60
    ids = [delivery for delivery, _ in deliveries_taken(expected=60)]
    assert sorted(ids) == sorted(str(pk) for pk, _ in rows)
    assert "Traceback" not in proc.output()


@postgres
def test_a_request_waiting_on_postgresql_leaves_the_worker_answering(
    web: list[WebProcess],
) -> None:
    """A webhook whose INSERT waits on a lock in PostgreSQL, and meanwhile
    the handshake of the same worker answers: psycopg waits through gevent."""
    purge_queues()
    proc = start(web)  # auto: gevent on PostgreSQL
    assert handshake(proc)[0] == b"c"  # the app is loaded
    table = WebhookDelivery._meta.db_table
    with psycopg.connect(database_url()) as locker:
        locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        status: list[int] = []
        sender = threading.Thread(
            target=lambda: status.append(
                post_webhook(proc, p.notification([p.text("+15550001", "hi")]))
            )
        )
        sender.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_lock(table) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_on_lock(table), "the webhook's INSERT never waited"
        body, seconds = handshake(proc, timeout=10)
        assert body == b"c"
        assert seconds < 2.0, f"the handshake waited {seconds:.1f} s for the INSERT"
        assert sender.is_alive() and not status  # still waiting on the lock
    sender.join(30)
    assert status == [200]
    assert WebhookDelivery.objects.count() == 1


def _waiting_on_lock(table: str) -> bool:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE %s",
            (f'%INSERT INTO "{table}"%',),
        ).fetchone()
    return bool(row and row[0])


class _BlackHole:
    """A TCP server that accepts connections and never answers: a Pub/Sub
    that has stopped responding."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@postgres
def test_a_publish_waiting_on_pubsub_leaves_the_worker_answering(
    web: list[WebProcess], fake_ai_server
) -> None:
    """``BUS=pubsub``: /process publishes the reply through gRPC to a
    Pub/Sub that never answers; the worker's handshake still answers at
    once, and the publish gives up after its timeout (503, retry)."""
    hole = _BlackHole()
    try:
        proc = start(
            web,
            BUS="pubsub",
            PUBSUB_EMULATOR_HOST=hole.address,
            PUBSUB_PROJECT_ID="web-server-test",
            PUBSUB_PUBLISH_TIMEOUT_SECONDS="4",
            **fake_ai_env(fake_ai_server),
        )
        assert handshake(proc)[0] == b"c"
        status: list[int] = []
        raw = json.dumps({"source": "api", "user_id": "u-hole", "message": "hi"})
        sender = threading.Thread(
            target=lambda: status.append(post(proc, "/process", raw.encode(), {}))
        )
        started = time.monotonic()
        sender.start()
        time.sleep(1.0)  # the reply is being published by now
        body, seconds = handshake(proc, timeout=10)
        assert body == b"c"
        assert seconds < 1.0, f"the handshake waited {seconds:.1f} s for gRPC"
        assert sender.is_alive(), "the publish did not wait on Pub/Sub"
        sender.join(30)
        assert status == [503]
        assert time.monotonic() - started >= 3.5
    finally:
        hole.close()
