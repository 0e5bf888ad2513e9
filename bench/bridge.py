"""Measure ``manage.py pubsub_bridge`` against a bare subscriber, same run.

Starts the in-repository Pub/Sub emulator (subprocess), runs ``pubsub_setup``,
adds a second subscription ("bench-bare") to the inbound topic, and publishes
N chat messages (unique message ids, ``kind=chat_message``) with the real
client, so both subscriptions hold all N. Then:

(a) a bare subscriber (real client, streaming pull, flow control) only acks,
    once before (b) and once after, on two more subscriptions: the ratios
    are taken against the mean of the two, as the machine's speed drifts;
(a') the bridge's own stream (vocoeng.pubsub.StreamingPull: the same client's
    channel, raw protobufs, batched acks) only acks: what the stream alone
    costs, for reference (the ratio is taken against (a));
(b) the bridge (subprocess, as users start it) routes each message through the
    real ``chat_message`` route (stores the inbound row) and enqueues its reply
    chain into Redis (no worker runs), acking after the broker accepted it;
(b0) the bridge again on a third subscription of the same messages, with
    ``chat_message`` pointed at a route that only enqueues a no-op task: the
    bridge's own cost (dedup claims, enqueue, ack) without the route's writes.

The dedup claims are where the command's default puts them beside a Redis
broker (PUBSUB_BRIDGE_DEDUP=auto: in Redis); PUBSUB_BRIDGE_DEDUP=database
measures them as rows instead.

The bridge runs with the command's defaults (webhooks/bridge/defaults.py:
1,000 in flight and batches of 500 per process, two batch workers; one process
per usable CPU up to 4, as PUBSUB_BRIDGE_PROCESSES=auto says); ``--processes``,
``--max-in-flight``, ``--batch-size`` and ``--batch-workers`` override them.
The bare subscriber runs at ``--bare-max-in-flight`` (500). The CPU of all
the bridge processes is counted.

Prints messages/s of both, b/a (target >= 0.6), and the counts lost and
duplicated, read from the Celery messages in Redis (one ``reply_generate`` per
inbound row, each naming its row). Over each window it also prints the CPU
cores busy on the whole machine (at its core count, the machine is the
limit), and the emulator's, PostgreSQL's and Redis's CPU per message (every
process of each service: shared with whatever else runs on the machine).
Uses DATABASE_URL when set (a separate
``<name>_bench_bridge`` database on PostgreSQL), else SQLite in a temp dir;
CELERY_BROKER_URL when it is Redis, else a throwaway ``redis-server``.

    make bench-bridge          # or: python bench/bridge.py --messages 5000
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(1, str(ROOT))  # vocoeng.pubsub.StreamingPull for (a')

from _common import cpu_seconds, emit, free_port  # noqa: E402

PROJECT = "vocoeng-bench"


def start_emulator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vocoeng.pubsub_emulator"),
            *("--port", "0", "--log-level", "WARNING"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    return proc, line.split("=", 1)[1]


def database(tmp: Path) -> tuple[str, str]:
    """Return (DATABASE_URL, description) of a fresh database for this run."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return f"sqlite:///{tmp / 'bench.sqlite3'}", "SQLite (temp file)"
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'vocoeng'}_bench_bridge"
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return parts._replace(path=f"/{name}").geturl(), f"PostgreSQL ({name})"


def broker() -> tuple[str, subprocess.Popen | None, str]:
    """Return (redis url, throwaway server or None, description)."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    if url.startswith("redis"):
        return url, None, f"Redis {url}"
    if shutil.which("redis-server") is None:
        sys.exit("bench-bridge needs Redis: set CELERY_BROKER_URL or install redis")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", proc, f"Redis (throwaway, port {port})"


def claims_clear(redis_url: str, *prefixes: str) -> None:
    """Delete the dedup claims the bridge kept in Redis under ``prefixes``
    (PUBSUB_BRIDGE_DEDUP=auto keeps them beside a Redis broker, 8 days)."""
    from vocoeng.claims_redis import RedisClaims

    for prefix in prefixes:
        RedisClaims(redis_url, prefix=prefix).clear()


def publish(topic: str, n: int) -> float:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500)
    )
    started = time.monotonic()
    futures = []
    for i in range(n):
        data = json.dumps(
            {
                "source": "api",
                "user_id": f"bench-{i % 500}",
                "message": f"bench message {i}",
                "message_id": f"bench-{i}",
            }
        ).encode()
        futures.append(publisher.publish(topic, data, kind="chat_message"))
    for future in futures:
        future.result(timeout=120)
    elapsed = time.monotonic() - started
    publisher.stop()
    return n / elapsed


class Acked:
    """Count the distinct messages a bare subscriber acked, timing from the first."""

    def __init__(self, n: int, window: Window) -> None:
        self.n, self.window = n, window
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.first = 0.0
        self.done = threading.Event()
        self.cpu_start = time.process_time()

    def add(self, message_ids: Iterable[str]) -> None:
        with self.lock:
            if not self.first:
                self.first = time.monotonic()
                self.window.start()
            self.seen.update(message_ids)
            if len(self.seen) >= self.n:
                self.done.set()

    def wait(self, what: str) -> tuple[float, float]:
        """Wait for all n; return messages/s and this process's CPU µs a message."""
        if not self.done.wait(600):
            raise RuntimeError(f"{what} got {len(self.seen)}/{self.n}")
        self.window.end()
        elapsed = time.monotonic() - self.first
        cpu = time.process_time() - self.cpu_start
        return self.n / elapsed, cpu / self.n * 1e6


def bare(
    subscription: str, n: int, max_in_flight: int, window: Window
) -> tuple[float, float]:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    acked = Acked(n, window)

    def callback(message) -> None:
        message.ack()
        acked.add((message.message_id,))

    future = subscriber.subscribe(
        subscription,
        callback,
        flow_control=pubsub_v1.types.FlowControl(max_messages=max_in_flight),
    )
    result = acked.wait("bare subscriber")
    future.cancel()
    future.result(timeout=30)
    subscriber.close()
    return result


def bare_stream(
    subscription: str, n: int, max_in_flight: int, window: Window
) -> tuple[float, float]:
    """Do what :func:`bare` does through the bridge's own StreamingPull."""
    from google.cloud import pubsub_v1

    from vocoeng.pubsub import StreamingPull

    subscriber = pubsub_v1.SubscriberClient()
    acked = Acked(n, window)

    def on_messages(messages) -> None:
        for message in messages:
            message.ack()
        acked.add(m.message_id for m in messages)

    stream = StreamingPull(
        client=subscriber,
        path=subscription,
        on_messages=on_messages,
        max_messages=max_in_flight,
        translate=lambda exc: exc,
    ).start()
    result = acked.wait("bare stream")
    stream.stop(timeout=30)
    subscriber.close()
    return result


def tree_cpu(pid: int) -> float:
    """Return the CPU seconds of ``pid`` and its descendants (--processes)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += tree_cpu(int(child))
            except FileNotFoundError:  # exited meanwhile
                pass
    return total


def machine_jiffies() -> tuple[int, int]:
    """Return (busy, total) CPU time of the whole machine so far (/proc/stat)."""
    fields = [
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def cpu_by_command(names: tuple[str, ...]) -> dict[str, float]:
    """Return the CPU seconds of every process whose command is one of ``names``.

    PostgreSQL and Redis are shared with whatever else runs on the machine:
    their figures are an upper bound of what the bench cost them.
    """
    found = dict.fromkeys(names, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm in found:
                found[comm] += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited meanwhile
    return found


SERVICES = ("postgres", "redis-server")


class Window:
    """What the machine and the emulator spent between ``start()`` and ``end()``.

    ``cores``: CPU cores busy on average over the window (all processes); the
    machine's own limit on a rate is its core count over this. ``emulator``:
    the emulator's CPU seconds over the window; ``services``: PostgreSQL's
    and Redis's (every process of either).
    """

    emulator_pid = 0

    def start(self) -> None:
        self.machine = machine_jiffies()
        self.emulator = cpu_seconds(self.emulator_pid)
        self.services = cpu_by_command(SERVICES)

    def end(self) -> None:
        busy, total = machine_jiffies()
        ncpu = os.cpu_count() or 1
        self.cores = (busy - self.machine[0]) / max(total - self.machine[1], 1) * ncpu
        self.emulator = cpu_seconds(self.emulator_pid) - self.emulator
        now = cpu_by_command(SERVICES)
        self.services = {k: now[k] - v for k, v in self.services.items()}


def _bridge_module(name: str):
    """Load ``webhooks/bridge/<name>.py`` from its file.

    bench/webhooks.py shadows the webhooks package here; both files import
    nothing of the project.
    """
    import importlib.util

    path = ROOT / "webhooks" / "bridge" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bridge_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_processes() -> int:
    """Return the command's default process count (PUBSUB_BRIDGE_PROCESSES)."""
    module = _bridge_module("processes")
    return module.processes_from(os.environ.get("PUBSUB_BRIDGE_PROCESSES", ""))


def queue_key(prefix: str) -> str:
    return f"{prefix}ai"


def bridge(
    env: dict[str, str],
    r,
    key: str,
    n: int,
    subscription: str,
    extra: list[str],
    window: Window,
) -> tuple[float, float]:
    """Run the bridge on ``subscription`` until ``n`` chains are queued.

    Returns messages/s and the bridge's CPU time per message (µs) over the
    same window, which depends less on what else the machine runs.
    """
    # BENCH_BRIDGE_LOG=/tmp/x keeps the bridge's output in /tmp/x.<subscription>
    log_path = os.environ.get("BENCH_BRIDGE_LOG")
    log = open(f"{log_path}.{subscription}", "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [
            *(sys.executable, "manage.py", "pubsub_bridge"),
            *("--subscription", subscription),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        give_up = time.monotonic() + 120
        while r.llen(key) == 0:
            if proc.poll() is not None:
                raise RuntimeError("the bridge exited")
            if time.monotonic() > give_up:
                # e.g. every message dead-lettered: BENCH_BRIDGE_LOG says why
                raise RuntimeError("the bridge queued nothing in 120 s")
            time.sleep(0.01)
        started, base_count = time.monotonic(), r.llen(key)
        cpu_start = tree_cpu(proc.pid)
        window.start()
        deadline = started + 900
        last, last_change = base_count, time.monotonic()
        while (count := r.llen(key)) < n and time.monotonic() < deadline:
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > 30:
                break  # stalled: report what was lost
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        window.end()
        done = r.llen(key) - base_count
        cpu = tree_cpu(proc.pid) - cpu_start
        return done / elapsed, cpu / max(done, 1) * 1e6
    finally:
        proc.terminate()
        proc.wait(60)


def count_chains(r, key: str) -> tuple[int, int]:
    """Return (Celery messages queued, distinct inbound rows they name)."""
    rows = set()
    raw = r.lrange(key, 0, -1)
    for item in raw:
        message = json.loads(item)
        body = json.loads(base64.b64decode(message["body"]))
        rows.add(body[0][0])  # reply_generate.si(message pk)
    return len(raw), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--bare-max-in-flight",
        type=int,
        default=500,
        help="the bare subscriber's flow control (its steadiest here: at 1,000 "
        "and more it varied from 13,000 to 22,000 msg/s run to run)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="the bridge's, per process (default: the command's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the command's"
    )
    parser.add_argument(
        "--batch-workers", type=int, default=None, help="default: the command's"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="bridge processes (default: the command's, PUBSUB_BRIDGE_PROCESSES)",
    )
    args = parser.parse_args()
    n = args.messages
    if args.processes is None:
        args.processes = default_processes()
    defaults = _bridge_module("defaults")
    for name in ("max_in_flight", "batch_size", "batch_workers"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name.upper()))

    import redis

    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    emulator, address = start_emulator()
    redis_url, redis_proc, broker_desc = broker()
    db_url, db_desc = database(tmp)
    prefix = "bench-bridge-"
    env = {
        **os.environ,
        "DJANGO_DEV": "1",
        "DJANGO_DEBUG": "0",  # as deployed: no SQL capture per query
        # as deployed: JSON lines (~13 µs a line here, the console's ~5)
        "LOG_FORMAT": "json",
        "VOCOENG_VAR_DIR": str(tmp),
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_REDIS_KEY_PREFIX": prefix,
        "PUBSUB_EMULATOR_HOST": address,
        "PUBSUB_PROJECT_ID": PROJECT,
        # one pooled connection per batch worker, and a spare
        "DB_POOL_MAX_SIZE": str(args.batch_workers + 2),
    }
    noop_prefix = "bench-bridge-noop-"
    noop_env = {
        **env,
        "CELERY_REDIS_KEY_PREFIX": noop_prefix,
        "BUS_ROUTES": json.dumps(
            {"chat_message": "webhooks.bridge.testing.noop_route"}
        ),
    }
    extra = [
        *("--max-in-flight", str(args.max_in_flight)),
        *("--batch-size", str(args.batch_size)),
        *("--batch-workers", str(args.batch_workers)),
        *("--processes", str(args.processes)),
    ]
    os.environ["PUBSUB_EMULATOR_HOST"] = address
    r = redis.Redis.from_url(redis_url)
    r.delete(queue_key(prefix), queue_key(noop_prefix))
    claims_clear(redis_url, prefix, noop_prefix)
    try:
        for command in (["migrate", "--noinput"], ["pubsub_setup"]):
            subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        topic = f"projects/{PROJECT}/topics/vocoeng-messages"
        bare_sub = f"projects/{PROJECT}/subscriptions/bench-bare"
        after_sub = f"projects/{PROJECT}/subscriptions/bench-bare-after"
        noop_sub = f"projects/{PROJECT}/subscriptions/bench-noop"
        stream_sub = f"projects/{PROJECT}/subscriptions/bench-stream"
        for name in (bare_sub, after_sub, noop_sub, stream_sub):
            subscriber.create_subscription(
                request={"name": name, "topic": topic, "ack_deadline_seconds": 600}
            )
        subscriber.close()

        print(
            f"messages {n}; bridge: {args.processes} processes, each max in "
            f"flight {args.max_in_flight}, batch size {args.batch_size}, batch "
            f"workers {args.batch_workers}; bare subscriber: max in flight "
            f"{args.bare_max_in_flight}"
        )
        print(f"database {db_desc}; broker {broker_desc}; emulator {address}")
        dedup = os.environ.get("PUBSUB_BRIDGE_DEDUP", "auto")
        print(f"dedup claims: {'Redis' if dedup in ('auto', 'redis') else dedup}")
        published = publish(topic, n)
        Window.emulator_pid = emulator.pid
        wa, wb, wb0 = Window(), Window(), Window()
        a_before, cpu_before = bare(bare_sub, n, args.bare_max_in_flight, wa)
        a2, a2_cpu = bare_stream(stream_sub, n, args.bare_max_in_flight, Window())
        b, b_cpu = bridge(
            env, r, queue_key(prefix), n, "vocoeng-messages-bridge", extra, wb
        )
        # (a) again right after (b): the machine's speed drifts by tens of
        # percent within a minute here, so (b) is compared with the mean of
        # the two runs that bracket it (both printed).
        a_after, cpu_after = bare(after_sub, n, args.bare_max_in_flight, Window())
        a, a_cpu = (a_before + a_after) / 2, (cpu_before + cpu_after) / 2
        queued, distinct = count_chains(r, queue_key(prefix))
        lost, duplicated = n - distinct, queued - distinct
        # The same messages (same ids) again, through a route that only
        # enqueues a no-op task: forget the dedup claims of the first pass
        # (rows; claims in Redis are under the no-op pass's own key prefix).
        subprocess.run(
            [
                *(sys.executable, "manage.py", "shell", "-c"),
                "from vocoeng.models import ProcessedMessage as P; "
                "P.objects.all().delete()",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        b0, b0_cpu = bridge(
            noop_env, r, queue_key(noop_prefix), n, "bench-noop", extra, wb0
        )
        queued0, distinct0 = count_chains(r, queue_key(noop_prefix))
        lost0, duplicated0 = n - distinct0, queued0 - distinct0
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())

        rows = [
            ("publish (real client)", f"{published:,.0f} msg/s"),
            ("(a) bare subscriber, ack only", f"{a:,.0f} msg/s"),
            ("(a) before / after (b)", f"{a_before:,.0f} / {a_after:,.0f}"),
            ("bare subscriber CPU per message", f"{a_cpu:,.0f} µs"),
            ("(a') the bridge's stream, ack only", f"{a2:,.0f} msg/s"),
            ("the bridge's stream CPU per message", f"{a2_cpu:,.0f} µs"),
            ("(b) bridge → chat route → Redis", f"{b:,.0f} msg/s"),
            ("(c) b/a (target >= 0.6)", f"{b / a:.2f}"),
            ("bridge CPU per message, chat route", f"{b_cpu:,.0f} µs"),
            ("chains in Redis", f"{queued}"),
            ("lost", f"{lost}"),
            ("duplicated", f"{duplicated}"),
            ("(b0) bridge → no-op route → Redis", f"{b0:,.0f} msg/s"),
            ("b0/a (the bridge's own overhead)", f"{b0 / a:.2f}"),
            ("bridge CPU per message, no-op route", f"{b0_cpu:,.0f} µs"),
            ("no-op: lost / duplicated", f"{lost0} / {duplicated0}"),
            (
                "machine cores busy during a / b / b0",
                f"{wa.cores:.2f} / {wb.cores:.2f} / {wb0.cores:.2f}",
            ),
            (
                "emulator CPU per message, a / b / b0",
                " / ".join(f"{w.emulator / n * 1e6:.0f}" for w in (wa, wb, wb0))
                + " µs",
            ),
            *(
                (
                    f"{name} CPU per message, a / b / b0",
                    " / ".join(
                        f"{w.services[name] / n * 1e6:.0f}" for w in (wa, wb, wb0)
                    )
                    + " µs",
                )
                for name in SERVICES
            ),
            ("load average 1/5/15 min after", load),
        ]
        width = max(len(k) for k, _ in rows)
        print()
        for k, v in rows:
            print(f"{k:<{width}}  {v:>14}")
        for figure, value, baseline_value, unit, better, target in (
            ("(b) bridge, chat route, into Redis", b, a, "msg/s", "higher", 0.6),
            ("(b0) bridge, no-op route, into Redis", b0, a, "msg/s", "higher", None),
            ("bridge CPU per message, chat route", b_cpu, a_cpu, "µs", "lower", None),
        ):
            emit(
                bench="bridge",
                figure=figure,
                value=value,
                unit=unit,
                baseline="(a) bare subscriber, ack only",
                baseline_value=baseline_value,
                better=better,
                target=target,
            )
        for figure, value in (("lost", lost), ("duplicated", duplicated)):
            emit(
                bench="bridge",
                figure=f"messages {figure}, chat route",
                value=value,
                unit="messages",
                target=0,
                op="==",
            )
    finally:
        r.delete(queue_key(prefix), queue_key(noop_prefix))
        claims_clear(redis_url, prefix, noop_prefix)
        emulator.terminate()
        emulator.wait(10)
        if redis_proc is not None:
            redis_proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
