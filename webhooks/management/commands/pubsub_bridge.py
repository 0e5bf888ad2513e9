"""Pull Pub/Sub subscriptions into Celery chains (ack after the broker has them)."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vocoeng import pubsub
from vocoeng.celery import gc_freeze
from webhooks.bridge import defaults, metrics
from webhooks.bridge.runner import Bridge, subscription_kinds

# Allocations (net of deallocations) between two collections of the youngest
# generation (CPython's default: 700). A batch of messages keeps tens of
# thousands of containers alive until it is done (decoded bodies, rows, task
# messages), so with the default the collector ran every few messages and
# walked them all, none of them garbage. Measured (bench/bridge.py, chat
# route, runs alternating): bridge CPU per message 64 and 64 us at 700, 55
# and 59 at 10,000. The older generations keep their thresholds.
GC_YOUNG_THRESHOLD = 10_000


def gc_young_threshold_raise() -> None:
    """Collect the youngest generation every GC_YOUNG_THRESHOLD allocations."""
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), older, oldest)


class Command(BaseCommand):
    help = (
        "Streaming-pull one or more Pub/Sub subscriptions and enqueue each message's "
        "Celery chain, acking only after the broker accepted it. Duplicates are "
        "acked without a second chain; messages that can never succeed are "
        "dead-lettered. SIGTERM/SIGINT stop it gracefully."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--subscription",
            action="append",
            dest="subscriptions",
            metavar="NAME",
            help="subscription to pull (repeatable); default: all bridge "
            "subscriptions (PUBSUB_SUBSCRIPTION_MESSAGES, _JOBS, _VOC)",
        )
        parser.add_argument(
            "--max-in-flight",
            type=int,
            default=defaults.MAX_IN_FLIGHT,
            help="messages outstanding per subscription (flow control, default "
            f"%(default)s; at most {defaults.MAX_IN_FLIGHT_BYTES // 2**20} MiB of "
            "them)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=defaults.BATCH_SIZE,
            help="handle up to this many messages together (one dedup INSERT, "
            "one route transaction, one broker connection; default "
            "%(default)s); 1 = one by one",
        )
        parser.add_argument(
            "--batch-workers",
            type=int,
            default=defaults.BATCH_WORKERS,
            help="threads handling batches concurrently (each holds one database "
            "connection: keep DB_POOL_MAX_SIZE at least this); two measured "
            "fastest: one's database and broker round trips overlap the other's "
            "work, and more only share the one GIL",
        )
        parser.add_argument(
            "--broker-retry-seconds",
            type=float,
            default=None,
            help="retry an enqueue this long while the broker is down, then nack "
            "(default PUBSUB_BRIDGE_BROKER_RETRY_SECONDS)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="run this many bridge processes on the subscriptions (each with "
            "its own --max-in-flight, --batch-workers and database connections; "
            "with --metrics-port, process i serves on PORT+i); SIGTERM/SIGINT "
            "stop them all. Default: PUBSUB_BRIDGE_PROCESSES ('auto': one per "
            "usable CPU, at most 4)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus counters on this port",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["max_in_flight"] < 1:
            raise CommandError("--max-in-flight must be at least 1")
        if options["processes"] is None:
            options["processes"] = settings.PUBSUB_BRIDGE_PROCESSES
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        if options["batch_size"] < 1 or options["batch_workers"] < 1:
            raise CommandError("--batch-size and --batch-workers must be at least 1")
        pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
        if (
            isinstance(pool, dict)
            and pool.get("max_size", 1) < options["batch_workers"]
        ):
            self.stderr.write(
                f"warning: DB_POOL_MAX_SIZE {pool['max_size']} is below "
                f"--batch-workers {options['batch_workers']}: workers will wait "
                "for database connections"
            )
        subscriptions = options["subscriptions"] or list(subscription_kinds())
        bridge = Bridge(
            subscriptions=subscriptions,
            max_in_flight=options["max_in_flight"],
            retry_seconds=options["broker_retry_seconds"],
            batch_size=options["batch_size"],
            batch_workers=options["batch_workers"],
        )
        try:
            bridge.check()
        except pubsub.PubSubError as exc:
            raise CommandError(str(exc)) from exc
        if options["processes"] > 1:
            self._supervise(subscriptions, options)
            return
        if options["metrics_port"] is not None:
            metrics.serve(options["metrics_port"])
        bridge.install_signal_handlers()
        # The objects alive now (Django, the apps, the Pub/Sub and gRPC
        # clients) live as long as the process: out of the cyclic GC's reach,
        # as in the Celery workers. Measured over 10k messages: full
        # collections 205 ms in all (110 ms the longest), frozen 4.9 ms.
        gc_freeze()
        gc_young_threshold_raise()
        bridge.start()
        self.stdout.write(
            f"bridge pulling {', '.join(subscriptions)} "
            f"(max in flight {options['max_in_flight']})"
        )
        self.stdout.flush()
        failure = bridge.wait()
        bridge.stop()
        if failure is not None:
            raise CommandError(str(failure))
        self.stdout.write("bridge stopped")

    def _supervise(self, subscriptions: list[str], options: dict[str, Any]) -> None:
        """Run ``--processes`` single bridges as children until a signal or a failure.

        The children are started the way users start one bridge; a SIGTERM or
        SIGINT here is passed on to each (each stops gracefully); a child that
        exits on its own stops the others, and its exit status becomes this
        command's failure.
        """
        # each child is one bridge, whatever PUBSUB_BRIDGE_PROCESSES says
        args = [f"--subscription={name}" for name in subscriptions]
        args.append("--processes=1")
        for flag in ("max_in_flight", "batch_size", "batch_workers"):
            args.append(f"--{flag.replace('_', '-')}={options[flag]}")
        if options["broker_retry_seconds"] is not None:
            args.append(f"--broker-retry-seconds={options['broker_retry_seconds']}")
        children = []
        for i in range(options["processes"]):
            extra = []
            if options["metrics_port"] is not None:
                extra.append(f"--metrics-port={options['metrics_port'] + i}")
            manage = str(settings.BASE_DIR / "manage.py")
            command = [sys.executable, manage, "pubsub_bridge", *args, *extra]
            children.append(subprocess.Popen(command))
        stopping = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        failed = None
        while not stopping.wait(0.5):
            failed = next((c for c in children if c.poll() is not None), None)
            if failed is not None:
                break
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = [child.wait() for child in children]
        if failed is not None or any(codes):
            raise CommandError(f"bridge processes exited with {codes}")
        self.stdout.write("bridge stopped")
