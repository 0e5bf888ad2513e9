"""Measure the `ai` queue: 500 messages against a model that answers in 1 s.

Runs the Procfile's `ai` worker (concurrency 100) on the `reply_generate`
task (claim, history, model call, store reply and usage), against the
configured broker and database
(embedded defaults unless CELERY_BROKER_URL / DATABASE_URL are set). Prints the
achieved messages/s against the ideal (concurrency / model latency), and
against what the fake model server itself sustains at that concurrency, both
measured in this run, plus the ai worker's peak memory. The messages are
enqueued first, while the worker consumes another queue; the clock starts
when Celery's remote control tells it to consume `ai` (add_consumer), so what
is timed is the worker draining the queue.

    make bench-ai            # or: .venv/bin/python bench/ai_fanout.py --messages 500
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import (  # noqa: E402
    analyze_database,
    cpu_seconds,
    emit,
    ensure_database,
    free_port,
)


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def start_worker(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "vocoeng", "worker", "-l", "info"]
    cmd += args
    out = log.open("w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("worker failed to start:\n" + log.read_text()[-3000:])
        time.sleep(0.1)
    return proc


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_capacity(base_url: str, concurrency: int, total: int) -> float:
    """Return requests/s the fake model server sustains with the real SDK."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)

    def one(i: int) -> None:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"warm {i}"}],
        )

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # open the connections first
        start = time.monotonic()
        list(pool.map(one, range(total)))
        return total / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--processes", type=int, default=1, help="ai worker processes (default 1)"
    )
    parser.add_argument(
        "--pool", default="threads", help="ai worker pool (Procfile: threads)"
    )
    opts = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="vocoeng-bench-ai-"))
    model_port = free_port()
    env = {
        **os.environ,
        "DJANGO_DEV": "1",
        "DJANGO_DEBUG": "0",  # as deployed: no SQL capture per query
        "DJANGO_SETTINGS_MODULE": "vocoeng.settings",
        "VOCOENG_VAR_DIR": str(var),
        "AI_PROVIDER": "openai",
        "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
        "LOG_LEVEL": "INFO",  # workers log "ready." at INFO; logs go to files
        "CELERY_REDIS_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-",
    }
    os.environ.update(env)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vocoeng.testing.fake_ai_async",
                    "--port",
                    str(model_port),
                    "--latency",
                    str(opts.latency),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(model_port)
        ensure_database(env.get("DATABASE_URL", ""))
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
        )

        import django

        django.setup()
        import logging

        logging.getLogger().setLevel(logging.WARNING)
        from django.conf import settings

        from conversations.models import Message
        from conversations.routes import inbound_store
        from conversations.tasks import reply_generate

        print(
            f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
            f"broker: {settings.CELERY_BROKER_URL.split('://')[0]}, "
            f"model latency {opts.latency}s, ai concurrency {opts.concurrency} "
            f"in {opts.processes} {opts.pool} process(es)"
        )
        capacity = server_capacity(
            env["OPENAI_BASE_URL"], opts.concurrency, opts.messages
        )

        # One ai process per --processes, the concurrency split between them:
        # the Procfile's `ai` process type, scaled to N processes.
        per_process = max(1, opts.concurrency // opts.processes)
        ai_workers = []
        # The workers start on an idle queue and are told to consume `ai`
        # (Celery's remote control: add_consumer) once the 500 messages wait
        # there, so the clock times the ai worker draining the queue, not the
        # bench's own enqueue loop (0.3-0.65 s of apply_async on this 2-core
        # machine, competing with the worker for the CPU).
        idle = f"bench-idle-{uuid.uuid4().hex[:6]}"
        names = [f"ai{n}-{uuid.uuid4().hex[:6]}" for n in range(opts.processes)]
        for n, name in enumerate(names):
            ai_workers.append(
                start_worker(
                    env,
                    [
                        "-Q",
                        idle,
                        "-P",
                        opts.pool,
                        "-c",
                        str(per_process),
                        "-n",
                        f"{name}@%h",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    var / f"ai-worker-{n}.log",
                )
            )
        procs.extend(ai_workers)
        ai_worker = ai_workers[0]
        run = uuid.uuid4().hex[:8]
        # Store the inbound messages first: what is timed is the ai queue,
        # i.e. the reply_generate task (claim, history, model call, store).
        signatures, inbound_ids = [], []
        for i in range(opts.messages):
            message, _ = inbound_store(
                data={
                    "source": "api",
                    "user_id": f"bench-{run}-{i}",
                    "message": f"question {i}",
                    "message_id": f"bench-{run}-{i}",
                }
            )
            signatures.append(reply_generate.si(str(message.pk)))
            inbound_ids.append(message.pk)
        analyze_database()
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], *(peak_rss_mb(w.pid) for w in ai_workers))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        if os.environ.get("BENCH_PYSPY"):
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-p",
                        str(ai_worker.pid),
                        "-o",
                        os.environ["BENCH_PYSPY"],
                        "-f",
                        "raw",
                        "-d",
                        os.environ.get("BENCH_PYSPY_SECONDS", "8"),
                        "-r",
                        "200",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from django.utils import timezone

        since = timezone.now()
        enqueue_started = time.monotonic()
        for sig in signatures:
            sig.apply_async()
        enqueue_s = time.monotonic() - enqueue_started
        from vocoeng.celery import app

        hostname = socket.gethostname()
        cpu_before = sum(cpu_seconds(w.pid) for w in ai_workers)
        start = time.monotonic()
        answers = app.control.add_consumer(
            "ai", destination=[f"{name}@{hostname}" for name in names], reply=True
        )
        if len(answers) != len(names):
            raise RuntimeError(f"add_consumer: {answers!r}")
        # Progress: replies created since the clock started (the created_at
        # index), not a LIKE on external ids, which scanned the whole table
        # every 0.1 s (tens of ms of PostgreSQL CPU taken from the worker once
        # earlier runs had filled it); the count by inbound id comes after.
        progress = Message.objects.filter(role="assistant", created_at__gte=since)
        done = 0
        deadline = start + max(120, 10 * opts.messages / opts.concurrency)
        while time.monotonic() < deadline:
            done = progress.count()
            if done >= opts.messages:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        replies = Message.objects.filter(role="assistant", reply_to_id__in=inbound_ids)
        done = replies.count()
        cpu_used = sum(cpu_seconds(w.pid) for w in ai_workers) - cpu_before
        cpu_ms = cpu_used * 1000 / max(done, 1)
        stop.set()
        peak[0] = max(peak[0], *(peak_rss_mb(w.pid) for w in ai_workers))
        duplicates = replies.count() - replies.values("reply_to").distinct().count()

        achieved = done / elapsed
        ideal = opts.concurrency / opts.latency
        rows = [
            ("ideal (concurrency / latency)", f"{ideal:.1f} msg/s", ""),
            ("fake model server, SDK, same concurrency", f"{capacity:.1f} req/s", ""),
            (
                "reply chain through the ai worker",
                f"{achieved:.1f} msg/s",
                f"{achieved / ideal:.2f} of ideal, {achieved / capacity:.2f} of server",
            ),
        ]
        print()
        print(f"{'figure':<44}{'value':>14}  ratio")
        for name, value, ratio in rows:
            print(f"{name:<44}{value:>14}  {ratio}")
        print()
        print(
            f"replies: {done}/{opts.messages} in {elapsed:.2f}s, duplicates: "
            f"{duplicates}, ai worker peak RSS: {peak[0]:.0f} MB"
        )
        print(
            f"(the clock starts when the worker is told to consume the queue; "
            f"the bench enqueued the {opts.messages} messages in {enqueue_s:.2f}s "
            "before that)"
        )
        print(
            f"ai worker CPU per message: {cpu_ms:.1f} ms -> one core (the GIL) caps "
            f"one process at ~{1000 / cpu_ms:.0f} msg/s; load average now "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        verdict = "met" if achieved / ideal >= 0.8 else "NOT met"
        print(f"target: >= 0.80 of ideal -> {verdict}")
        for baseline, baseline_value, target in (
            ("ideal (concurrency / latency)", ideal, 0.8),
            ("fake model server, SDK, same concurrency", capacity, None),
        ):
            emit(
                bench="ai_fanout",
                figure="reply_generate through the ai worker",
                value=achieved,
                unit="msg/s",
                baseline=baseline,
                baseline_value=baseline_value,
                target=target,
            )
        for figure, value, unit, target in (
            ("replies missing", opts.messages - done, "messages", 0),
            ("duplicate replies", duplicates, "messages", 0),
            ("ai worker peak RSS", peak[0], "MB", None),
            ("ai worker CPU per message", cpu_ms, "ms", None),
        ):
            emit(
                bench="ai_fanout",
                figure=figure,
                value=value,
                unit=unit,
                better="lower",
                target=target,
                op="==",
            )
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
