"""Measure pipeline runs/s against no-op Celery tasks of the same shape.

Starts the fake model server (latency 0) and one real ``celery worker``
(thread pool), then, in the same run:

* baseline: N canvases ``chain(noop, chord([noop] * P, noop))``;
* pipeline: N consensus runs (expand → P reviews → aggregate) through the
  real tasks, the step claims, the DB writes and the model calls.

Prints runs/s, time per step and the ratio pipeline / baseline (target >= 0.5),
and the worker's CPU per run in each: the worker is one process whose threads
share one GIL, so its CPU per run caps its runs/s, and it moves less than the
rates when other work shares the machine.
Uses the embedded defaults (SQLite, filesystem broker) in a temporary folder
unless DATABASE_URL / CELERY_BROKER_URL are set.

    python bench/pipeline.py [--runs 30] [--personas 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from celery import shared_task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import cpu_seconds, emit, ensure_database  # noqa: E402


@shared_task(name="bench.noop", acks_late=True)
def noop(*_args: object, **_kwargs: object) -> None:
    """Do nothing: the baseline's step."""


def _setup_env() -> None:
    os.environ.setdefault("DJANGO_DEV", "1")
    # As deployed: no SQL capture per query (DJANGO_DEV alone turns DEBUG on).
    os.environ.setdefault("DJANGO_DEBUG", "0")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("VOCOENG_VAR_DIR", tempfile.mkdtemp(prefix="bench-pipe-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "vocoeng.settings"
    sys.path.insert(0, str(ROOT))


def _start_worker(env: dict[str, str], concurrency: int) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "vocoeng",
        "worker",
        "-I",
        "bench.pipeline",
        "-Q",
        "default,ai",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-l",
        "info",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"bench-{os.getpid()}@%h",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        # INFO: the worker says " ready." at INFO, whatever LOG_LEVEL the bench
        # itself runs with.
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " ready." in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(90):
        proc.kill()
        raise SystemExit("celery worker did not start")
    return proc


def _wait(predicate, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the work to finish")
        time.sleep(0.02)


def bench_baseline(runs: int, personas: int) -> float:
    """Return the seconds to run ``runs`` no-op canvases of the pipeline's shape."""
    from celery import chain, chord

    from vocoeng.queues import Queue

    step = noop.si().set(queue=Queue.AI)
    started = time.monotonic()
    results = [
        chain(step, chord([step] * personas, step)).apply_async() for _ in range(runs)
    ]
    _wait(lambda: all(r.ready() for r in results))
    return time.monotonic() - started


def bench_pipeline(runs: int, personas: int) -> float:
    """Return the seconds to finish ``runs`` consensus runs end to end."""
    from pipeline import services
    from pipeline.models import Run
    from vocoeng.services import tenant_get_default

    names = [f"p{i}" for i in range(personas)]
    tenant = tenant_get_default()
    started = time.monotonic()
    ids = [
        services.run_start(tenant=tenant, idea=f"idea {i}", personas=names)[0].pk
        for i in range(runs)
    ]

    def done() -> bool:
        return Run.objects.filter(pk__in=ids, status__in=Run.FINISHED).count() == runs

    _wait(done)
    elapsed = time.monotonic() - started
    bad = Run.objects.filter(pk__in=ids).exclude(status=Run.Status.SUCCEEDED)
    if bad.exists():
        raise SystemExit(f"{bad.count()} run(s) did not succeed: {bad.first().error}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--personas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    _setup_env()
    ensure_database(os.environ.get("DATABASE_URL", ""))

    import django

    django.setup()
    from django.core.management import call_command

    from vocoeng.testing.fake_ai import FakeModelServer

    call_command("migrate", verbosity=0)
    import json

    valid = {
        "expand": {
            "title": "t",
            "summary": "s",
            "goals": [],
            "assumptions": [],
            "questions": [],
        },
        "review": {"verdict": "approve", "score": 7, "strengths": [], "risks": []},
        "aggregate": {
            "verdict": "approve",
            "agreement": 1,
            "key_points": [],
            "dissent": [],
        },
    }

    def responder(_path: str, body: dict) -> str:
        first = next(m for m in body["messages"] if m["role"] == "user")["content"]
        return json.dumps(valid[first.split("\n", 1)[0].removeprefix("TASK: ")])

    server = FakeModelServer(latency=0.0).start()
    server.set_responder(responder)
    env = {
        "AI_PROVIDER": "openai",
        "AI_FALLBACK": "",
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": server.base_url,
        "VOCOENG_VAR_DIR": os.environ["VOCOENG_VAR_DIR"],
    }
    worker = _start_worker(env, args.concurrency)
    try:
        bench_baseline(2, args.personas)  # warm up both paths
        bench_pipeline(2, args.personas)
        cpu = [cpu_seconds(worker.pid)]
        base = bench_baseline(args.runs, args.personas)
        cpu.append(cpu_seconds(worker.pid))
        pipe = bench_pipeline(args.runs, args.personas)
        cpu.append(cpu_seconds(worker.pid))
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
        server.stop()
    steps = args.personas + 2
    base_rps, pipe_rps = args.runs / base, args.runs / pipe
    ratio = pipe_rps / base_rps
    per_step = (pipe - base) / (args.runs * steps) * 1000
    from django.conf import settings

    print(
        f"\nbroker={settings.CELERY_BROKER_URL.split(':')[0]} "
        f"db={settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
        f"runs={args.runs} steps/run={steps} concurrency={args.concurrency}"
    )
    # The worker's CPU between the phases' starts and ends, per run (the last
    # task's few lines after its run finished fall into the next phase).
    base_cpu, pipe_cpu = (
        (b - a) * 1000 / args.runs for a, b in itertools.pairwise(cpu)
    )
    print(f"{'':28} {'runs/s':>8} {'ms/step':>8} {'worker CPU ms/run':>18}")
    for label, rps, secs, cpu_ms in (
        ("no-op chain + chord", base_rps, base, base_cpu),
        ("consensus pipeline", pipe_rps, pipe, pipe_cpu),
    ):
        print(
            f"{label:28} {rps:8.2f} {secs / args.runs / steps * 1000:8.1f}"
            f" {cpu_ms:18.1f}"
        )
    print(f"{'orchestration overhead/step':28} {'':>8} {per_step:8.1f}")
    verdict = "OK" if ratio >= 0.5 else "BELOW TARGET"
    print(f"ratio pipeline/baseline = {ratio:.2f} (target >= 0.5) {verdict}")
    same_shape = "no-op chain + chord, same shape"
    emit(
        bench="pipeline",
        figure="consensus runs (expand, reviews, aggregate)",
        value=pipe_rps,
        unit="runs/s",
        baseline=same_shape,
        baseline_value=base_rps,
        target=0.5,
    )
    for figure, value, baseline, baseline_value in (
        ("orchestration overhead per step", per_step, None, None),
        ("worker CPU per run", pipe_cpu, same_shape, base_cpu),
    ):
        emit(
            bench="pipeline",
            figure=figure,
            value=value,
            unit="ms",
            baseline=baseline,
            baseline_value=baseline_value,
            better="lower",
        )


if __name__ == "__main__":
    main()
