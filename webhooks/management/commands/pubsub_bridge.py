"""Pull Pub/Sub subscriptions into Celery chains (ack after the broker has them)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from vocoeng import pubsub
from webhooks.bridge import metrics
from webhooks.bridge.runner import Bridge, subscription_kinds


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
            default=100,
            help="messages outstanding per subscription (flow control)",
        )
        parser.add_argument(
            "--broker-retry-seconds",
            type=float,
            default=None,
            help="retry an enqueue this long while the broker is down, then nack "
            "(default PUBSUB_BRIDGE_BROKER_RETRY_SECONDS)",
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
        subscriptions = options["subscriptions"] or list(subscription_kinds())
        bridge = Bridge(
            subscriptions=subscriptions,
            max_in_flight=options["max_in_flight"],
            retry_seconds=options["broker_retry_seconds"],
        )
        try:
            bridge.check()
        except pubsub.PubSubError as exc:
            raise CommandError(str(exc)) from exc
        if options["metrics_port"] is not None:
            metrics.serve(options["metrics_port"])
        bridge.install_signal_handlers()
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
