"""Check webhook signatures and shared secrets in constant time."""

from __future__ import annotations

import hashlib
import hmac


def whatsapp_signature_valid(*, body: bytes, header: str, secret: str) -> bool:
    """Return whether ``header`` is ``sha256=<HMAC-SHA256 of body with secret>``."""
    if not secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256=") :].strip().lower())


def whatsapp_signature(*, body: bytes, secret: str) -> str:
    """Return the ``X-Hub-Signature-256`` value Meta would send for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def shared_secret_valid(*, given: str, secret: str) -> bool:
    """Return whether ``given`` equals the configured (non-empty) ``secret``."""
    return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())
