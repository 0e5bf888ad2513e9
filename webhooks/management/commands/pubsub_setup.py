"""Create the Pub/Sub topics and subscriptions VocoEng uses, idempotently."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vocoeng import pubsub


class Command(BaseCommand):
    help = (
        "Create the topics (messages, responses, pipeline jobs, VOC events, dead "
        "letter) and the subscriptions (ack deadline 600 s, dead-letter policy of 5 "
        "attempts, 7-day retention) unless they exist; print what was created or "
        "found. Uses PUBSUB_EMULATOR_HOST when set, else Google credentials."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        target = settings.PUBSUB_EMULATOR_HOST or "Google Cloud"
        self.stdout.write(f"project {settings.PUBSUB_PROJECT_ID} on {target}")
        try:
            for topic in pubsub.topics_wanted():
                created = pubsub.topic_ensure(topic)
                self.stdout.write(f"topic {topic}: {_word(created)}")
            for spec in pubsub.subscriptions_wanted():
                created = pubsub.subscription_ensure(spec)
                info = pubsub.subscription_describe(spec.name)
                self.stdout.write(
                    f"subscription {spec.name} → {spec.topic}: {_word(created)} "
                    f"(ack deadline {info['ack_deadline_seconds']} s, "
                    f"retention {info['retention_seconds']} s, "
                    f"dead letter {info['dead_letter_topic'] or 'none'}"
                    f"{_attempts(info)})"
                )
        except pubsub.PubSubError as exc:
            raise CommandError(str(exc)) from exc


def _word(created: bool) -> str:
    return "created" if created else "found"


def _attempts(info: dict[str, Any]) -> str:
    if not info["dead_letter_topic"]:
        return ""
    return f" after {info['max_delivery_attempts']} attempts"
