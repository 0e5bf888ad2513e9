"""Write tenants and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.utils import timezone

from .models import ApiKey, Tenant

DEFAULT_TENANT_SLUG = "default"


def tenant_get_default() -> Tenant:
    """Return the tenant that owns traffic of the environment's default channel."""
    tenant, _ = Tenant.objects.get_or_create(
        slug=DEFAULT_TENANT_SLUG, defaults={"name": "Default tenant"}
    )
    return tenant


def _hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(*, tenant: Tenant, name: str = "") -> tuple[ApiKey, str]:
    """Create an API key and return it with its plaintext, which is never stored."""
    prefix = secrets.token_hex(6)
    plaintext = f"voc_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=prefix, key_hash=_hash_key(plaintext)
    )
    return key, plaintext


def api_key_authenticate(*, plaintext: str) -> ApiKey | None:
    """Return the active key matching ``plaintext``, or None; constant-time check."""
    parts = plaintext.split("_")
    if len(parts) < 3 or parts[0] != "voc":
        return None
    key = ApiKey.objects.select_related("tenant").filter(prefix=parts[1]).first()
    if key is None or not key.is_active:
        return None
    if not hmac.compare_digest(key.key_hash, _hash_key(plaintext)):
        return None
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return key
