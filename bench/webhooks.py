"""Measure the WhatsApp webhook under gunicorn against a bare Django view.

Starts gunicorn with the Procfile's ``web`` line on a fresh var dir and
database (migrated first), sends N signed webhook POSTs (unique wamids) from C
keep-alive client threads (pre-built requests on raw sockets, so the generator
stays cheap: it shares the cores; each reconnects every 10 requests, so the
load spreads over gunicorn's workers, whose CPU split is printed), and the
same load right before and right after it (their mean is the baseline: the
machine's speed drifts) against
``bench/django_noop.py`` (Django's full stack, a view that only returns 200:
the framework's floor) and ``bench/bare_wsgi.py`` under the same gunicorn
config. Prints requests/s, p50/p99 and CPU per request (server process tree,
generator) of each and the ratios (target webhook/django-noop >= 0.5: the
issue's "bare view that only returns 200"). The webhook load runs ``--rounds``
times (3; each round its own N messages, between two no-op loads): runs
minutes apart differ by ~10% here, so the round with the median ratio is the
result, and every round's ratio is printed.

The webhook answers once the delivery is recorded (store and forward); its
task goes out from the web process's outbox a few milliseconds later, and the
webhook's load ends when the last of them is in the broker. The parsing,
storing and the reply chains are a worker's. So,
after the HTTP loads, a real Celery worker started from the Procfile's
``worker`` line (queues default,analytics: the chains' first task waits in
``ai``) drains the deliveries, and the script prints the drain rate and the
end-to-end rate (requests / (HTTP time + drain time)), then checks that every
delivery was processed, every message stored once and handed to the bus once
(one reply chain in the broker's ``ai`` queue per message). The worker does
not run during the HTTP load: on this machine it would share the same cores.
Embedded defaults unless DATABASE_URL / CELERY_BROKER_URL are set;
WEB_CONCURRENCY / WORKER_CONCURRENCY change the processes as in production.
Other processes on the machine skew req/s: the load average is printed, and
CPU per request is the steadier figure.

    make bench-webhooks          # or: python bench/webhooks.py --requests 5000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import analyze_database, emit, ensure_database, free_port  # noqa: E402

SECRET = "bench-app-secret"


def procfile(name: str, env: dict[str, str]) -> list[str]:
    """Return the Procfile's ``name`` command as argv.

    ``${NAME:-default}`` is expanded from ``env``, so WEB_CONCURRENCY and
    WORKER_CONCURRENCY change the processes here as they do in production.
    """
    line = next(
        row.partition(":")[2]
        for row in (ROOT / "Procfile").read_text().splitlines()
        if row.startswith(f"{name}:")
    )
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], line)
    return shlex.split(line)


def procfile_web(app: str, port: int, env: dict[str, str]) -> list[str]:
    """Return the Procfile's ``web`` command for ``app`` bound to ``port``."""
    argv = procfile("web", env)
    assert argv[0] == "gunicorn", argv
    argv[1] = app
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    return [sys.executable, "-m", *argv]


def drain(env: dict[str, str], pending: Callable[[], int], timeout: float) -> dict:
    """Run the Procfile's ``worker`` until ``pending()`` is 0; time it.

    Returns the seconds from the worker's start (its start-up included) to
    the last delivery processed, and the CPU it used.
    """
    argv = procfile("worker", env)
    assert argv[0] == "celery", argv
    log = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv, "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = started + timeout
        while pending() and time.perf_counter() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = tree_cpu(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    log.seek(0)
    errors = [
        line for line in log.read().decode(errors="replace").splitlines()
        if "ERROR" in line or "Traceback" in line
    ]  # fmt: skip
    return {"seconds": elapsed, "cpu": cpu, "errors": errors}


def gunicorn(app: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    cmd = procfile_web(app, port, env)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gunicorn {app} did not start")


def tree_cpu(pid: int) -> float:
    """Return the CPU seconds used so far by ``pid`` and its children (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
        except (OSError, IndexError):
            continue
        pending.extend(int(c) for c in children.split())
    return total


def workers_cpu(pid: int) -> dict[int, float]:
    """Return the CPU seconds of each direct child (gunicorn's workers) of ``pid``."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    return {int(c): tree_cpu(int(c)) for c in children}


def services_cpu() -> float:
    """Return the CPU seconds of this host's postgres and redis-server processes.

    Other users of the same servers are included: an upper bound.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, _, rest = stat.read_text().partition(")")
        except OSError:
            continue
        if name.rpartition("(")[2] in ("postgres", "redis-server"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _request(raw: bytes, sig: str) -> bytes:
    head = (
        "POST /webhooks/whatsapp/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


class Client:
    """Send pre-built HTTP/1.1 requests on one keep-alive socket (cheap per call)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def send(self, request: bytes) -> int:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(self.buf) < length:
            self._recv()
        self.buf = self.buf[length:]
        if close:
            self.close()
        return status

    def _recv(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


# Each client opens a new connection after this many requests. gunicorn's
# workers take connections as they accept them: with 32 connections held for
# the whole run, one worker now and then held nearly all of them, and that run
# went at one process's speed (the no-op view at ~1,000 against ~2,800 req/s,
# one worker's CPU busy; bimodal from run to run). Reconnecting spreads the
# load over the workers as a sender's new connections do over time.
RECONNECT_EVERY = 10


def settled(count: Callable[[], int], quiet: float = 0.1) -> float:
    """Return when ``count()`` last changed: polled until it holds for ``quiet`` s.

    The webhook answers once its delivery is committed; its task goes out
    from the web process's outbox a few milliseconds later. The load counts
    as done when the last of them is in the broker, not at the last answer.
    """
    changed = time.perf_counter()  # count() answers in well under 1 ms (warm)
    last = count()
    while time.perf_counter() - changed < quiet:
        time.sleep(0.002)
        if (now := count()) != last:
            last, changed = now, time.perf_counter()
    return changed


def load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    published: Callable[[], int] | None = None,
) -> dict:
    """Send every request once from ``concurrency`` keep-alive clients.

    Requests are pre-built bytes on raw sockets: the generator shares the
    cores with the server, so it is kept as cheap as it can be in Python.
    Each client reconnects every ``RECONNECT_EVERY`` requests. With
    ``published`` (how many task messages the broker holds), the load ends
    when the last of the tasks the requests queued is in the broker
    (:func:`settled`), if that is after the last answer.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    cursor = iter(range(len(requests)))

    def client() -> None:
        conn = Client(port)
        mine, codes = [], {}
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                break
            if len(mine) % RECONNECT_EVERY == RECONNECT_EVERY - 1:
                conn.close()
            started = time.perf_counter()
            try:
                code = conn.send(requests[i])
            except OSError:
                conn.close()
                code = 0
            mine.append(time.perf_counter() - started)
            codes[code] = codes.get(code, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    if published:
        published()  # its connection opened now, not after the load
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered = time.perf_counter()
    finished = max(answered, settled(published)) if published else answered
    elapsed = finished - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "tail_ms": (finished - answered) * 1000,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "statuses": statuses,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="webhook loads, each between two no-op loads; the median round's"
        " ratio is the result",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600,
        help="seconds the worker may take to process the queued deliveries",
    )
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix="vocoeng-bench-webhooks-"))
    env = {
        **os.environ,
        # Production-like: DEBUG off (it records every SQL query).
        "DJANGO_DEV": "0",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
        "DJANGO_SETTINGS_MODULE": "vocoeng.settings",
        "VOCOENG_VAR_DIR": str(var),
        "WHATSAPP_APP_SECRET": SECRET,
        "AI_USER_RATE_LIMIT": "0",
        "BUS": "direct",
        "LOG_LEVEL": "WARNING",
        "CELERY_REDIS_KEY_PREFIX": f"bench-webhooks-{run}-",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    ensure_database(env.get("DATABASE_URL", ""))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip

    import django

    django.setup()
    analyze_database()
    from conversations.models import Message
    from vocoeng.celery import app as celery_app
    from webhooks.models import WebhookDelivery
    from webhooks.security import whatsapp_signature
    from webhooks.tests import payloads as p

    rounds = max(1, args.rounds)
    wamids = [f"wamid.bench{run}{i:06d}" for i in range(args.requests * rounds)]
    bodies = []
    for i, wamid in enumerate(wamids):
        raw = json.dumps(
            p.notification([p.text(f"1555{i % 500:07d}", f"bench {i}", id=wamid)])
        ).encode()
        bodies.append(_request(raw, whatsapp_signature(body=raw, secret=SECRET)))

    from django.utils import timezone

    run_started = timezone.now()  # this run's deliveries (the database is kept)

    def queued_tasks() -> int:
        with celery_app.connection_for_write() as conn:
            return conn.default_channel.queue_declare("default").message_count

    load_before = os.getloadavg()
    # The no-op view runs right before and right after each webhook load, and
    # each round's ratio is taken against the mean of the two: the machine's
    # speed drifts by tens of percent from one minute to the next here. Loads
    # a few minutes apart still differ by ~10%, so the webhook load runs
    # ``rounds`` times (each with its own messages) and the round with the
    # median ratio is the result; every round is printed.
    runs = [("django", "bench.django_noop:app", None)]
    for r in range(rounds):
        runs.append(("webhook", "vocoeng.wsgi", r))
        runs.append(("django", "bench.django_noop:app", None))
    runs.append(("bare", "bench.bare_wsgi:app", None))
    noops: list[dict] = []
    webs: list[dict] = []
    bare: dict = {}
    for name, wsgi, r in runs:
        port = free_port()
        proc = gunicorn(wsgi, port, env)
        # Each webhook round its own messages; the other loads the first N.
        mine = bodies[(r or 0) * args.requests :][: args.requests]
        try:
            # Warm up (imports, connections): for the webhook, until the
            # outbox has published the warm-up's tasks (its first publish
            # imports the broker's client, ~0.3 s of a worker's CPU).
            queued = queued_tasks if name == "webhook" else None
            load(port, mine[:50], 4, published=queued)
            server_cpu, client_cpu = tree_cpu(proc.pid), time.process_time()
            split_before = workers_cpu(proc.pid)
            backend_cpu = services_cpu()
            sent_now = mine[50:] if name == "webhook" else mine
            result = load(port, sent_now, args.concurrency, published=queued)
            split = {
                k: v - split_before.get(k, 0.0)
                for k, v in workers_cpu(proc.pid).items()
            }
            total = sum(split.values()) or 1.0
            result["split"] = "/".join(
                f"{100 * v / total:.0f}" for v in sorted(split.values(), reverse=True)
            )
            result["server_cpu_ms"] = (
                (tree_cpu(proc.pid) - server_cpu) * 1000 / len(sent_now)
            )
            result["services_cpu_ms"] = (
                (services_cpu() - backend_cpu) * 1000 / len(sent_now)
            )
            result["client_cpu_ms"] = (
                (time.process_time() - client_cpu) * 1000 / len(sent_now)
            )
            result["requests"] = len(sent_now)
        finally:
            proc.terminate()
            proc.wait(20)
        if name == "django":
            noops.append(result)
        elif name == "webhook":
            webs.append(result)
        else:
            bare = result

    averaged = (
        "rps",
        "p50_ms",
        "p99_ms",
        "server_cpu_ms",
        "services_cpu_ms",
        "client_cpu_ms",
    )

    def bracketing(r: int) -> dict:
        """The mean of the two no-op loads around webhook round ``r``."""
        pair = (noops[r], noops[r + 1])
        return {
            **{key: sum(n[key] for n in pair) / 2 for key in averaged},
            "statuses": dict(sum((Counter(n["statuses"]) for n in pair), Counter())),
            "pair": pair,
        }

    ratios = [webs[r]["rps"] / bracketing(r)["rps"] for r in range(rounds)]
    # The median; of an even number of rounds, the lower of the middle two.
    median = sorted(range(rounds), key=ratios.__getitem__)[(rounds - 1) // 2]
    web, noop = webs[median], bracketing(median)
    results = {"django": noop, "webhook": web, "bare": bare}
    splits = {
        "django": noop["pair"][0]["split"],
        "webhook": web["split"],
        "django_after": noop["pair"][1]["split"],
        "bare": bare["split"],
    }
    noop_runs = noop["pair"]
    webhook_statuses = sum((Counter(w["statuses"]) for w in webs), Counter())
    webhook_requests = sum(w["requests"] for w in webs)

    # The worker's half: drain the deliveries the webhook recorded and queued.
    deliveries = WebhookDelivery.objects.filter(
        source="whatsapp", received_at__gte=run_started
    )
    waiting = deliveries.filter(verdict=WebhookDelivery.Verdict.RECEIVED)
    to_drain = waiting.count()
    drained = drain(env, waiting.count, timeout=args.drain_timeout)
    verdicts = Counter(deliveries.values_list("verdict", flat=True))

    sent = set(wamids)
    stored = Message.objects.filter(channel="whatsapp", external_id__in=sent)
    stored_count = stored.count()
    received = stored.filter(status="received").count()
    with celery_app.connection_for_write() as conn:
        chains = conn.default_channel.queue_declare("ai").message_count
        # No ai worker runs here: the chains would wait in the broker for
        # ever, under this run's key prefix (~20 MB a run on Redis).
        for queue in ("ai", "default", "analytics"):
            conn.default_channel.queue_purge(queue)

    ratio = web["rps"] / bare["rps"]
    print(
        f"\nbench/webhooks  requests={args.requests} concurrency={args.concurrency}"
        f" rounds={rounds}"
    )
    broker = env.get("CELERY_BROKER_URL", "filesystem://")
    print(f"database={django.db.connection.vendor} broker={broker}")
    web_cmd = procfile_web("<app>", 0, env)[2:]
    print(f"server: {' '.join(web_cmd)}  (cores={os.cpu_count()})")
    print(
        "load average before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *os.getloadavg()
        )
    )
    print(
        f"{'target':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU ms/req':>19}{'client CPU ms/req':>19}"
        f"{'pg+redis CPU ms/req':>21}  statuses"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['rps']:>8.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['server_cpu_ms']:>19.2f}{r['client_cpu_ms']:>19.2f}"
            f"{r['services_cpu_ms']:>21.2f}  {r['statuses']}"
        )
    print(
        "django no-op before / after the webhook: "
        + " / ".join(f"{r['rps']:.0f}" for r in noop_runs)
        + " req/s (the django row: their mean)"
    )
    print(
        "CPU per gunicorn worker, %: "
        + ", ".join(f"{name} {split}" for name, split in splits.items())
    )
    print(
        "rounds (webhook / the mean of the no-op loads around it): "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f"; the median, round {median + 1}, is the result (its rows above)"
    )
    print(
        f"ratio webhook/django-noop req/s: {web['rps'] / results['django']['rps']:.2f}"
        " (target >= 0.5)"
    )
    print(
        f"ratio django-noop/bare req/s: {results['django']['rps'] / bare['rps']:.2f}"
        f"  webhook/bare: {ratio:.2f}"
    )
    print(
        f"webhook tasks in the broker {web['tail_ms']:.0f} ms after the last"
        " answer (the outbox's last publish; counted in the webhook's req/s)"
    )
    http_seconds = sum(w["requests"] / w["rps"] for w in webs)
    drain_rate = to_drain / drained["seconds"]
    end_to_end = webhook_requests / (http_seconds + drained["seconds"])
    worker_cmd = " ".join(procfile("worker", env))
    print(
        f"worker: {worker_cmd} (started after the HTTP loads)\n"
        f"drained {to_drain} deliveries in {drained['seconds']:.1f} s (worker"
        f" start-up included): {drain_rate:.0f} deliveries/s, worker CPU"
        f" {drained['cpu'] * 1000 / max(to_drain, 1):.2f} ms/delivery;"
        f" verdicts {dict(verdicts)}"
    )
    print(
        f"end to end (HTTP {http_seconds:.1f} s + drain {drained['seconds']:.1f} s,"
        f" one after the other): {end_to_end:.0f} webhooks/s,"
        f" {end_to_end / results['django']['rps']:.2f} of the Django no-op view"
    )
    for line in drained["errors"][:10]:
        print("worker:", line)
    print(
        f"messages sent={len(sent)} stored={stored_count} received={received} "
        f"chains in broker={chains}"
    )
    ok = (
        stored_count == len(sent) == chains == received
        and verdicts == {WebhookDelivery.Verdict.PROCESSED: len(sent)}
        and webhook_statuses == {200: webhook_requests}
        and webhook_requests == len(sent) - 50 * rounds
    )
    print("exactly once: " + ("yes" if ok else "NO"))
    # The baseline is "a bare view that only returns 200": Django's
    # full stack with a no-op view. The bare WSGI app (no Django) is context.
    for baseline, value, target in (
        ("Django no-op view", results["django"]["rps"], 0.5),
        ("bare WSGI app", bare["rps"], None),
    ):
        emit(
            bench="webhooks",
            figure="signed WhatsApp webhook",
            value=web["rps"],
            unit="req/s",
            baseline=baseline,
            baseline_value=value,
            target=target,
        )
    emit(
        bench="webhooks",
        figure="deliveries drained by the worker",
        value=drain_rate,
        unit="deliveries/s",
        baseline="signed WhatsApp webhook req/s",
        baseline_value=web["rps"],
    )
    emit(
        bench="webhooks",
        figure="webhook end to end (HTTP then drain)",
        value=end_to_end,
        unit="webhooks/s",
        baseline="Django no-op view",
        baseline_value=results["django"]["rps"],
    )
    for figure, key, unit in (
        ("webhook p99 latency", "p99_ms", "ms"),
        ("webhook server CPU per request", "server_cpu_ms", "ms"),
    ):
        emit(
            bench="webhooks",
            figure=figure,
            value=web[key],
            unit=unit,
            baseline="bare WSGI app",
            baseline_value=bare[key],
            better="lower",
        )
    # Exactly once: every request answered 200, every message stored, one
    # chain each in the broker.
    emit(
        bench="webhooks",
        figure="webhook answers other than 200",
        value=webhook_requests - webhook_statuses.get(200, 0),
        unit="requests",
        target=0,
        op="==",
    )
    for figure, value in (
        ("messages stored", stored_count),
        ("chains enqueued", chains),
    ):
        emit(
            bench="webhooks",
            figure=figure,
            value=value,
            unit="messages",
            baseline="messages sent",
            baseline_value=len(sent),
            target=1.0,
            op="==",
        )
    print(
        "(pg+redis CPU: every postgres/redis-server process on this host, "
        "other users' included)"
    )
    with celery_app.connection_for_write() as conn:
        for queue in ("ai", "default"):
            conn.default_channel.queue_purge(queue)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
