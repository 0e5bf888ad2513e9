"""Re-encrypt every stored secret with the first FIELD_ENCRYPTION_KEY."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import transaction

from vocoeng.fields import EncryptedTextField


class Command(BaseCommand):
    help = (
        "Re-encrypt channel and tool secrets with the first key of "
        "FIELD_ENCRYPTION_KEY (put the new key first, keep the old one after it, "
        "run this, then drop the old key)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for model in apps.get_models():
            names = [
                f.name
                for f in model._meta.concrete_fields
                if isinstance(f, EncryptedTextField)
            ]
            if not names:
                continue
            done = 0
            with transaction.atomic():
                # Reading decrypts with whichever key made the token; writing
                # encrypts with the first key.
                rows = model._base_manager.select_for_update().only("pk", *names)
                for obj in rows:
                    plain = {name: getattr(obj, name) for name in names}
                    if any(plain.values()):
                        model._base_manager.filter(pk=obj.pk).update(**plain)
                        done += 1
            self.stdout.write(f"{model._meta.label}: re-encrypted {done} row(s)")
