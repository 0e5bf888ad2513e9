"""Create an API key for a tenant and print it once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from vocoeng.models import Tenant
from vocoeng.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant (created if missing); prints it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant, created = Tenant.objects.get_or_create(
            slug=options["tenant"], defaults={"name": options["tenant"]}
        )
        if created:
            self.stderr.write(f"created tenant {tenant.slug}")
        key, plaintext = api_key_create(tenant=tenant, name=options["name"])
        self.stderr.write(
            f"API key {key.prefix} for tenant {tenant.slug}; it is shown only once:"
        )
        self.stdout.write(plaintext)
