"""Shared fixtures: a real Celery worker process, the loopback fake servers."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from vocoeng.testing.process import ChildProcess

if "PUBSUB_BRIDGE_DEDUP" not in os.environ:
    # The bus's dedup claims in the database (rows the tests can read), in
    # this process and the bridges and workers it starts, whatever the broker:
    # on a Redis broker they would default to Redis. The tests of the Redis
    # claims choose them themselves (webhooks/tests/test_claims_redis.py).
    os.environ["PUBSUB_BRIDGE_DEDUP"] = "database"
    from django.conf import settings as _settings

    _settings.PUBSUB_BRIDGE_DEDUP = "database"


def database_url() -> str:
    """Return a DATABASE_URL for the test database of this session."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    host = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    return f"postgres://{auth}@{host}/{s['NAME']}"


@pytest.fixture(autouse=True)
def _webhook_outbox_settled():
    """Let no test's webhook tasks land in another's broker queues.

    The hand-off's outbox publishes from a thread of its own, after the
    request: what a test left in it is published (or dropped, if the broker
    still refuses) before the next test begins, and at the end of each test.
    """
    from webhooks import handoff

    handoff.settle()
    yield
    handoff.settle()
    handoff.close()  # its own connection: none left open on the test database


def purge_queues() -> None:
    """Drop messages left in the broker's queues by an earlier run."""
    from vocoeng.celery import app
    from vocoeng.queues import Queue

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for q in Queue:
            try:
                channel.queue_purge(q.value)
            except Exception:  # noqa: S110 - a queue that never existed
                pass
        if hasattr(channel, "unacked_key"):
            # Redis: what earlier tests' workers left unacked (a worker stopped
            # cold or killed) would be restored into this test once a worker
            # with a short visibility timeout sweeps; so would a restore lock
            # (5 minutes) left by a worker killed mid-sweep.
            with channel.conn_or_acquire() as client:
                client.delete(
                    channel.unacked_key,
                    channel.unacked_index_key,
                    channel.unacked_mutex_key,
                )


class WorkerProcess(ChildProcess):
    """Run ``celery worker`` as a child process, the way users start it."""

    ready_marker = " ready."
    # The test has checked what it needed by the time it stops the worker, so
    # a cold shutdown (SIGQUIT) saves the seconds a warm one spends.
    stop_signal = signal.SIGQUIT
    stop_timeout = 20.0

    def __init__(
        self,
        *,
        queues: str = "default,ai,analytics",
        pool: str = "threads",
        concurrency: int = 8,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(env=env)
        self.queues, self.pool, self.concurrency = queues, pool, concurrency

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "DATABASE_URL": database_url(),
            **self.extra_env,
        }

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "vocoeng",
            "worker",
            "-Q",
            self.queues,
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-l",
            "info",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle",
            "--without-gossip",
        ]


@pytest.fixture(autouse=True)
def _channel_secrets_forgotten() -> None:
    """Start each test without the app secrets an earlier test's web requests
    kept: its channel rows were rolled back or flushed, which sends no signal."""
    from vocoeng.channels import app_secrets_forget

    app_secrets_forget()


@pytest.fixture
def celery_worker_factory(transactional_db: None) -> Iterator:
    """Start real worker processes on the test database and broker."""
    purge_queues()
    workers: list[WorkerProcess] = []

    def start(**kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(**kwargs).start()  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_for(predicate, timeout: float = 30, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator:
    """Run the Firestore emulator (npm package) for the session.

    Skips only where Node/npm are missing (a new user's machine may lack
    them); CI has Node and runs these tests.
    """
    from vocoeng.testing.firestore_emulator import (
        EmulatorUnavailable,
        FirestoreEmulator,
    )

    try:
        emulator = FirestoreEmulator().start()
    except EmulatorUnavailable as exc:
        pytest.skip(f"Firestore emulator unavailable: {exc.reason}")
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def fake_ai_server() -> Iterator:
    """Run the loopback OpenAI/Anthropic stand-in for the session."""
    from vocoeng.testing.fake_ai import FakeModelServer

    server = FakeModelServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_ai(fake_ai_server, settings) -> Iterator:
    """Point the providers at the fake model server: OpenAI first, then Anthropic.

    Retries back off briefly so fault tests stay fast.
    """
    fake_ai_server.reset()
    fake_ai_server.latency = 0.0
    settings.AI_PROVIDER = "openai"
    settings.AI_FALLBACK = ["anthropic"]
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = fake_ai_server.base_url
    settings.OPENAI_MODEL = "gpt-4o-mini"
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.ANTHROPIC_BASE_URL = fake_ai_server.anthropic_base_url
    settings.ANTHROPIC_MODEL = "claude-3-5-haiku-latest"
    settings.AI_RETRY_BACKOFF_SECONDS = 0.01
    settings.AI_TIMEOUT_SECONDS = 5.0
    yield fake_ai_server
    fake_ai_server.reset()


def fake_ai_env(server) -> dict[str, str]:
    """Return the environment that points a worker process at ``server``."""
    return {
        "AI_PROVIDER": "openai",
        "AI_FALLBACK": "anthropic",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": server.anthropic_base_url,
        "AI_RETRY_BACKOFF_SECONDS": "0.01",
    }


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator:
    """Run the in-repository Pub/Sub emulator (gRPC, loopback) for the session."""
    from vocoeng.pubsub_emulator import PubSubEmulator

    emulator = PubSubEmulator(host="127.0.0.1")
    emulator.start()
    yield emulator
    # Cached clients hold streams to it; drop them first so stop() is prompt.
    from vocoeng import pubsub

    pubsub.reset_clients()
    emulator.stop()


def pubsub_env(emulator, project: str = "vocoeng-test") -> dict[str, str]:
    """Return the environment that points a process (bridge, worker) at ``emulator``."""
    return {"PUBSUB_EMULATOR_HOST": emulator.address, "PUBSUB_PROJECT_ID": project}


@pytest.fixture
def pubsub_settings(pubsub_emulator, settings, monkeypatch) -> Iterator[dict[str, str]]:
    """Point settings and os.environ at the emulator, in a project of this test.

    Yields the environment for child processes (see ``pubsub_env``).
    """
    from vocoeng import pubsub

    env = pubsub_env(pubsub_emulator, project=f"t{uuid.uuid4().hex[:12]}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
        setattr(settings, name, value)
    pubsub.reset_clients()
    yield env
    pubsub.reset_clients()


def free_loopback_address() -> str:
    """Return ``127.0.0.1:<port>`` with nothing listening (connection refused)."""
    from vocoeng.testing.process import free_port

    return f"127.0.0.1:{free_port()}"


class PubSubOutage:
    """Point the Pub/Sub clients at an address nothing answers on, and back."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.reachable = settings.PUBSUB_EMULATOR_HOST

    def down(self, *, publish_timeout: float = 1.0, startup_wait: float = 1.0) -> str:
        from vocoeng import pubsub

        address = free_loopback_address()
        self.settings.PUBSUB_EMULATOR_HOST = address
        self.settings.PUBSUB_PUBLISH_TIMEOUT_SECONDS = publish_timeout
        self.settings.PUBSUB_STARTUP_WAIT_SECONDS = startup_wait
        pubsub.reset_clients()
        return address

    def up(self) -> None:
        from vocoeng import pubsub

        self.settings.PUBSUB_EMULATOR_HOST = self.reachable
        pubsub.reset_clients()


@pytest.fixture
def pubsub_outage(pubsub_settings, settings) -> Iterator[PubSubOutage]:
    """A PubSubOutage on this test's emulator project; up again at the end."""
    outage = PubSubOutage(settings)
    yield outage
    outage.up()


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """Run one headless Debian chromium (Playwright) for the session.

    Fails, never skips, when chromium is missing: ``make test`` installs it.
    Screenshots go to ``$VOCOENG_VAR_DIR/artifacts/``.
    """
    from django.conf import settings

    from vocoeng.testing.browser import Chromium, ChromiumMissing

    try:
        browser = Chromium(artifacts=settings.VAR_DIR / "artifacts").start()
    except ChromiumMissing as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    yield browser
    browser.stop()


@pytest.fixture
def browser_page(chromium, live_server, request, settings) -> Iterator:
    """Open a page with fresh cookies on the live server (see BrowserPage.run)."""
    # A PBKDF2 hash costs ~1 s on a busy CI core, and every login and test user
    # pays it; these tests check the login form, not the hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    page = chromium.open(base_url=live_server.url, name=request.node.name)
    yield page
    page.close()


@pytest.fixture
def admin_browser(browser_page, django_user_model):
    """Return ``browser_page`` logged into the admin through its login form."""
    from functools import partial

    from vocoeng.testing.browser import admin_login

    password = uuid.uuid4().hex
    django_user_model.objects.create_superuser("staff", "staff@example.com", password)
    browser_page.run(partial(admin_login, username="staff", password=password))
    return browser_page
